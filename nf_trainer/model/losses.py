"""Losses whose config needs more than torch.nn takes as is."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.model.build import from_data


def cross_entropy(label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None,
                  num_classes: int | None = None, ignore_index: int = -100) -> nn.CrossEntropyLoss:
    """`torch.nn.CrossEntropyLoss`; `class_weights` is a plain list, one weight per class in class order;
    targets equal to `ignore_index` (segmentation's void, 255) weigh nothing."""
    weight = None
    if class_weights is not None:
        if num_classes is not None and len(class_weights) != num_classes:
            raise NfTrainerError(f"loss.class_weights has {len(class_weights)} values but the data has {num_classes} classes")
        weight = torch.tensor(list(class_weights), dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing, ignore_index=ignore_index)


class DiceCrossEntropy(nn.Module):
    """segmentation-models-pytorch's multiclass DiceLoss (over the batch) times `dice_weight`, plus per-pixel
    cross-entropy times `ce_weight`; `ignore_index` pixels weigh nothing in either."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, ignore_index: int = 255):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss  # lazy: only this loss needs it

        self.dice = DiceLoss(mode="multiclass", ignore_index=ignore_index)
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_index)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        loss = self.dice_weight * self.dice(logits, masks)
        return loss + self.ce_weight * self.ce(logits, masks) if self.ce_weight else loss


def dice_cross_entropy(dice_weight: float = 1.0, ce_weight: float = 1.0, ignore_index: int = 255) -> DiceCrossEntropy:
    if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
        raise NfTrainerError(f"loss.dice_weight={dice_weight} and loss.ce_weight={ce_weight}: both >= 0, not both 0")
    return DiceCrossEntropy(dice_weight, ce_weight, ignore_index)


def build_loss(node, facts: dict) -> nn.Module:
    """The `loss` node, short names looked up in torch.nn, `num_classes` (class weights' length) from the data."""
    return create_instance(node, nn, **from_data(node, facts))


class MultilabelBCE(nn.BCEWithLogitsLoss):
    """`torch.nn.BCEWithLogitsLoss` on multi-hot (or MixUp-soft) targets, mean over labels and images. `pos_weight`:
    null (none), one weight per label in label order, or `balanced`: each label's negatives / positives in the
    train set (a rare label's positives count as much as its negatives), set from the data before training
    (`fit_label_counts`, which task=multilabel calls)."""

    def __init__(self, pos_weight: Sequence[float] | str | None = None, num_classes: int | None = None):
        if isinstance(pos_weight, str) and pos_weight != BALANCED:
            raise NfTrainerError(f"loss.pos_weight must be null, a list of one weight per label or '{BALANCED}', "
                                 f"not '{pos_weight}'")
        weights = None
        if pos_weight is not None and not isinstance(pos_weight, str):
            if num_classes is not None and len(pos_weight) != num_classes:
                raise NfTrainerError(f"loss.pos_weight has {len(pos_weight)} values but the data has {num_classes} labels")
            weights = torch.tensor(list(pos_weight), dtype=torch.float32)
        super().__init__(pos_weight=weights)
        self.wants_label_counts = pos_weight == BALANCED

    def fit_label_counts(self, positives: torch.Tensor, count: int) -> None:
        """pos_weight = negatives / positives per label (a label never positive: 1)."""
        positives = positives.float()
        weight = torch.where(positives > 0, (count - positives) / positives.clamp(min=1), torch.ones_like(positives))
        self.pos_weight = weight

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.pos_weight is not None and self.pos_weight.device != input.device:  # fitted after the loss moved
            self.pos_weight = self.pos_weight.to(input.device)
        return super().forward(input, target)


BALANCED = "balanced"
