"""Sweeps: one MLflow parent run per sweep, one nested child run per job (`sweep/callback.py`, `sweep/job.py`)."""
