"""Metric names: `train/<metric>`, `val/<eval set>/<metric>`, and `val/avg/<metric>` over several eval sets.

`metric_key` is the one place that spells them; short names on the command line (`f1`, `avg/f1`) are
resolved against the keys a run will log by `resolve_key`.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from nf_trainer.core.errors import NfTrainerError

AVERAGE = "avg"  # the eval-set name of the mean over several eval sets
NOT_IN_KEYS = re.compile(r"[^0-9A-Za-z_\-. /]")  # MLflow's metric keys: letters, digits, _ - . space /
LOSS_LIKE = ("loss", "error", "calibration")  # names that are minimised under mode=auto


def metric_key(metric: str, eval_set: str | None = None) -> str:
    """'train/<metric>' for the train set (eval_set None), else 'val/<eval_set>/<metric>'."""
    return f"train/{metric}" if eval_set is None else f"val/{eval_set}/{metric}"


def per_class_key(metric: str, class_name: str) -> str:
    """'<metric>/<class name>' (per-class AP, IoU, ...), the name's characters that MLflow refuses in a key as '_'."""
    return f"{metric}/{NOT_IN_KEYS.sub('_', str(class_name))}"


def eval_set_names(eval_sets: Iterable[str]) -> list[str]:
    """The eval sets a run logs: each one, and `avg` when there are several."""
    names = list(eval_sets)
    return names + ([AVERAGE] if len(names) > 1 else [])


def known_keys(eval_sets: Iterable[str], eval_names: Iterable[str], train_names: Iterable[str] | None = None) -> set[str]:
    """Every epoch metric a run logs: `eval_names` (its task's, loss included where there is one) for each eval
    set, and `train_names` for the train set when it trains."""
    eval_names = list(eval_names)
    keys = {metric_key(m, name) for name in eval_set_names(eval_sets) for m in eval_names}
    return keys if train_names is None else keys | {metric_key(m) for m in train_names}


def resolve_key(name: str, eval_sets: list[str], known: set[str]) -> str:
    """'f1' -> 'val/<first eval set>/f1'; 'avg/f1' -> 'val/avg/f1'; full keys ('val/digits/f1', 'train/loss') pass."""
    if name.startswith(("train/", "val/")):
        key = name
    elif "/" in name:
        key = metric_key(*reversed(name.split("/", 1)))
    else:
        key = metric_key(name, eval_sets[0])
    if key not in known:
        raise NfTrainerError(f"unknown metric '{name}': choose one of {', '.join(sorted(known))}")
    return key


def resolve_mode(key: str, mode: str = "auto") -> str:
    """'min' or 'max'; auto: min for loss-like names, max otherwise."""
    if mode == "auto":
        return "min" if any(word in key.rsplit("/", 1)[-1] for word in LOSS_LIKE) else "max"
    if mode not in ("min", "max"):
        raise NfTrainerError(f"metric mode must be auto, min or max, not '{mode}'")
    return mode
