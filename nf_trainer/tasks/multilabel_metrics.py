"""Multi-label metrics: torchmetrics' per-label curve metrics with labels that are undefined in a set left out (not
counted as 0), and the F1 of decisions at per-label thresholds, tuned to maximise it."""
from __future__ import annotations

import warnings

import torch
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision
from torchmetrics.utilities import dim_zero_cat

from nf_trainer.core.errors import NfTrainerError

GRID = torch.linspace(0.02, 0.98, 49)  # the thresholds tried per label (0.5 among them: tuning never loses to it)


def f1_counts(decided: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-label F1 of bool decisions (..., N, K) against the truth (N, K); 0 where it is 0/0 (as torchmetrics)."""
    tp = (decided & truth).sum(-2).float()
    fp = (decided & ~truth).sum(-2).float()
    fn = (~decided & truth).sum(-2).float()
    return torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.zeros_like(tp))


def macro_f1(decided: torch.Tensor, truth: torch.Tensor) -> float:
    return f1_counts(decided, truth).mean().item()


def tune_thresholds(probabilities: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per label, the threshold of GRID with the highest F1 on these probabilities (ties: the one nearest 0.5; a label
    never positive here keeps 0.5)."""
    scores = torch.stack([f1_counts(probabilities >= t, truth) for t in GRID])  # (T, K)
    nearest = (GRID - 0.5).abs()[:, None]
    best = (scores - 1e-6 * nearest).argmax(0)  # among the maxima, the nearest to 0.5
    chosen = GRID[best]
    return torch.where(truth.any(0), chosen, torch.full_like(chosen, 0.5))


# -- metrics: a label without positives (or negatives) in the set is undefined, not 0 ------------------------
class DefinedLabels:
    """torchmetrics' per-label curve metrics give 0 for a label never positive in the set (and count it in their
    macro mean). Here such a label is NaN (the task leaves it out of the logged per-label values) and the macro
    mean is over the labels that are defined."""
    needs_negatives = False

    def __init__(self, num_labels: int, average: str | None = "macro", **kwargs):
        if average not in ("macro", None, "none"):
            raise NfTrainerError(f"{type(self).__name__}: average must be macro or null (per label), not '{average}'")
        super().__init__(num_labels=num_labels, average=None, **kwargs)
        self.label_average = None if average in (None, "none") else average

    def label_totals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positives, negatives) per label in what was seen."""
        if isinstance(self.thresholds, torch.Tensor):  # binned: confmat (T, K, 2, 2), [target][prediction]
            positives, negatives = self.confmat[0, :, 1, :].sum(-1), self.confmat[0, :, 0, :].sum(-1)
        else:
            target = dim_zero_cat(self.target)
            positives, negatives = (target == 1).sum(0), (target == 0).sum(0)
        return positives, negatives

    def compute(self) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Nn]o (positive|negative) samples.*")
            per_label = super().compute().float()
        positives, negatives = self.label_totals()
        defined = positives > 0
        if self.needs_negatives:
            defined &= negatives > 0
        per_label = torch.where(defined.to(per_label.device), per_label, torch.full_like(per_label, float("nan")))
        if self.label_average is None:
            return per_label
        return per_label[defined.to(per_label.device)].mean() if defined.any() else per_label.new_tensor(float("nan"))


class LabelAveragePrecision(DefinedLabels, MultilabelAveragePrecision):
    """MultilabelAveragePrecision; macro: the mean AP of the labels with a positive in the set."""


class LabelAUROC(DefinedLabels, MultilabelAUROC):
    """MultilabelAUROC; macro: the mean AUROC of the labels with both a positive and a negative in the set."""
    needs_negatives = True
