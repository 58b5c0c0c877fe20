"""What every dataset builder returns, and an in-memory image dataset."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset


@dataclass
class DataSplits:
    train: Dataset
    eval: dict[str, Dataset]  # named eval sets, logged as val/<name>/<metric>
    classes: list[str]  # index -> class name
    in_channels: int
    image_size: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class TensorImageDataset(Dataset):
    """Images held in memory as a float tensor (N, C, H, W) in [0, 1], with per-sample transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]
