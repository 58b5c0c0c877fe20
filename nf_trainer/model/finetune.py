"""Fitting a classifier to your data and fine-tuning it.

- The *head* is the last Linear (or Conv2d, as in SqueezeNet) module in definition order: `fc` in a
  ResNet, `classifier.3` in MobileNetV3, `_fc` in efficientnet-pytorch, `head.2` in SimpleCNN.
- The *stem* is the first Conv2d; it is adapted when the data has another number of channels than 3.
- `model.freeze_backbone=true` trains the head only; `optimizer.head_lr` gives the head its own
  learning rate through an optimizer parameter group (the rest keeps `optimizer.lr`).
"""
from __future__ import annotations

import copy
import logging

import torch
from omegaconf import open_dict
from torch import nn

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance

log = logging.getLogger("nf_trainer")


def head_name(model: nn.Module) -> str:
    names = [name for name, module in model.named_modules() if isinstance(module, (nn.Linear, nn.Conv2d))]
    if not names:
        raise NfTrainerError(f"{type(model).__name__} has no Linear or Conv2d layer to use as its classifier head")
    return names[-1]


def replace_head(model: nn.Module, num_classes: int) -> None:
    """A fresh head with `num_classes` outputs on top of the same features (for pretrained models)."""
    name = head_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, bias=old.bias is not None)
    model.set_submodule(name, new)


def adapt_in_channels(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Give the stem `in_channels` inputs. Pretrained RGB filters are averaged over the colour channels
    and rescaled (a grey image then gives the same response as the RGB image it came from)."""
    name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if name is None:
        raise NfTrainerError(f"{type(model).__name__} has no Conv2d stem to adapt to in_channels={in_channels}")
    old = model.get_submodule(name)
    if old.in_channels == in_channels:
        return
    new = copy.deepcopy(old)  # keeps the class (e.g. static "same" padding) and every other setting
    new.in_channels = in_channels
    if pretrained:
        weight = old.weight.detach().mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * (old.in_channels / in_channels)
        new.weight = nn.Parameter(weight)
    else:
        new.weight = nn.Parameter(torch.empty(old.out_channels, in_channels // old.groups, *old.kernel_size))
        new.reset_parameters()
    model.set_submodule(name, new)


def freeze_backbone(model: nn.Module) -> None:
    """Only the head keeps `requires_grad` (BatchNorm running statistics still adapt in train mode)."""
    head = head_name(model) + "."
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(head))


def param_groups(model: nn.Module, head_lr: float | None) -> list:
    """The trainable parameters; with `head_lr`, the head in a group of its own with that learning rate."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise NfTrainerError("the model has no trainable parameters (is everything frozen?)")
    if head_lr is None:
        return [p for _, p in trainable]
    head = head_name(model) + "."
    backbone = [p for name, p in trainable if not name.startswith(head)]
    head_params = [p for name, p in trainable if name.startswith(head)]
    log.info("optimizer: head %s (%d tensors) at lr %g, %d backbone tensors at optimizer.lr",
             head[:-1], len(head_params), head_lr, len(backbone))
    groups = [{"params": backbone}] if backbone else []
    return groups + [{"params": head_params, "lr": head_lr}]


def build_optimizer(node, model: nn.Module, **kwargs):
    """`optimizer.*` minus `head_lr` (ours, not the optimizer's) builds a torch.optim optimizer over the groups;
    `kwargs` (e.g. fused=True) go to the optimizer."""
    head_lr = node.get("head_lr")
    node = copy.copy(node)  # keeps its key: errors still say 'optimizer'
    with open_dict(node):
        node.pop("head_lr", None)
    # _convert_: the param-group dicts must reach torch as plain dicts, not DictConfigs.
    return create_instance(node, torch.optim, params=param_groups(model, head_lr), _convert_="all", **kwargs)
