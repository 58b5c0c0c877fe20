"""The task interface: what differs between classification, detection, segmentation and multi-label.

The loop (nf_trainer/trainer/loop.py), the evaluation and the jobs call only these methods; they never look
inside a batch. `task=` picks a Task (conf/task/); a task of your own subclasses `Task` and is named by its
`_target_` (docs/tasks.md walks through one). The seams are those the field converged on (MMEngine's
train_step/val_step and metric process/compute, Detectron2's "losses in train mode, predictions in eval mode"):

    batch = task.collate(samples)                 # a DataLoader's collate_fn: (inputs, targets)
    batch = task.to_device(batch, device)
    step = task.train_step(model, batch)          # Step: the total loss, its named parts, the batch's size
    step = task.eval_step(model, batch)           # the validation loss where the model has one, and predictions
    metrics = task.build_metrics(node, device)    # updated with step.outputs/step.targets, computed as floats
    predictions = task.predict(model, inputs)     # in the pixels of the inputs
    task.after_training(model, loaders, ...)      # once, on the best model: fit thresholds etc.; task.state() keeps them
    task.draw / report / write_predictions / answer

A task is built for one job with the data's class names, the loss (`loss=` group, built by the job) and the
train batches' transform (MixUp/CutMix, or None).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import default_collate

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.metric_keys import per_class_key
from nf_trainer.trainer.metrics import BatchedUpdates, TaskMetrics, build_collection
from nf_trainer.trainer.step import Step

ONNX_SINGLE_FILE_LIMIT = 1_500_000_000  # bytes of weights; above that ONNX keeps them in a side file (2 GB protobuf cap)


class Task:
    has_val_loss = True  # False where the model gives no loss in eval mode: then no val/<set>/loss is logged, never faked
    shown: tuple[str, ...] = ("loss",)  # the metrics an epoch's log line shows
    serialization_format = "pt2"  # how the MLflow model keeps the torch module: pt2 (torch.export) or pickle
    onnx_dynamic = {0: "batch"}  # the exported input's axes of any size (a segmenter adds height and width)
    batched_updates = True  # metrics updated with many batches at once (outputs of one shape per image: logits)

    def __init__(self, classes: Sequence[str], loss: torch.nn.Module | None = None, batch_transform=None,
                 name: str | None = None, monitor: str = "loss"):
        self.classes = list(classes)
        self.loss_fn, self.batch_transform = loss, batch_transform
        self.name, self.monitor = name or type(self).__name__.lower(), monitor

    # -- the data and the model's shape --------------------------------------------------------------------
    def collate(self, samples: list) -> tuple:
        """A DataLoader's collate_fn: the samples that loaded -> one batch (inputs, targets)."""
        return tuple(default_collate(samples))

    def to_device(self, batch: tuple, device: torch.device, channels_last: bool = False) -> tuple:
        inputs, targets = batch
        fmt = torch.channels_last if channels_last and inputs.dim() == 4 else torch.preserve_format
        return inputs.to(device, non_blocking=True, memory_format=fmt), move(targets, device)

    def model_facts(self, facts: dict) -> dict:
        """What the model is built with (num_classes, in_channels, image_size) from what the data says."""
        return facts

    def check_data(self, splits) -> None:
        """Checks of the data before training (labels in range, ...): a one-line NfTrainerError."""

    # -- steps ---------------------------------------------------------------------------------------------
    def train_step(self, model: torch.nn.Module, batch: tuple) -> Step:
        raise NotImplementedError

    def eval_step(self, model: torch.nn.Module, batch: tuple) -> Step:
        raise NotImplementedError

    def predict(self, model: torch.nn.Module, inputs) -> Any:
        """The model's answer for a batch of inputs, in eval mode: what pictures, reports, predict and serving
        show (probabilities, boxes in the inputs' pixels, ...)."""
        raise NotImplementedError

    # -- metrics -------------------------------------------------------------------------------------------
    def metric_kwargs(self) -> dict:
        """What every metric of the `metrics` group is built with (num_classes, num_labels, ...)."""
        return {}

    def build_metrics(self, node: DictConfig, device: torch.device, train: bool = False) -> TaskMetrics:
        """The `metrics` entries (for the train set without those marked `eval_only`), computed as floats by `values`."""
        collection = build_collection(node, self.metric_kwargs(), device, train)
        return TaskMetrics(BatchedUpdates(collection) if self.batched_updates else collection, self.values)

    def metric_names(self, node: DictConfig, train: bool = False) -> list[str]:
        """The keys a split logs (loss included where there is one): what `objective.metric`, `trainer.save_best`
        and early stopping may name."""
        names = [name for name, entry in (node or {}).items() if not (train and entry.get("eval_only", False))]
        return (["loss"] if train or self.has_val_loss else []) + names

    def values(self, computed: dict[str, torch.Tensor]) -> dict[str, float]:
        """torchmetrics' results as plain floats: scalars under their names, one value per class under
        `<name>/<class name>`."""
        values = {}
        for name, value in computed.items():
            if value.numel() == 1:
                values[name] = value.item()
            elif value.numel() == len(self.classes):
                values |= {per_class_key(name, c): v for c, v in zip(self.classes, value.flatten().tolist())}
            else:
                raise NfTrainerError(f"metric {name} gives {value.numel()} values, neither one nor one per class "
                                     f"({len(self.classes)}): give it average=macro (or micro)")
        return values

    # -- after training: what the task decides with besides the weights ------------------------------------
    def after_training(self, model: torch.nn.Module, loaders: dict, device: torch.device,
                       limit_batches: int | None) -> dict[str, float]:
        """Called once on the best model, before the reports: fit what the task decides with besides the weights
        (multi-label's per-label thresholds) on the eval `loaders`; returns metrics to log at the best epoch
        (full keys, `val/<set>/<name>`). The default fits nothing."""
        return {}

    def state(self) -> dict:
        """What `after_training` fitted, as keyword arguments of the task's constructor: written into the best
        checkpoint (`task_state`) and the logged model's task node, so eval, predict and serving rebuild the task
        as trained. {}: nothing beyond the config."""
        return {}

    # -- what the model does, shown and written --------------------------------------------------------------
    def draw(self, inputs, targets, predictions) -> np.ndarray | None:
        """The inputs with their truth and the predictions drawn: one uint8 picture (H, W, 3); None: no picture."""
        return None

    def report(self, model: torch.nn.Module, loader, device: torch.device, limit_batches: int | None, folder: Path,
               title: str) -> None:
        """The end-of-training views of one eval set (tables, curves), written into `folder`."""

    def write_predictions(self, output: Path, files: list[Path], predictions: list, sizes: list[tuple[int, int]],
                          options: DictConfig) -> list[Path]:
        """`mode=predict`: one prediction per file (`sizes`: each file's own (height, width)) written to `output`
        (the `predict.output` CSV) and beside it; `options`: the `predict` group. Returns the files written."""
        raise NotImplementedError

    def answer(self, predictions: list, sizes: list[tuple[int, int]]) -> dict[str, list]:
        """The served model's answer, one row per image: column -> values."""
        raise NotImplementedError

    def example_input(self, facts: dict, where: Path):
        """A batch of 2 random inputs of the data's shape, for exporting a checkpoint's model (`where`)."""
        if not facts.get("image_size"):
            raise NfTrainerError(f"checkpoint '{where}' records no image size to build an example input from")
        return torch.rand(2, facts["in_channels"], facts["image_size"], facts["image_size"])

    def torchscript(self, model: torch.nn.Module, example):
        """The model as TorchScript, traced on `example` (a task whose models branch on their inputs scripts them)."""
        return torch.jit.trace(model, example)

    def onnx(self, model: torch.nn.Module, example, path: Path) -> None:
        """The model as ONNX (torch.export-based): input `images`, output `logits`, the input's `onnx_dynamic` axes."""
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        dynamic = {axis: torch.export.Dim(name) for axis, name in self.onnx_dynamic.items()}
        torch.onnx.export(model, (example,), path, input_names=["images"], output_names=["logits"],
                          dynamic_shapes=(dynamic,), external_data=size > ONNX_SINGLE_FILE_LIMIT, verbose=False)

    def unbatch(self, predictions, input_sizes: list[tuple[int, int]], sizes: list[tuple[int, int]]) -> list:
        """A batch's predictions as one per image, in the pixels of each image's own size (`sizes`), from the
        pixels of the inputs the model saw (`input_sizes`)."""
        return list(predictions)


def move(value, device: torch.device):
    """Tensors (in lists, tuples and dicts of them) to `device`, as the loader's pinned memory allows."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: move(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(move(item, device) for item in value)
    return value
