"""Transform pipelines: a list of torchvision.transforms.v2 `_target_` nodes per split, plus MixUp/CutMix.

A null entry in a list is an empty slot (`- ${transforms.augment}` while no transforms/augment option is
chosen); `dtype: float32` names a torch dtype.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.transforms import v2

from nf_trainer.core.instantiate import create_instance


def node_list(nodes) -> list:
    """A split's transform nodes as plain dicts, empty slots (null) dropped."""
    nodes = OmegaConf.to_container(nodes, resolve=True) if OmegaConf.is_config(nodes) else list(nodes or [])
    return [node for node in nodes if node is not None]


def build_pipeline(nodes) -> v2.Compose | None:
    transforms = [create_instance(_with_dtype(node), v2) for node in node_list(nodes)]
    return v2.Compose(transforms) if transforms else None


def build_transforms(cfg: DictConfig):
    """(train, eval) pipelines from the `transforms` node."""
    return build_pipeline(cfg.get("train")), build_pipeline(cfg.get("eval"))


DEVICE_STEPS = ("ToDtype", "Normalize")  # per-pixel float work that a GPU does on the whole batch at once


def build_transforms_for_device(cfg: DictConfig):
    """(train, eval, device) pipelines: the ToDtype/Normalize steps that train and eval both end with move
    to a third pipeline, run on the device on whole batches (nf_trainer.transforms.on_device). The loader
    workers then stop at uint8, so batches cross to the GPU at a quarter of the bytes. None for device
    when the two splits end differently (e.g. `transforms/erasing` after Normalize): all stays on the host."""
    def moves(node) -> bool:
        target = str(node.get("_target_") or node.get("module") or "") if isinstance(node, dict) else ""
        return target.rsplit(".", 1)[-1] in DEVICE_STEPS

    train, eval_ = node_list(cfg.get("train")), node_list(cfg.get("eval"))
    k = 0
    while k < min(len(train), len(eval_)) and train[-1 - k] == eval_[-1 - k] and moves(train[-1 - k]):
        k += 1
    if k == 0:
        return build_pipeline(train), build_pipeline(eval_), None
    return build_pipeline(train[:-k]), build_pipeline(eval_[:-k]), build_pipeline(train[-k:])


def build_batch_transform(cfg: DictConfig, num_classes: int):
    """MixUp and/or CutMix over whole train batches (transforms.mixup_alpha / cutmix_alpha > 0), or None.

    With both, each batch gets one of them at random, as torchvision's reference recipes do. Targets
    become soft (class probabilities); the loss takes them as they are."""
    chosen = []
    if cfg.get("mixup_alpha", 0.0) > 0:
        chosen.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.get("cutmix_alpha", 0.0) > 0:
        chosen.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not chosen:
        return None
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


def resize_center_crop(size: int, crop_fraction: float = 0.875):
    """The usual eval view: resize the short side to size / crop_fraction, then crop the centre size x size."""
    return v2.Compose([v2.Resize(round(size / crop_fraction)), v2.CenterCrop(size)])


def _with_dtype(node):
    if isinstance(node, dict) and isinstance(node.get("dtype"), str):
        return {**node, "dtype": getattr(torch, node["dtype"])}
    return node
