"""What every dataset builder returns, an in-memory image dataset, and helpers the builders share."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, WeightedRandomSampler

from nf_trainer.core.errors import NfTrainerError


@dataclass
class DataSplits:
    train: Dataset
    eval: dict[str, Dataset]  # named eval sets, logged as val/<name>/<metric>
    classes: list[str]  # index -> class name
    in_channels: int
    image_size: int
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): skipped before training
    # (file, what was done): annotations repaired on reading, e.g. a box clipped to its image or dropped (zero area)
    annotation_fixes: list[tuple[str, str]] = field(default_factory=list)

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
    """Indices (train, val) keeping each class's share; the same labels and seed give the same split.

    val_fraction None: no split, everything is val (an eval-only member of dataset=multi).
    The split is exactly scikit-learn's `train_test_split(..., stratify=labels, random_state=seed)`
    (its StratifiedShuffleSplit, step for step: tests/test_data_units.py compares the two), so runs keep
    the val sets they always had; it is written out here because importing sklearn.model_selection (and
    SciPy) would cost every run about a second of startup."""
    indices = list(range(len(labels)))
    if val_fraction is None:
        return [], indices
    classes, y_indices, class_counts = np.unique(np.asarray(list(labels)), return_inverse=True, return_counts=True)
    n_val = math.ceil(val_fraction * len(indices))
    n_train = len(indices) - n_val
    why = None
    if class_counts.min() < 2:
        why = f"the least populated classes have only 1 member: {classes[class_counts < 2].tolist()}"
    elif min(n_train, n_val) < len(classes):
        why = f"{n_train} train and {n_val} val images for {len(classes)} classes"
    if why:
        raise NfTrainerError(f"cannot split {where} into train/val by val_fraction={val_fraction} keeping class "
                             f"balance: {why}. Add images, change val_fraction, or give a separate val set")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_val, rng)
    train, val = [], []
    for i in range(len(classes)):
        shuffled = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(shuffled[: n_i[i]])
        val.extend(shuffled[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train).tolist(), rng.permutation(val).tolist()


def _approximate_mode(class_counts, n_draws: int, rng):
    """How many of `n_draws` each class gets: the floor of its share, then one more for the largest remainders
    (ties drawn at random), as sklearn.utils.extmath._approximate_mode."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


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
