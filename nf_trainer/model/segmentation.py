"""Segmentation models: torchvision's (`model=lraspp_mobilenet_v3_large`, `deeplabv3_mobilenet_v3_large`, any of
its segmentation builders by name with `model=torchvision_segmentation`) and segmentation-models-pytorch's
(`model=smp`: Unet, FPN, DeepLabV3Plus, ... on any encoder it knows, timm's through `tu-<name>`).

Offline by default: torchvision's builders download an ImageNet backbone unless `weights_backbone=None`, smp its
encoder's unless `encoder_weights=None`. Pretrained weights are opt-in (`pretrained: true`), downloaded once into
torch's hub cache; offline that fails in one line saying where the file goes (model/pretrained.py). torchvision's
models answer a dict {"out", "aux"} and smp's plain logits: the task takes both.
"""
from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models import get_model

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.model.pretrained import downloading, load_matching, read_state_dict
from nf_trainer.model.torchvision_models import known_model, weight_set

NO_AUX_HEAD = ("lraspp",)  # torchvision's LR-ASPP has no auxiliary head (aux_loss=True raises)


def torchvision_segmenter(name: str, num_classes: int, in_channels: int = 3, aux_loss: bool = False,
                          pretrained: bool = False, weights: str = "DEFAULT", pretrained_path: str | None = None,
                          options: dict | None = None) -> nn.Module:
    """torchvision's segmentation builder `name` for `num_classes`; `pretrained`: its ImageNet backbone
    (`weights` names the backbone's set, DEFAULT its default); `pretrained_path`: a file of the whole model's
    weights (copied where names and shapes fit: a class head for other classes starts fresh)."""
    known_model(name, torchvision.models.segmentation, "torchvision segmentation model")
    if in_channels != 3:
        raise NfTrainerError(f"model={name} takes RGB images; set dataset.mode=RGB (the data has {in_channels} channel(s))")
    if aux_loss and name.startswith(NO_AUX_HEAD):
        raise NfTrainerError(f"{name} has no auxiliary head: set model.aux_loss=false")
    backbone = None
    if pretrained and pretrained_path is None:
        backbone = weight_set(name.split("_", 1)[1], weights)  # lraspp_mobilenet_v3_large -> mobilenet_v3_large
    kwargs = {"aux_loss": aux_loss} if not name.startswith(NO_AUX_HEAD) else {}
    if backbone is not None:
        with downloading(f"{name}'s backbone ({backbone})", backbone.url):
            model = get_model(name, weights=None, weights_backbone=backbone, num_classes=num_classes, **kwargs,
                              **dict(options or {}))
    else:
        model = get_model(name, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs,
                          **dict(options or {}))
    if pretrained_path is not None:
        load_matching(model, read_state_dict(pretrained_path), f"model.pretrained_path={pretrained_path}")
    return model


SMP_ARCHITECTURES = ("Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet", "PAN", "DeepLabV3", "DeepLabV3Plus",
                     "UPerNet", "Segformer", "DPT")


def smp_model(architecture: str, num_classes: int, in_channels: int = 3, encoder: str = "resnet18",
              encoder_weights: str | None = None, encoder_depth: int | None = None, options: dict | None = None
              ) -> nn.Module:
    """segmentation-models-pytorch's `architecture` on `encoder` (any smp encoder; timm's as `tu-<name>`);
    `encoder_weights` (e.g. imagenet) downloads the encoder's weights, None builds it from scratch."""
    import segmentation_models_pytorch as smp  # lazy: only this option needs it

    if architecture not in SMP_ARCHITECTURES:
        raise NfTrainerError(f"model.architecture={architecture}: choose one of {', '.join(SMP_ARCHITECTURES)}")
    kwargs = dict(options or {})
    if encoder_depth is not None:
        kwargs["encoder_depth"] = int(encoder_depth)
    try:
        model = getattr(smp, architecture)
        if encoder_weights is None:
            return model(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes, **kwargs)
        with downloading(f"smp {encoder} ({encoder_weights})", f"https://huggingface.co/smp-hub/{encoder}.{encoder_weights}"):
            return model(encoder_name=encoder, encoder_weights=encoder_weights, in_channels=in_channels,
                         classes=num_classes, **kwargs)
    except KeyError as exc:  # smp's unknown encoder
        raise NfTrainerError(f"model.encoder={encoder}: {' '.join(str(exc).split())[:200]}") from None
