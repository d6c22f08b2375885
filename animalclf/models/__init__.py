"""The model side: the architectures and their facts, building a model with a new head, the
self-describing checkpoint, and the Predictor that every way out (Serve, evaluation) uses."""
