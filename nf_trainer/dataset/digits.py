"""The 8x8 handwritten digits that scikit-learn ships: real data, no download."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.splits import DataSplits, TensorImageDataset, probe_shape, stratified_split

SOURCE = "sklearn.datasets.load_digits"


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) in 0..16, labels) from the CSV inside scikit-learn, as load_digits() reads it.

    The file is found without importing sklearn: that import (and SciPy's) would add about a second to startup."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise NfTrainerError("dataset=digits reads the digits set that scikit-learn ships: pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def digits(name: str = "digits", val_fraction: float = 0.2, split_seed: int = 0,
           train_transform=None, eval_transform=None) -> DataSplits:
    pixels, targets = load_digits()
    images = torch.from_numpy(pixels).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(targets)
    train_idx, val_idx = stratified_split(labels.tolist(), val_fraction, split_seed, "digits")
    train_idx, val_idx = torch.tensor(train_idx), torch.tensor(val_idx)
    val = TensorImageDataset(images[val_idx], labels[val_idx], eval_transform, name=name, source=SOURCE)
    channels, size = probe_shape(val, name)
    return DataSplits(
        train=TensorImageDataset(images[train_idx], labels[train_idx], train_transform, name=name, source=SOURCE),
        eval={name: val},
        classes=[str(c) for c in range(10)],
        in_channels=channels,
        image_size=size,
    )
