"""Evaluation: the loss (where the task's model gives one) and the metrics over eval sets, during training
and for `mode=eval` alike; and a task's predictions over a loader (reports)."""
from __future__ import annotations

import itertools

import torch

from nf_trainer.core.metric_keys import AVERAGE, metric_key
from nf_trainer.trainer.speed import Speed
from nf_trainer.trainer.step import LossSums


def evaluate_sets(task, model, loaders: dict, metrics: dict, device, limit_batches=None,
                  speed: Speed = Speed()) -> dict[str, float]:
    """`val/<set>/<metric>` for every eval set, and `val/avg/<metric>` (each set weighing the same, whatever its
    size) when there are several."""
    per_set = {name: evaluate(task, model, loader, metrics[name], device, limit_batches, speed)
               for name, loader in loaders.items()}
    if len(per_set) > 1:
        shared = set.intersection(*(set(values) for values in per_set.values()))  # per-class keys of absent classes differ
        names = [k for k in next(iter(per_set.values())) if k in shared]
        per_set[AVERAGE] = {k: sum(values[k] for values in per_set.values()) / len(per_set) for k in names}
    return {metric_key(k, name): v for name, values in per_set.items() for k, v in values.items()}


@torch.inference_mode()
def evaluate(task, model, loader, metrics, device, limit_batches=None, speed: Speed = Speed()) -> dict[str, float]:
    """{'loss': ... (where there is one), <metric>: ...} over one loader."""
    model.eval()
    metrics.reset()
    sums = LossSums(device)
    for batch in limited(loader, limit_batches):
        batch = task.to_device(batch, device, speed.channels_last)
        with speed.autocast():
            step = task.eval_step(model, batch)
        sums.add(step)
        metrics.update(step.outputs, step.targets)
    return sums.means() | metrics.compute()


@torch.inference_mode()
def predictions(task, model, loader, device, limit_batches: int | None = None) -> tuple[list, list]:
    """(the task's predictions, the targets) of every batch of `loader`, batch by batch, on the device."""
    model.eval()
    found, truths = [], []
    for batch in limited(loader, limit_batches):
        inputs, targets = task.to_device(batch, device)
        found.append(task.predict(model, inputs))
        truths.append(targets)
    return found, truths


def limited(loader, limit: int | None):
    return itertools.islice(loader, limit)
