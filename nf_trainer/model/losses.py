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
