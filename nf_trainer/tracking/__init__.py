"""Tracking: every job's MLflow run goes through one interface, `tracking.interface.Tracker`.

Nothing here imports mlflow at import time: the job's process leaves MLflow to the tracker's child
process (`tracking/child.py`), so mlflow is imported inside the methods that use it.
"""
