"""Tasks: what differs between classification, detection, segmentation and multi-label (base.py), one module
each, and `build_task`, which builds the `task` group's choice for one job."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from nf_trainer.core.instantiate import create_instance
from nf_trainer.model.losses import build_loss
from nf_trainer.tasks.base import Task
from nf_trainer.transforms import build_batch_transform


def build_task(cfg: DictConfig, classes: list[str], facts: dict | None = None, device: torch.device | None = None,
               train: bool = False, state: dict | None = None) -> Task:
    """`cfg.task` for data of `classes`, with the `loss` group's loss (where the task takes one; `facts`: what the
    data says, for the loss's class weights) and, for training (`train`), the train batches' MixUp/CutMix; `state`:
    what a trained task fitted after training (a checkpoint's `task_state`, Task.state)."""
    loss = None
    if cfg.get("loss") is not None and facts is not None:
        loss = build_loss(cfg.loss, facts).to(device or "cpu")
    batch_transform = build_batch_transform(cfg.transforms, len(classes)) if train else None
    return create_instance(cfg.task, classes=list(classes), loss=loss, batch_transform=batch_transform, **(state or {}))


__all__ = ["Task", "build_task"]
