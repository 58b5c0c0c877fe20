"""What every dataset builder returns, an in-memory image dataset, and helpers the builders share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import ConcatDataset, Dataset

from nf_trainer.errors import NfTrainerError


@dataclass
class DataSplits:
    train: Dataset
    eval: dict[str, Dataset]  # named eval sets, logged as val/<name>/<metric>
    classes: list[str]  # index -> class name
    in_channels: int
    image_size: int
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): skipped before training

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class TensorImageDataset(Dataset):
    """Images held in memory as a tensor (N, C, H, W): float in [0, 1] or uint8, with per-sample transforms.

    `name` and `source` say what the data is (recorded as the MLflow dataset input)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None,
                 name: str = "tensors", source: str = ""):
        self.images, self.labels, self.transform = images, labels, transform
        self.name, self.source = name, source

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def stratified_split(labels, val_fraction: float | None, seed: int, where: str) -> tuple[list[int], list[int]]:
    """Indices (train, val), each sorted, keeping each class's share; the same labels and seed give the same split.

    val_fraction None: no split, everything is val (an eval-only member of dataset=multi).
    Written here rather than taken from scikit-learn: importing sklearn.model_selection (and SciPy) costs
    about a second of every run's startup. Like sklearn's stratified split, the val set has
    ceil(val_fraction * n) images, shared out over the classes in proportion (largest remainders first)."""
    import math

    import numpy as np

    labels = list(labels)
    indices = list(range(len(labels)))
    if val_fraction is None:
        return [], indices

    def refuse(why: str):
        raise NfTrainerError(f"cannot split {where} into train/val by val_fraction={val_fraction} keeping class "
                             f"balance: {why}. Add images, change val_fraction, or give a separate val set")

    by_class: dict = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    n, n_val = len(labels), math.ceil(val_fraction * len(labels))
    if min((len(members) for members in by_class.values()), default=0) < 2:
        refuse("a class has fewer than 2 images")
    if n_val < len(by_class) or n - n_val < len(by_class):
        refuse(f"{n_val} val and {n - n_val} train images for {len(by_class)} classes")
    classes = sorted(by_class, key=str)
    exact = [len(by_class[c]) * n_val / n for c in classes]
    quota = [math.floor(share) for share in exact]
    by_remainder = sorted(range(len(classes)), key=lambda i: (quota[i] - exact[i], i))
    for i in by_remainder[:n_val - sum(quota)]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for c, k in zip(classes, quota):
        val += [by_class[c][j] for j in rng.permutation(len(by_class[c]))[:k]]
    chosen = set(val)
    return [i for i in indices if i not in chosen], sorted(val)


def targets_of(dataset: Dataset) -> torch.Tensor:
    """The class index of every sample, without loading any image."""
    if isinstance(dataset, ConcatDataset):
        return torch.cat([targets_of(part) for part in dataset.datasets])
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise NfTrainerError(f"{type(dataset).__name__} has no .targets: loader.class_balanced needs the labels "
                             "of the train set")
    return torch.as_tensor(targets, dtype=torch.long)


def class_balanced_sampler(dataset: Dataset, num_classes: int, generator: torch.Generator):
    """Draws len(dataset) samples with replacement, each weighing 1 / its class's count: classes come up equally often."""
    from torch.utils.data import WeightedRandomSampler

    targets = targets_of(dataset)
    weights = 1.0 / torch.bincount(targets, minlength=num_classes).clamp(min=1)[targets]
    return WeightedRandomSampler(weights.double(), len(targets), generator=generator)


def probe_shape(dataset: Dataset, where: str) -> tuple[int, int]:
    """(channels, height) of a sample as the model will see it: the first one that loads."""
    for index in range(min(len(dataset), 20)):
        try:
            sample = dataset[index]
        except NfTrainerError:
            raise
        except Exception as exc:  # the transforms do not fit this data
            raise NfTrainerError(f"the transforms fail on {where}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                                 ) from exc
        if sample is not None:
            image = sample[0]
            return int(image.shape[-3]), int(image.shape[-2])
    raise NfTrainerError(f"{where}: no readable image among the first samples")
