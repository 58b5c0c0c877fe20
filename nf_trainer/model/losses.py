"""Losses whose config needs more than torch.nn takes as is."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.model.build import from_data


def cross_entropy(label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None,
                  num_classes: int | None = None) -> nn.CrossEntropyLoss:
    """`torch.nn.CrossEntropyLoss`; `class_weights` is a plain list, one weight per class in class order."""
    weight = None
    if class_weights is not None:
        if num_classes is not None and len(class_weights) != num_classes:
            raise NfTrainerError(f"loss.class_weights has {len(class_weights)} values but the data has {num_classes} classes")
        weight = torch.tensor(list(class_weights), dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


def build_loss(node, facts: dict) -> nn.Module:
    """The `loss` node, short names looked up in torch.nn, `num_classes` (class weights' length) from the data."""
    return create_instance(node, nn, **from_data(node, facts))
