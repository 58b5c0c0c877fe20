"""A model from its config node and the facts the data knows, its weights from a checkpoint, and the
plain form it is exported and logged in."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance

FACTS = ("num_classes", "in_channels", "image_size")  # what a dataset tells a model (and a loss)


def data_facts(data) -> dict:
    """num_classes, in_channels and image_size of a dataset's splits (or of the facts a checkpoint stored)."""
    return {key: getattr(data, key) for key in FACTS}


def from_data(node: DictConfig, facts: dict) -> dict:
    """The facts for the keys a model (or loss) node leaves null: the data fills them, the user never types them."""
    given = node.get("num_classes")
    if given is not None and given != facts["num_classes"]:
        name = node._key() if isinstance(node, DictConfig) and node._key() else "model"
        raise NfTrainerError(f"{name}.num_classes={given} but the data has {facts['num_classes']} classes: "
                             f"set {name}.num_classes=null to take it from the data")
    return {key: value for key, value in facts.items() if key in node and node[key] is None}


def build_model(node: DictConfig, facts: dict, **kwargs) -> nn.Module:
    return create_instance(node, **from_data(node, facts), **kwargs)


def load_weights(model: nn.Module, ckpt: dict, path: Path) -> None:
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise NfTrainerError(f"checkpoint '{path}' does not fit this model (was it trained with another model=?): "
                             f"{detail}") from exc


def plain_activations(model: nn.Module) -> nn.Module:
    """efficientnet-pytorch's native SiLU instead of its memory-efficient Swish: faster, and the only one
    that torch.compile, TorchScript, torch.export and ONNX can trace."""
    if hasattr(model, "set_swish"):
        model.set_swish(memory_efficient=False)
    return model


def for_export(model: nn.Module) -> nn.Module:
    """The model on the CPU, in eval mode, with traceable activations."""
    return plain_activations(model.cpu()).eval()
