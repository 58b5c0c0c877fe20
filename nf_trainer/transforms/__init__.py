"""Transform pipelines: a list of torchvision.transforms.v2 `_target_` nodes per split."""
from __future__ import annotations

from omegaconf import DictConfig


def build_pipeline(nodes) -> "object | None":
    from torchvision.transforms import v2

    from nf_trainer.instantiate import create_instance

    if not nodes:
        return None
    return v2.Compose([create_instance(node, v2) for node in nodes])


def build_transforms(cfg: DictConfig):
    """(train, eval) pipelines from the `transforms` node."""
    return build_pipeline(cfg.get("train")), build_pipeline(cfg.get("eval"))
