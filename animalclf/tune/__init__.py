"""The search: Ray Tune with Optuna and ASHA over the same worker, and its search space."""
