"""Detection models from torchvision: any builder by name (`model=torchvision_detection model.name=...`), and
RetinaNet or FCOS on a small ResNet FPN (`model=retinanet_resnet18_fpn`, `fcos_resnet18_fpn`).

Offline by default: torchvision's builders download ImageNet backbone weights unless `weights_backbone=None`,
so every model here is built without weights. Pretrained weights are opt-in: `pretrained` downloads
torchvision's (COCO for the builders, ImageNet for the ResNet FPN's backbone) into torch's hub cache,
`pretrained_path` reads a detector's weights from a file. Weights are copied where names and shapes fit, so a
class head sized for other classes starts fresh for `num_classes` (background included).

BatchNorm trains in every case (torchvision freezes it for pretrained weights): a pretrained model then has
the modules of a fresh one, so its checkpoints load into the model that mode=eval builds without weights.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import torchvision
from torch import nn
from torchvision.models import get_model
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.model.pretrained import downloading, load_matching, read_state_dict
from nf_trainer.model.torchvision_models import known_model, weight_set

log = logging.getLogger("nf_trainer")

NEEDS_MORE_THAN_BOXES = ("maskrcnn", "keypointrcnn")  # their training targets carry masks or keypoints too
ARCHITECTURES = {"retinanet": RetinaNet, "fcos": FCOS}
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def torchvision_detector(name: str, num_classes: int, pretrained: bool = False, weights: str = "DEFAULT",
                         pretrained_path: str | None = None, min_size: int | None = None, max_size: int | None = None,
                         options: dict | None = None) -> nn.Module:
    """torchvision's detection builder `name` for `num_classes` (background included). `pretrained`: its COCO
    `weights` (DEFAULT or a name such as COCO_V1); `min_size`/`max_size`: the size the model resizes its inputs
    to (null: the builder's own); `options`: more keywords for the builder."""
    known_model(name, torchvision.models.detection, "torchvision detection model")
    if name.startswith(NEEDS_MORE_THAN_BOXES):
        raise NfTrainerError(f"{name} trains on instance masks or keypoints, which detection targets do not carry; "
                             "choose a box detector (e.g. model.name=fasterrcnn_resnet50_fpn)")
    state, what = None, f"model.pretrained_path={pretrained_path}"  # weights read before the model is built
    if pretrained_path is not None:
        state = read_state_dict(pretrained_path)
    elif pretrained:
        chosen = weight_set(name, weights)
        what = f"{name} ({chosen})"
        with downloading(what, chosen.url):
            state = chosen.get_state_dict(progress=False, check_hash=True)
    sizes = {key: value for key, value in (("min_size", min_size), ("max_size", max_size)) if value is not None}
    model = get_model(name, weights=None, weights_backbone=None, num_classes=num_classes, **sizes, **dict(options or {}))
    if state is not None:
        start_from(model, state, what)
    return model


def fpn_detector(architecture: str, num_classes: int, backbone: str = "resnet18", pretrained: bool = False,
                 pretrained_path: str | None = None, min_size: int = 320, max_size: int = 640,
                 options: dict | None = None) -> nn.Module:
    """RetinaNet or FCOS (torchvision's classes) on a ResNet FPN with P3-P7, as torchvision's ResNet-50 builders
    make them, with BatchNorm2d (resnet_fpn_backbone's default FrozenBatchNorm2d would keep random statistics
    from scratch). `pretrained`: ImageNet weights for the backbone; `pretrained_path`: a detector's weights."""
    if architecture not in ARCHITECTURES:
        raise NfTrainerError(f"model.architecture must be one of {', '.join(ARCHITECTURES)}, not '{architecture}'")
    if backbone not in RESNETS:
        raise NfTrainerError(f"model.backbone must be one of {', '.join(RESNETS)}, not '{backbone}'")
    imagenet = weight_set(backbone, "DEFAULT") if pretrained and pretrained_path is None else None
    state = read_state_dict(pretrained_path) if pretrained_path is not None else None
    with downloading(f"{backbone} ({imagenet})", imagenet.url) if imagenet else nullcontext():
        body = resnet_fpn_backbone(backbone_name=backbone, weights=imagenet, norm_layer=nn.BatchNorm2d, trainable_layers=5,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = ARCHITECTURES[architecture](body, num_classes, min_size=min_size, max_size=max_size, **dict(options or {}))
    if state is not None:
        start_from(model, state, f"model.pretrained_path={pretrained_path}")
    return model


def start_from(model: nn.Module, state: dict, what: str) -> None:
    """Copy the weights that fit; say which start fresh (the class head, when the classes differ)."""
    fresh = load_matching(model, state, what)
    if fresh:
        log.info("%s: %d tensors start fresh (they do not fit this model): %s", what, len(fresh),
                 ", ".join(fresh[:6]) + (" ..." if len(fresh) > 6 else ""))
