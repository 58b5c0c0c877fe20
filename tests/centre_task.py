"""A task defined outside the package, as a researcher would write one: regress the centre of a bright square.

It keeps the original design's promise that the trainer extends to other tasks: `python main.py` trains it
with `_target_` nodes pointing here and no edit of nf_trainer (tests/test_tasks.py; docs/tasks.md walks
through it):

    python main.py task._target_=tests.centre_task.Centre task.name=centre task.monitor=error \\
        model._target_=tests.centre_task.CentreNet dataset._target_=tests.centre_task.centres dataset.name=centres \\
        ~loss ~metrics transforms=none
"""
from __future__ import annotations

import torch
from torchmetrics import MeanAbsoluteError

from nf_trainer.dataset.splits import DataSplits, TensorImageDataset
from nf_trainer.tasks.base import Task
from nf_trainer.trainer.metrics import TaskMetrics
from nf_trainer.trainer.step import Step


def centres(name: str = "centres", size: int = 16, train_size: int = 512, val_size: int = 128, seed: int = 0,
            shuffled: bool = False, train_transform=None, eval_transform=None, **unused) -> DataSplits:
    """Grey images with a bright 4x4 square; the target is its centre (x, y) in 0..1. `shuffled`: the train
    targets are permuted (the control of a learning test). `unused`: keys of the dataset option it replaces."""
    generator = torch.Generator().manual_seed(seed)

    def split(count: int, permute: bool):
        corners = torch.randint(0, size - 4, (count, 2), generator=generator)
        images = torch.rand(count, 1, size, size, generator=generator) * 0.3
        for image, (x, y) in zip(images, corners.tolist()):
            image[0, y:y + 4, x:x + 4] = 1.0
        targets = (corners.float() + 2) / size
        if permute:
            targets = targets[torch.randperm(count, generator=generator)]
        return TensorImageDataset(images, targets, name=name, source="tests/centre_task.py")

    train, val = split(train_size, shuffled), split(val_size, False)
    train.transform, val.transform = train_transform, eval_transform
    # two "classes": the model's two outputs, x and y
    return DataSplits(train=train, eval={name: val}, classes=["x", "y"], in_channels=1, image_size=size)


class CentreNet(torch.nn.Module):
    """Where, not what: one convolution, then a linear map of the whole feature map to (x, y). `unused`: the keys of
    the model option it replaces."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int = 16, **unused):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(8 * image_size * image_size, num_classes)

    def forward(self, images):
        return self.head(self.features(images).flatten(1))


class Centre(Task):
    """The model's two outputs are the centre; the loss is the mean squared error, the metric the mean absolute
    error (`error`, minimised)."""
    shown = ("loss", "error")

    def train_step(self, model, batch) -> Step:
        images, targets = batch
        predicted = model(images)
        return Step(torch.nn.functional.mse_loss(predicted, targets), len(images), predicted.detach(), targets)

    def eval_step(self, model, batch) -> Step:
        return self.train_step(model, batch)

    def predict(self, model, inputs):
        return model(inputs)

    def build_metrics(self, node, device, train=False) -> TaskMetrics:
        return TaskMetrics(MeanAbsoluteError().to(device), lambda value: {"error": value.item()})

    def metric_names(self, node, train=False) -> list[str]:
        return ["loss", "error"]
