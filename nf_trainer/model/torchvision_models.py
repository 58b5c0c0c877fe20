"""Any classification model that `torchvision.models.get_model` knows, fitted to the data."""
from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import closest_names
from nf_trainer.model import finetune
from nf_trainer.model.pretrained import downloading


def torchvision_model(name: str, num_classes: int, in_channels: int = 3, pretrained: bool = False,
                      weights: str = "DEFAULT", freeze_backbone: bool = False, options: dict | None = None) -> nn.Module:
    """`pretrained`: torchvision's `weights` for this model (`DEFAULT`, or a name such as `IMAGENET1K_V2`),
    with the classifier head replaced for `num_classes`. The stem is adapted when `in_channels` != 3.
    `options`: more keyword arguments for the torchvision builder (`dropout`, `image_size` for ViT, ...)."""
    options = dict(options or {})
    known_model(name, torchvision.models, "torchvision model")  # classification models only (not detection, video, ...)
    if not pretrained:
        model = get_model(name, num_classes=num_classes, **options)
    else:
        chosen = weight_set(name, weights)
        with downloading(f"{name} ({chosen})", chosen.url):
            model = get_model(name, weights=chosen, **options)
        finetune.replace_head(model, num_classes)
    finetune.adapt_in_channels(model, in_channels, pretrained)
    if freeze_backbone:
        finetune.freeze_backbone(model)
    return model


def known_model(name: str, module, what: str) -> None:
    """A one-line error, with the closest names, unless torchvision has a model `name` in `module`."""
    known = list_models(module=module)
    if name not in known:
        close = closest_names(name, known)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; see torchvision.models.list_models({module.__name__})"
        raise NfTrainerError(f"unknown {what} '{name}'{hint}")


def weight_set(name: str, weights: str) -> WeightsEnum:
    """torchvision's weights `weights` (DEFAULT or a name such as IMAGENET1K_V2) of the model `name`."""
    enum = get_model_weights(name)
    names = ["DEFAULT", *(w.name for w in enum)]
    if weights not in names:
        raise NfTrainerError(f"model.weights='{weights}' is not a weight set of {name}; choose one of {', '.join(names)}")
    return enum[weights] if weights != "DEFAULT" else enum.DEFAULT
