"""The `metrics` config group as torchmetrics collections, batched updates for the train set, and a task's view of them."""
from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager

import torch
from omegaconf import DictConfig, open_dict
from torchmetrics import MetricCollection

from nf_trainer.core.instantiate import create_instance


def build_collection(metrics_cfg: DictConfig, kwargs: dict, device: torch.device, train: bool = False) -> Metrics:
    """The `metrics` entries as one MetricCollection on `device`, each built with `kwargs` (a task's num_classes,
    ...); for the train set (`train`), without the entries marked `eval_only: true` (our key, not torchmetrics':
    AUROC's and calibration's per-batch cost shows next to a small model's step, and on the train set they say
    little)."""
    def build(node):  # top_k is capped at the class count: top-5 accuracy still builds for 3 classes
        node = copy.copy(node)  # keeps its key: errors still say 'metrics.<name>'
        with open_dict(node):
            node.pop("eval_only", None)
        top_k = {"top_k": min(node.top_k, kwargs["num_classes"])} if node.get("top_k") and "num_classes" in kwargs else {}
        return create_instance(node, **kwargs, **top_k)

    chosen = {name: node for name, node in (metrics_cfg or {}).items() if not (train and node.get("eval_only", False))}
    return Metrics({name: build(node) for name, node in chosen.items()}).to(device)


class TaskMetrics:
    """One split's metrics as its task defines them: updated with each step's outputs and targets, computed as
    plain floats by the task's `to_values` (per-class values under class names, ...). Everything else (reset,
    state_dict, persistent, to) is the metrics' own."""

    def __init__(self, metrics, to_values: Callable[[dict], dict[str, float]]):
        self.metrics, self.to_values = metrics, to_values

    def update(self, outputs, targets) -> None:
        self.metrics.update(outputs, targets)

    def compute(self) -> dict[str, float]:
        return self.to_values(self.metrics.compute())

    def __iter__(self):  # the metrics' names, as a MetricCollection's
        return iter(self.metrics)

    def __getattr__(self, name: str):
        if name in ("metrics", "to_values"):  # not set yet (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.metrics, name)


class Metrics(MetricCollection):
    """A MetricCollection whose updates and computes on the CPU count with torch.bincount even under
    `trainer.deterministic=true` (see `fast_counting_on_cpu`)."""

    def update(self, preds, *args, **kwargs) -> None:
        with fast_counting_on_cpu(self.metrics_device()):
            super().update(preds, *args, **kwargs)

    def compute(self) -> dict:
        with fast_counting_on_cpu(self.metrics_device()):
            return super().compute()

    def metrics_device(self) -> torch.device:
        return next(iter(self.values(copy_state=False))).device if len(self) else torch.device("cpu")


@contextmanager
def fast_counting_on_cpu(device: torch.device):
    """Deterministic algorithms off for a metric call on the CPU. torchmetrics counts with a comparison mesh
    instead of torch.bincount whenever they are on (a binned AUROC update then takes seconds, not a
    millisecond), but torch.bincount is deterministic on the CPU (torch lists it only for CUDA with weights),
    so the counts, and the resume they serve, stay bitwise the same. On CUDA the flag stays on."""
    if device.type != "cpu" or not torch.are_deterministic_algorithms_enabled():
        yield
        return
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)


class BatchedUpdates:
    """Metrics updated with many batches concatenated: a torchmetrics update call has a fixed cost (~1.7 ms on
    CPU for the default train metrics, a dozen small kernels on GPU) that shows next to a small model's step.
    The batches wait until their predictions hold `max_elements` numbers (16 MB of fp32 logits: 16 ImageNet
    batches of 256, a whole digits epoch). Results are the same. Everything else (compute, state_dict, ...)
    first takes in the batches still waiting."""

    def __init__(self, metrics, max_elements: int = 1 << 22):
        self.metrics, self.max_elements, self.waiting, self.elements = metrics, max_elements, [], 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.waiting.append((preds, target))
        self.elements += preds.numel()
        if self.elements >= self.max_elements:
            self.flush()

    def flush(self) -> None:
        if self.waiting:
            preds, targets = zip(*self.waiting)
            self.waiting, self.elements = [], 0
            self.metrics.update(torch.cat(preds), torch.cat(targets))

    def reset(self) -> None:
        self.waiting, self.elements = [], 0
        self.metrics.reset()

    def __iter__(self):  # the metrics' names, as a MetricCollection's
        return iter(self.metrics)

    def __getitem__(self, name: str):
        self.flush()
        return self.metrics[name]

    def __getattr__(self, name: str):
        if name in ("metrics", "max_elements", "waiting", "elements"):  # not set yet (copy, unpickling)
            raise AttributeError(name)
        self.flush()
        return getattr(self.metrics, name)
