"""Datasets: each `conf/dataset/*.yaml` node builds a `DataSplits` (train set, named eval sets, classes)."""
from nf_trainer.dataset.splits import DataSplits, TensorImageDataset

__all__ = ["DataSplits", "TensorImageDataset"]
