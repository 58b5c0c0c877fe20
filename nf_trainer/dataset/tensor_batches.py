"""Batches straight from a set held in memory (`loader.batched_transforms`, on by default).

digits, CIFAR, (Fashion-)MNIST, synthetic and cached image folders are tensors (N, C, H, W) already: a
DataLoader would index them one sample at a time and run the v2 pipeline per image in Python. `TensorBatches`
takes index batches from the same samplers (the shuffle of the train generator, the class-balanced or the
DistributedSampler), gathers each batch from the tensor on the training device, and runs the pipeline on
the whole batch there (nf_trainer.transforms.batched), random parameters drawn per sample.

Reproducible: an epoch's augmentation seed is drawn from the train generator before its shuffle (as a
DataLoader draws its workers' base seed), and batch i is augmented with seed + i, so the augmentation of
every batch depends only on (seed, epoch, i): a resumed epoch gets the same as an unbroken one.
"""
from __future__ import annotations

import torch
from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

from nf_trainer.dataset.splits import TensorImageDataset
from nf_trainer.transforms.batched import BatchedPipeline

ON_DEVICE_MAX_BYTES = 4 << 30  # larger sets stay in host memory; each batch is copied over


class TensorBatches:
    """An iterable of (images on `device`, targets on the host) that stands in for a DataLoader: len, sampler,
    dataset and batch_size are what the loop and the jobs ask a loader for."""

    def __init__(self, dataset: TensorImageDataset, batch_size: int, device: torch.device, pipeline=None,
                 sampler=None, shuffle: bool = False, drop_last: bool = False, generator: torch.Generator | None = None):
        self.dataset, self.batch_size, self.device, self.generator = dataset, batch_size, device, generator
        if sampler is None:
            sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        self.sampler = sampler
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.pipeline = BatchedPipeline(pipeline)
        images = dataset.images
        self.images = images.to(device) if images.nbytes <= ON_DEVICE_MAX_BYTES else images
        self.labels = dataset.labels

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        seed = 0
        if self.generator is not None and self.pipeline.is_random:
            seed = int(torch.randint(2**62, (), generator=self.generator))
        for index, indices in enumerate(self.batch_sampler):
            indices = torch.as_tensor(indices)
            images = self.images[indices.to(self.images.device)].to(self.device, non_blocking=True)
            yield self.pipeline(images, seed + index), self.labels[indices]


def batched_loader(dataset, batch_size: int, device: torch.device, steps: list, **kwargs) -> TensorBatches | None:
    """TensorBatches for a TensorImageDataset (its own per-sample transform, then `steps`, run per batch), else None."""
    if not isinstance(dataset, TensorImageDataset):
        return None
    own = dataset.transform
    pipeline = [*(getattr(own, "transforms", [own]) if own is not None else []), *steps]
    return TensorBatches(dataset, batch_size, device, pipeline, **kwargs)
