"""The training engine: the loop (`loop.py`), evaluation, its state and checkpoints, and metric watching.

It is handed a tracker (`nf_trainer.tracking.interface.Tracker`) and never imports MLflow code.
"""
