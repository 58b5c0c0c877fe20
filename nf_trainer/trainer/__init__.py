"""The training engine: a plain loop (engine.py), checkpoints, and metric watching."""
