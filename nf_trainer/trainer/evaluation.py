"""Evaluation: loss and metrics over eval sets (during training and for `mode=eval` alike), and the raw
logits of a loader (reports, predictions)."""
from __future__ import annotations

import itertools

import torch

from nf_trainer.core.metric_keys import AVERAGE, metric_key
from nf_trainer.trainer.distributed import sum_across_ranks
from nf_trainer.trainer.speed import Speed


def evaluate_sets(model, loaders: dict, loss_fn, metrics: dict, device, limit_batches=None,
                  speed: Speed = Speed()) -> dict[str, float]:
    """`val/<set>/<metric>` for every eval set, and `val/avg/<metric>` (each set weighing the same, whatever its
    size) when there are several."""
    per_set = {name: evaluate(model, loader, loss_fn, metrics[name], device, limit_batches, speed)
               for name, loader in loaders.items()}
    if len(per_set) > 1:
        names = next(iter(per_set.values()))
        per_set[AVERAGE] = {k: sum(values[k] for values in per_set.values()) / len(per_set) for k in names}
    return {metric_key(k, name): v for name, values in per_set.items() for k, v in values.items()}


@torch.inference_mode()
def evaluate(model, loader, loss_fn, metrics, device, limit_batches=None, speed: Speed = Speed()) -> dict[str, float]:
    """{'loss': ..., <metric>: ...} over one loader."""
    model.eval()
    metrics.reset()
    loss_sum, seen = torch.zeros((), device=device), 0
    for images, targets in limited(loader, limit_batches):
        images, targets = speed.to_device(images, targets, device)
        with speed.autocast():
            logits = model(images)
            loss_sum += loss_fn(logits, targets) * targets.shape[0]
        seen += targets.shape[0]
        metrics.update(logits, targets)
    return results(loss_sum, seen, metrics)


@torch.inference_mode()
def predict_logits(model, loader, device, limit_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, second items) of every batch, concatenated on the CPU; the second item is the target (or an index)."""
    model.eval()
    logits, seconds = [], []
    for images, second in itertools.islice(loader, limit_batches):
        logits.append(model(images.to(device, non_blocking=True)).float())
        seconds.append(second)
    return torch.cat(logits).cpu(), torch.cat(seconds)


def results(loss_sum: torch.Tensor, seen: int, metrics) -> dict[str, float]:
    """The mean loss and the metrics' values, over every rank: the one host sync of an epoch."""
    seen = torch.tensor(float(seen), device=loss_sum.device)
    sum_across_ranks(loss_sum, seen)  # torchmetrics syncs its own states in compute()
    values = {"loss": (loss_sum / seen.clamp(min=1)).item()}
    values |= {name: value.item() for name, value in metrics.compute().items()}
    return values


def limited(loader, limit: int | None):
    return itertools.islice(loader, limit)
