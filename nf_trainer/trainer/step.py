"""What one step of a task gives the loop (`Step`), and the loss sums of an epoch (`LossSums`).

A task's `train_step` and `eval_step` (nf_trainer/tasks/base.py) return a Step: the total loss, its named
parts (the total is their sum), the number of images, and what the metrics are updated with. The loop and
the evaluation only add Steps up: they never look inside a batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nf_trainer.trainer.distributed import sum_across_ranks

LOSS = "loss"  # the total's name; a part is logged as `loss/<part>`


@dataclass
class Step:
    loss: torch.Tensor | None  # the total; None where the model gives no loss (a torchvision detector in eval mode)
    size: int  # images in the batch
    outputs: Any = None  # what the metrics take: the predictions ...
    targets: Any = None  # ... and the truth
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # named parts of `loss`, which is their sum


class LossSums:
    """The total loss and each part, summed over the images on the device (no host sync per step), read once
    per epoch as means over the images (and over every rank)."""

    def __init__(self, device: torch.device, sums: dict[str, torch.Tensor] | None = None, seen: int = 0):
        self.device, self.sums, self.seen = device, dict(sums or {}), seen

    def add(self, step: Step) -> None:
        if step.loss is not None:
            for name, value in ((LOSS, step.loss), *((f"{LOSS}/{part}", v) for part, v in step.parts.items())):
                total = value.detach() * step.size
                self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.seen += step.size

    def means(self) -> dict[str, float]:
        """{'loss': ..., 'loss/<part>': ...}: the one host sync, over every rank; {} for steps without a loss."""
        if not self.sums:
            return {}
        totals = torch.stack([value.float() for value in self.sums.values()])
        seen = torch.tensor(float(self.seen), device=totals.device)
        sum_across_ranks(totals, seen)
        return dict(zip(self.sums, (totals / seen.clamp(min=1)).tolist()))

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "seen": self.seen}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> LossSums:
        sums = state["sums"] if "sums" in state else {LOSS: state["loss_sum"]}  # a checkpoint of before the tasks
        return cls(device, {name: value.to(device) for name, value in sums.items()}, state["seen"])
