"""Watching a metric for improvement: shared by best-checkpoint saving and early stopping."""
from __future__ import annotations

import math

from omegaconf import DictConfig

from nf_trainer.core.metric_keys import resolve_key, resolve_mode


class MetricWatcher:
    """Tracks the best value of one metric and how many epochs passed without improving on it
    (`patience`: how many such epochs early stopping waits)."""

    def __init__(self, key: str, mode: str, min_delta: float = 0.0, patience: int | None = None):
        self.key, self.mode, self.min_delta, self.patience = key, mode, abs(min_delta), patience
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


def best_watchers(save_best, eval_sets: list[str], known: set[str]) -> dict[str, MetricWatcher]:
    """`trainer.save_best` ('f1', 'avg/f1', 'val/digits/loss:min', ...): file stem -> watcher, one best-<stem>.pt each."""
    watchers = {}
    for entry in save_best:
        name, _, mode = str(entry).partition(":")
        key = resolve_key(name, eval_sets, known)
        watchers[name.replace("/", "_")] = MetricWatcher(key, resolve_mode(key, mode or "auto"))
    return watchers


def early_stop_watcher(es_cfg: DictConfig, eval_sets: list[str], known: set[str]) -> MetricWatcher | None:
    if not es_cfg.enabled:
        return None
    key = resolve_key(es_cfg.monitor, eval_sets, known)
    return MetricWatcher(key, resolve_mode(key, es_cfg.mode), es_cfg.min_delta, es_cfg.patience)
