"""`create_instance`: build every object from a config node, on top of Hydra.

The idea comes from the project's original design (its README's `create_instance(config, module, **kwargs)`):

    optimizer = create_instance(cfg.optimizer, torch.optim, params=model.parameters())

A node may name its target three ways:
  {_target_: torch.optim.SGD, lr: 0.1}            dotted path, as in Hydra
  {_target_: SGD, lr: 0.1}                        short name, looked up in `module`
  {module: SGD, args: {lr: 0.1}}                  the original design's form
Keyword arguments pass pre-built objects and override values from the config.

`_tasks_: [detection, ...]` in a node declares the tasks (`task=`) the option serves; it is checked when the
config is validated (core/config.py) and never reaches the target.
"""
from __future__ import annotations

import difflib
import importlib
import os
import types
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nf_trainer.core.errors import NfTrainerError

TASKS_KEY = "_tasks_"  # the tasks an option serves (model, dataset, transforms/augment ...)


def create_instance(node: Mapping | DictConfig, module: types.ModuleType | str | None = None, **kwargs: Any) -> Any:
    name = _node_name(node)
    config = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    config = _from_module_args_form(config)
    config.pop(TASKS_KEY, None)  # ours, not the target's: checked by core/config.py
    if "_target_" not in config:
        raise NfTrainerError(f"{name}: the config node has no '_target_' (got keys {sorted(config)})")
    target = config["_target_"]
    if isinstance(target, str):
        config["_target_"] = _locate(target, module, name)
    config.setdefault("_convert_", "all")  # plain lists and dicts: a ListConfig read per sample (transforms) is slow
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, NfTrainerError):  # the target's own one-line message (a dataset builder's, say)
            raise cause from None
        if isinstance(cause, (TypeError, ValueError)):
            raise NfTrainerError(f"cannot build {name} '{_label(target)}': {cause}") from exc
        raise


def _node_name(node: Any) -> str:
    key = node._key() if isinstance(node, DictConfig) else None
    return str(key) if key is not None else "object"


def _label(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))


def _from_module_args_form(config: dict) -> dict:
    """{module: SGD, args: {...}} -> {_target_: SGD, ...}: configs in the original design's form still load."""
    if "_target_" not in config and "module" in config and set(config) <= {"module", "args"}:
        return {"_target_": config["module"], **(config.get("args") or {})}
    return config


def _locate(target: str, module: types.ModuleType | str | None, name: str) -> Any:
    """Resolve a dotted or short target, with 'did you mean' hints when the name does not exist."""
    if "." in target:
        module_path, _, attr = target.rpartition(".")
        try:
            owner = importlib.import_module(module_path)
        except ImportError:
            # Could be a class attribute path (pkg.mod.Class.method): let Hydra try.
            return target
    else:
        if module is None:
            raise NfTrainerError(
                f"{name}: short target '{target}' needs a module to look it up in; "
                f"write the full dotted path (e.g. 'torch.optim.{target}')"
            )
        owner = importlib.import_module(module) if isinstance(module, str) else module
        module_path, attr = owner.__name__, target
    if hasattr(owner, attr):
        return getattr(owner, attr)
    candidates = [n for n in dir(owner) if not n.startswith("_") and callable(getattr(owner, n, None))]
    close = closest_names(attr, candidates)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise NfTrainerError(f"unknown {name} '{attr}' in {module_path}{hint}")


def closest_names(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Similar names, those sharing the longest prefix first ('Adamm' -> Adam, AdamW, Adamax)."""
    def shared_prefix(c: str) -> int:
        return len(os.path.commonprefix([name.lower(), c.lower()]))

    ratio = {c: difflib.SequenceMatcher(None, name.lower(), c.lower()).ratio() for c in candidates}
    similar = [c for c in candidates if ratio[c] >= 0.6]
    return sorted(similar, key=lambda c: (-shared_prefix(c), -ratio[c]))[:n]
