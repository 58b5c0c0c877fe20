"""The 8x8 handwritten digits that scikit-learn ships: real data, no download."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from nf_trainer.dataset.splits import DataSplits, TensorImageDataset


def digits(name: str = "digits", val_fraction: float = 0.2, split_seed: int = 0,
           train_transform=None, eval_transform=None) -> DataSplits:
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.tensor(data.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=val_fraction, random_state=split_seed, stratify=labels.numpy()
    )
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return DataSplits(
        train=TensorImageDataset(images[train_idx], labels[train_idx], train_transform),
        eval={name: TensorImageDataset(images[val_idx], labels[val_idx], eval_transform)},
        classes=[str(c) for c in data.target_names],
        in_channels=1,
        image_size=8,
    )
