"""The training side: one epoch of training and evaluation (no Ray), the linear probe, the Ray
Train worker and trainer, and the run that publishes its best checkpoint."""
