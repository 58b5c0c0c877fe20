"""Deliberately faulty parts for the reliability tests, plugged in with `_target_` overrides exactly as a
user's own model or dataset would be (`model._target_=tests.bad_parts.FaultyCNN`)."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import torch

from nf_trainer.dataset.digits import digits
from nf_trainer.model.simple_cnn import SimpleCNN


class FaultyCNN(SimpleCNN):
    """SimpleCNN whose training forward passes go wrong at chosen steps (1-based, counted in this process):
    `nan_at` returns NaN logits, `crash_at` raises RuntimeError, `term_at` sends this process SIGTERM (a
    pre-emption at a known step); `hold_while` (a file): training step `hold_at`,
    when that file exists, is held (`hold`) until the file is gone, so a test keeps the job inside that step
    for as long as it needs (to signal or kill it there) instead of racing the steps with a timer."""

    def __init__(self, num_classes: int, in_channels: int, nan_at=(), crash_at=None, term_at=None,
                 hold_while: str | None = None, hold_at: int = 1, **kwargs):
        super().__init__(num_classes, in_channels, **kwargs)
        self.nan_at, self.crash_at, self.term_at, self.steps = set(nan_at), crash_at, term_at, 0
        self.hold_while, self.hold_at = hold_while, hold_at

    def forward(self, x):
        logits = super().forward(x)
        if not self.training:
            return logits
        self.steps += 1
        if self.steps == self.hold_at and self.hold_while:
            hold(self.hold_while)
        if self.steps == self.crash_at:
            raise RuntimeError(f"simulated crash in forward at training step {self.steps}")
        if self.steps == self.term_at:
            signal.raise_signal(signal.SIGTERM)
        return logits * float("nan") if self.steps in self.nan_at else logits


def held(inner: str, hold_while: str, hold_at: int, **kwargs) -> torch.nn.Module:
    """Any model (`inner`: its dotted target, built with the node's other keys), with FaultyCNN's `hold_while`:
    training step `hold_at` (1-based, counted in this process) is held while the file `hold_while` exists. The
    model itself is `inner`'s (its state dict unchanged): a forward pre-hook does the holding, for every task."""
    from hydra.utils import get_object

    model = get_object(inner)(**kwargs)
    steps = 0

    def count(module, args):
        nonlocal steps
        if module.training:
            steps += 1
            if steps == hold_at:
                hold(hold_while)

    model.register_forward_pre_hook(count)
    return model


def hold(gate: str | None) -> None:
    """While the file `gate` exists: wait, having written `<gate>.reached` (what the test waits for)."""
    if gate and Path(gate).exists():
        Path(f"{gate}.reached").touch()
        while Path(gate).exists():
            time.sleep(0.05)


def digits_shifted_labels(train_transform=None, eval_transform=None, **kwargs):
    """The digits set with every label + 1: label 10 does not exist among its 10 classes."""
    data = digits(train_transform=train_transform, eval_transform=eval_transform, **kwargs)
    data.train.labels = data.train.labels + 1
    return data


class _Slow(torch.utils.data.Dataset):
    def __init__(self, inner, seconds: float, hold_while: str | None = None):
        self.inner, self.seconds, self.hold_while = inner, seconds, hold_while

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, index):
        print("loading a slow sample", flush=True)  # a test waits for this: a step is under way
        time.sleep(self.seconds)
        hold(self.hold_while)
        return self.inner[index]


def slow_digits(seconds: float = 0.2, hold_while: str | None = None, train_transform=None, eval_transform=None, **kwargs):
    """The digits set with a sleep per training sample: a step slow enough to interrupt in its middle; with
    `hold_while`, a sample that waits while that file exists (see `hold`)."""
    data = digits(train_transform=train_transform, eval_transform=eval_transform, **kwargs)
    data.train = _Slow(data.train, seconds, hold_while)
    return data
