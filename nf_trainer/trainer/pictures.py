"""Pictures of what the model does: a fixed set of val images, drawn by the task with their truth and the
predictions of the moment at each evaluation, and logged by step, so the run page shows them improving.

Drawing takes a few milliseconds: nothing next to a detector's epoch, but a tenth of a digits epoch of a small
CNN. Pictures are skipped at an evaluation that comes sooner than SHARE of the time since the last one allows,
so they never take more than ~2% of the training; long epochs get one at every evaluation.
"""
from __future__ import annotations

import time

import numpy as np
import torch

SHARE = 0.02  # the most of the training time pictures may take


class Pictures:
    def __init__(self, task, batch: tuple, key: str):
        self.task, self.batch, self.key = task, batch, key  # key: the MLflow image key, e.g. val/<set>/predictions
        self.cost, self.last = 0.0, None  # seconds the last picture took; when it was done

    @torch.inference_mode()
    def draw(self, model: torch.nn.Module) -> np.ndarray | None:
        """The task's picture of the fixed images with the model's predictions (None: the task draws none)."""
        model.eval()
        inputs, targets = self.batch
        return self.task.draw(inputs, targets, self.task.predict(model, inputs))

    def log(self, model: torch.nn.Module, tracker, step: int) -> None:
        """Draw and log the picture of `step`, unless the last one was too recent for its cost (SHARE)."""
        started = time.perf_counter()
        if self.last is not None and started - self.last < self.cost / SHARE:
            return
        picture = self.draw(model)
        if picture is not None:
            tracker.log_image(picture, self.key, step=step)
        self.last = time.perf_counter()
        self.cost = self.last - started


def first_images(task, loader, count: int, device: torch.device) -> tuple | None:
    """The first `count` images of `loader` with their targets, on the device (None for an empty loader). The
    random state is left as it was: a run draws the same augmentations with pictures as without."""
    with torch.random.fork_rng(devices=[]):
        batch = next(iter(loader), None)
    if batch is None:
        return None
    inputs, targets = task.to_device(batch, device)
    return inputs[:count], targets[:count]
