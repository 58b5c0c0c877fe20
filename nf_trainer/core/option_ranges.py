"""Ranges of the numeric options of the optimizer and scheduler nodes, checked with the other values before
any heavy import. torch checks some of them only when the object is built (a message that does not name
the key) and leaves others unchecked: StepLR(step_size=-3) trains to the end, SGD(momentum=1.5) diverges.

A key is checked wherever it appears in its group, whatever the `_target_`: these names mean the same in
every torch.optim optimizer and lr_scheduler that has them. Keys a node does not set are torch's defaults.
"""
from __future__ import annotations

from collections.abc import Callable
from numbers import Real

from omegaconf import DictConfig, ListConfig


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unit(value) -> bool:  # a decay or averaging factor: 1 would keep nothing of the new value
    return _number(value) and 0 <= value < 1


RANGES: dict[str, dict[str, tuple[Callable, str]]] = {
    "optimizer": {
        "lr": (lambda v: v >= 0, ">= 0"),
        "head_lr": (lambda v: v >= 0, ">= 0 or null"),
        "weight_decay": (lambda v: v >= 0, ">= 0"),
        "momentum": (_unit, "in [0, 1)"),
        "alpha": (_unit, "in [0, 1) (RMSprop's smoothing of the squared gradients)"),
        "eps": (lambda v: v > 0, "> 0 (it keeps the update's denominator away from zero)"),
        "betas": (lambda v: len(v) == 2 and all(_unit(b) for b in v), "two numbers in [0, 1)"),
    },
    "scheduler": {
        "step_size": (lambda v: _integer(v) and v >= 1, "an integer >= 1 (epochs between decays)"),
        "gamma": (lambda v: v > 0, "> 0 (the factor the learning rate is multiplied by)"),
        "milestones": (lambda v: all(_integer(m) and m >= 1 for m in v), "integers >= 1 (epochs)"),
        "T_max": (lambda v: _integer(v) and v >= 1, "an integer >= 1 (epochs of the half cosine)"),
        "eta_min": (lambda v: v >= 0, ">= 0"),
    },
}


def option_checks(cfg: DictConfig) -> list[tuple[bool, str]]:
    """(ok, one-line message) for every ranged key the optimizer and scheduler nodes set."""
    checks = []
    for group, ranges in RANGES.items():
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        values = {**(node.get("args") or {}), **node}  # the {module:, args:} form too
        for key, (ok, rule) in ranges.items():
            value = values.get(key)
            if value is None:
                continue
            plain = list(value) if isinstance(value, (ListConfig, list, tuple)) else value
            fits = isinstance(plain, list) if key in ("betas", "milestones") else _number(plain)
            checks.append((fits and ok(plain), f"{group}.{key} must be {rule}, got {plain}"))
    return checks
