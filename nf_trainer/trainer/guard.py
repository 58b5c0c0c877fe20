"""Guards against bad values: labels outside the classes before training, NaN/Inf losses during it."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from nf_trainer.core.errors import NfTrainerError

log = logging.getLogger("nf_trainer")

class NonFiniteLoss(NfTrainerError):
    """The training loss became NaN or Inf (trainer.nonfinite=stop)."""


class NonFiniteGuard:
    """Watches the training loss for NaN/Inf.

    `stop` (default): keeps each step's loss tensor, unread (no kernel, no host sync per step); `check()`, called
    on logging steps and before every checkpoint, looks at those kept since the last check in one sync and
    raises with the first bad step, so a checkpoint never holds NaN weights.
    `skip`: drops the batch whose loss is not finite (no backward, no optimizer step) and goes on; deciding
    that costs one host sync per step, as AMP's GradScaler does.
    """

    def __init__(self, mode: str = "stop", last_checkpoint: Path | None = None):
        self.mode, self.last_checkpoint = mode, last_checkpoint
        self.pending: list[tuple[int, torch.Tensor]] = []  # (global step, its loss) since the last check
        self.skipped = 0

    def keep(self, loss: torch.Tensor, epoch: int, step: int) -> bool:
        """Whether to train on this step's loss (False only for a non-finite loss in `skip` mode)."""
        if self.mode == "skip":
            if not torch.isfinite(loss.detach()).item():
                self.skipped += 1
                log.warning("non-finite loss (%s) at epoch %d, step %d: batch skipped (trainer.nonfinite=skip)",
                            loss.item(), epoch + 1, step)
                return False
            return True
        self.pending.append((step, loss.detach()))
        return True

    def check(self, epoch: int) -> None:
        """Raise NonFiniteLoss if a loss kept since the last check was not finite (one host sync). Called at least
        once per epoch, before its checkpoint, so the bad step lies in the current `epoch`."""
        if not self.pending:
            return
        steps, losses = zip(*self.pending)
        self.pending = []
        bad = (~torch.isfinite(torch.stack(losses))).nonzero()  # the sync
        if len(bad):
            last = self.last_checkpoint
            kept = f"{last} is kept" if last is not None and last.exists() else "no checkpoint was written in this run"
            raise NonFiniteLoss(
                f"non-finite training loss (NaN or Inf) at epoch {epoch + 1}, step {steps[int(bad[0])]}: stopped "
                f"before saving ({kept}). Lower optimizer.lr, check the data, or set trainer.nonfinite=skip")


def check_labels(data) -> None:
    """Labels must lie in 0..num_classes-1; checked once, on datasets that expose them (`targets` or `labels`)."""
    for name, dataset in [("train", data.train), *data.eval.items()]:
        labels = getattr(dataset, "targets", None)
        labels = getattr(dataset, "labels", None) if labels is None else labels
        if labels is None or len(labels) == 0:
            continue
        labels = torch.as_tensor(labels)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= data.num_classes:
            bad = low if low < 0 else high
            raise NfTrainerError(
                f"the {name} set has label {bad}, outside 0..{data.num_classes - 1} for its {data.num_classes} "
                f"classes: fix the labels, or the class list of the dataset")
