"""Random images held in memory, for measuring speed without a data set on disk (benchmarks/, GPU runs).

Each class has its own fixed pattern under the noise, so a model can learn it and the loss falls.
"""
from __future__ import annotations

import torch

from nf_trainer.dataset.splits import DataSplits, TensorImageDataset


def synthetic(name: str = "synthetic", num_classes: int = 10, image_size: int = 32, channels: int = 3,
              train_size: int = 2048, val_size: int = 512, seed: int = 0,
              train_transform=None, eval_transform=None) -> DataSplits:
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand(num_classes, channels, image_size, image_size, generator=generator)

    def images_and_labels(size: int):
        labels = torch.randint(num_classes, (size,), generator=generator)
        noise = torch.rand(size, channels, image_size, image_size, generator=generator)
        return (0.5 * patterns[labels] + 0.5 * noise), labels  # in [0, 1], like decoded images

    return DataSplits(
        train=TensorImageDataset(*images_and_labels(train_size), train_transform),
        eval={name: TensorImageDataset(*images_and_labels(val_size), eval_transform)},
        classes=[str(c) for c in range(num_classes)],
        in_channels=channels,
        image_size=image_size,
    )
