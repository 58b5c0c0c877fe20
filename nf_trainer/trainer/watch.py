"""Watching a metric for improvement: shared by best-checkpoint saving and early stopping."""
from __future__ import annotations

import math

from nf_trainer.errors import NfTrainerError

LOSS_LIKE = ("loss", "error", "calibration")


def resolve_key(name: str, eval_sets: list[str], known: set[str]) -> str:
    """'f1' -> 'val/<first eval set>/f1'; 'avg/f1' -> 'val/avg/f1'; full keys ('val/digits/f1', 'train/loss') pass through."""
    key = name if name.startswith(("train/", "val/")) else f"val/{name}" if "/" in name else f"val/{eval_sets[0]}/{name}"
    if key not in known:
        raise NfTrainerError(f"unknown metric '{name}': choose one of {', '.join(sorted(known))}")
    return key


def resolve_mode(key: str, mode: str = "auto") -> str:
    if mode == "auto":
        return "min" if any(word in key.rsplit("/", 1)[-1] for word in LOSS_LIKE) else "max"
    if mode not in ("min", "max"):
        raise NfTrainerError(f"metric mode must be auto, min or max, not '{mode}'")
    return mode


class MetricWatcher:
    """Tracks the best value of one metric and how many epochs passed without improving on it."""

    def __init__(self, key: str, mode: str, min_delta: float = 0.0):
        self.key, self.mode, self.min_delta = key, mode, abs(min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0

    def update(self, value: float) -> bool:
        """Record this epoch's value; True when it improves on the best."""
        improved = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return improved

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
