"""Judging a model: the evaluation every consumer uses, the report and its figures, out-of-fold
predictions, the evidence and the registry's promotion gate."""
