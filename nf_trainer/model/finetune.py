"""Fitting a classifier to your data and fine-tuning it.

- The *head* is the last Linear (or Conv2d, as in SqueezeNet) module in definition order: `fc` in a
  ResNet, `classifier.3` in MobileNetV3, `_fc` in efficientnet-pytorch, `head.2` in SimpleCNN.
- The *stem* is the first Conv2d; it is adapted when the data has another number of channels than 3.
- `model.freeze_backbone=true` trains the head only; `optimizer.head_lr` gives the head its own
  learning rate through an optimizer parameter group (the rest keeps `optimizer.lr`).
- `optimizer.layer_decay` (timm models): layer-wise learning-rate decay, the head at `optimizer.lr` and each
  earlier layer group `layer_decay` times lower, through timm's `param_groups_layer_decay`.
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
    named = getattr(model, "pretrained_cfg", {}).get("classifier")  # timm models name their classifier
    if isinstance(named, str) and named in dict(model.named_modules()):
        return named
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


def layer_decay_groups(model: nn.Module, layer_decay: float, lr: float, weight_decay: float) -> list:
    """timm's layer-wise groups, each with its scaled lr set (torch's schedulers then scale those, as they do any
    group's): the head at `lr`, the layer group k steps below it at `lr * layer_decay**k`."""
    if not hasattr(model, "group_matcher"):
        raise NfTrainerError(f"optimizer.layer_decay needs a timm model (model=timm), whose layers timm can group; "
                             f"{type(model).__name__} is not one")
    from timm.optim import param_groups_layer_decay

    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_decay,
                                      layer_decay=layer_decay)
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale")
    log.info("optimizer: layer decay %g over %d groups, lr %g (head) down to %g", layer_decay, len(groups), lr,
             min(group["lr"] for group in groups))
    return groups


OURS = ("head_lr", "layer_decay")  # nf_trainer's optimizer keys, not the optimizer's


def build_optimizer(node, model: nn.Module, **kwargs):
    """`optimizer.*` minus `head_lr` and `layer_decay` (ours, not the optimizer's) builds an optimizer (torch.optim,
    or any `_target_`, e.g. timm.optim.Lamb) over the groups; `kwargs` (e.g. fused=True) go to the optimizer."""
    head_lr, layer_decay = node.get("head_lr"), node.get("layer_decay")
    node = copy.copy(node)  # keeps its key: errors still say 'optimizer'
    with open_dict(node):
        for key in OURS:
            node.pop(key, None)
    if layer_decay is None:
        params = param_groups(model, head_lr)
    elif head_lr is not None:
        raise NfTrainerError("optimizer.head_lr and optimizer.layer_decay both set the head's lr: layer decay already "
                             "gives the head optimizer.lr and every earlier layer less; set one of them")
    else:
        params = layer_decay_groups(model, layer_decay, node.lr, node.get("weight_decay", 0.0))
    # _convert_: the param-group dicts must reach torch as plain dicts, not DictConfigs.
    return create_instance(node, torch.optim, params=params, _convert_="all", **kwargs)
