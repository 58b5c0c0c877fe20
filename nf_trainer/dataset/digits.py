"""The 8x8 handwritten digits that scikit-learn ships: real data, no download."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from nf_trainer.dataset.splits import DataSplits, TensorImageDataset, probe_shape, stratified_split

SOURCE = "sklearn.datasets.load_digits"


def digits(name: str = "digits", val_fraction: float = 0.2, split_seed: int = 0,
           train_transform=None, eval_transform=None) -> DataSplits:
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.tensor(data.target, dtype=torch.long)
    train_idx, val_idx = stratified_split(labels.tolist(), val_fraction, split_seed, "digits")
    train_idx, val_idx = torch.tensor(train_idx), torch.tensor(val_idx)
    val = TensorImageDataset(images[val_idx], labels[val_idx], eval_transform, name=name, source=SOURCE)
    channels, size = probe_shape(val, name)
    return DataSplits(
        train=TensorImageDataset(images[train_idx], labels[train_idx], train_transform, name=name, source=SOURCE),
        eval={name: val},
        classes=[str(c) for c in data.target_names],
        in_channels=channels,
        image_size=size,
    )
