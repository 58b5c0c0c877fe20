"""The device a job runs on, and the seeds it starts from."""
from __future__ import annotations

import random

import numpy as np
import torch

from nf_trainer.core.errors import NfTrainerError


def resolve_device(name: str) -> torch.device:
    """`trainer.device`: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NfTrainerError(f"trainer.device={name} but CUDA is not available here; use trainer.device=cpu or auto")
    return device


def describe_device(device: torch.device) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H200)'."""
    if device.type != "cuda":
        return str(device)
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; switch torch's deterministic algorithms on or off. Both ways: sequential
    sweep jobs share one process, and one job's `trainer.deterministic=true` must not leak into the next."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        torch.backends.cudnn.benchmark = False
