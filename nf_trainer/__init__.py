"""nf_trainer: Hydra-composed image-classification experiments on a plain PyTorch loop, tracked in MLflow.

Importing the package is light (no torch, no mlflow): config composition and `--help` stay fast.
"""
from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance

__all__ = ["create_instance", "NfTrainerError"]
