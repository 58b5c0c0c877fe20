"""The bottom layer: errors, paths, `create_instance`, the config schema, metric names, device and seed.

Nothing here imports torch, mlflow or torchmetrics at import time, except `core.device` (imported only by
jobs): composing and printing a config stays fast.
"""
