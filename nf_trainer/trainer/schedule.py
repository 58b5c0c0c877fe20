"""The learning-rate schedule: any `torch.optim.lr_scheduler` class, stepped once per epoch or once per
optimizer step (`scheduler.interval`), after an optional linear warmup (`scheduler.warmup_epochs`, which
may be fractional with `interval=step`), composed with torch's own `LinearLR` and `SequentialLR`.

Lengths the scheduler node leaves null (`T_max`, `total_steps`, `total_iters`) are the run's: what is
left after the warmup, counted in intervals (epochs, or optimizer steps: batches per epoch after
`trainer.limit_train_batches`, divided by `trainer.accumulate_grad_batches`, rounded up). A null
`max_lr` (OneCycleLR) is each parameter group's own lr (so `optimizer.head_lr` and layer decay keep
their ratios), and `min_lr` is the floor a cosine ends at (torch's `eta_min`).
"""
from __future__ import annotations

import copy
import math

import torch
from omegaconf import DictConfig, open_dict
from torch.optim.lr_scheduler import LinearLR, OneCycleLR, SequentialLR

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance

INTERVALS = ("epoch", "step")
OURS = ("interval", "warmup_epochs", "warmup_start_factor", "min_lr")  # nf_trainer's keys, not the scheduler's
LENGTH_KEYS = ("T_max", "total_steps", "total_iters")  # null: the run's length after the warmup, in intervals
WARMUP_START_FACTOR = 0.01  # the warmup's first lr, as a fraction of the lr (torchvision's references' default)


class Schedule:
    """A torch scheduler and when it steps: after each optimizer step, or at each epoch's end."""

    def __init__(self, scheduler, interval: str):
        self.scheduler, self.interval = scheduler, interval

    def optimizer_stepped(self) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def epoch_ended(self) -> None:
        if self.interval == "epoch":
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def optimizer_steps_per_epoch(batches: int, limit: int | None, accumulate: int) -> int:
    """What the loop does: an optimizer step every `accumulate` batches, and on the epoch's last one."""
    return math.ceil((batches if limit is None else min(limit, batches)) / accumulate)


def build_schedule(node: DictConfig | None, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                   max_epochs: int) -> Schedule | None:
    """The schedule of `node` (None when it has no `_target_` and no warmup) over a run of `max_epochs`."""
    if node is None:
        return None
    interval, warmup_epochs = node.get("interval", "epoch"), node.get("warmup_epochs") or 0
    start_factor = node.get("warmup_start_factor", WARMUP_START_FACTOR)
    if interval not in INTERVALS:
        raise NfTrainerError(f"scheduler.interval must be one of {', '.join(INTERVALS)}, got '{interval}'")
    if warmup_epochs < 0:
        raise NfTrainerError(f"scheduler.warmup_epochs must be >= 0, got {warmup_epochs}")
    if interval == "epoch" and warmup_epochs != int(warmup_epochs):
        raise NfTrainerError(f"scheduler.warmup_epochs={warmup_epochs} is a fraction of an epoch: "
                             "set scheduler.interval=step (the warmup then rises every optimizer step)")
    per_epoch = steps_per_epoch if interval == "step" else 1
    total = max_epochs * per_epoch
    warmup = max(1, round(warmup_epochs * per_epoch)) if warmup_epochs else 0
    if warmup >= total:
        raise NfTrainerError(f"scheduler.warmup_epochs={warmup_epochs} is not shorter than the run "
                             f"(trainer.max_epochs={max_epochs}, {steps_per_epoch} optimizer steps each): "
                             "lower scheduler.warmup_epochs or raise trainer.max_epochs")
    main = None
    if node.get("_target_"):
        main = create_instance(_without_ours(node), torch.optim.lr_scheduler, optimizer=optimizer,
                               **_from_run(node, optimizer, total - warmup))
        if warmup and isinstance(main, OneCycleLR):
            raise NfTrainerError("scheduler=onecycle warms up by itself (scheduler.pct_start): "
                                 "leave scheduler.warmup_epochs=0")
    if not warmup:
        return Schedule(main, interval) if main is not None else None
    ramp = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup)
    return Schedule(SequentialLR(optimizer, [ramp, main], milestones=[warmup]) if main is not None else ramp, interval)


def _without_ours(node: DictConfig) -> DictConfig:
    node = copy.copy(node)  # keeps its key: errors still say 'scheduler'
    with open_dict(node):
        for key in OURS:
            node.pop(key, None)
    return node


def _from_run(node: DictConfig, optimizer: torch.optim.Optimizer, length: int) -> dict:
    """The values the run knows, for the keys the node leaves null."""
    filled = {key: length for key in LENGTH_KEYS if key in node and node[key] is None}
    if "max_lr" in node and node.max_lr is None:
        filled["max_lr"] = [group["lr"] for group in optimizer.param_groups]
    if node.get("min_lr") is not None:
        filled["eta_min"] = node.min_lr
    return filled
