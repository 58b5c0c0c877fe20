"""The data of a job: the dataset builder's splits with their transforms, and a DataLoader per split whose
batches the task collates."""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.dataset.files import CountBadFiles, ImageFileDataset, collate_valid
from nf_trainer.dataset.gpu_decode import DecodedOnDevice, EncodedFiles, collate_encoded, resolve_decode
from nf_trainer.dataset.shards import ShardStream, shard_loader
from nf_trainer.dataset.splits import DataSplits, class_balanced_sampler
from nf_trainer.dataset.tensor_batches import batched_loader
from nf_trainer.transforms import build_transforms, build_transforms_for_device
from nf_trainer.transforms.on_device import OnDevice


@dataclass
class Data:
    splits: DataSplits
    loaders: dict  # "train", then each eval set's name -> its DataLoader
    generator: torch.Generator  # the train shuffle's: re-seeded every epoch, so the order depends on (seed, epoch)

    @property
    def eval_loaders(self) -> dict:
        return {name: self.loaders[name] for name in self.splits.eval}


def build_data(cfg: DictConfig, device: torch.device, world_size: int = 1, rank: int = 0,
               collate: Callable = default_collate) -> Data:
    """The splits and their loaders in one go (a classification job's batches: `default_collate`)."""
    return build_loaders(cfg, read_splits(cfg, device), device, collate, world_size, rank)


def read_splits(cfg: DictConfig, device: torch.device) -> DataSplits:
    """The dataset builder's splits, each with its transforms (up to the steps that run on the device)."""
    resolve_decode(cfg.loader.decode, device)  # loader.decode=gpu without CUDA fails here, before anything is built
    train_tf, eval_tf, _ = split_transforms(cfg, device)
    splits = create_instance(cfg.dataset, train_transform=train_tf, eval_transform=eval_tf)
    if len(splits.train) == 0:
        raise NfTrainerError("the dataset has no train images: check dataset.root, dataset.train_csv, dataset.val_fraction")
    return splits


def split_transforms(cfg: DictConfig, device: torch.device):
    """(train, eval, device) pipelines: the device one (ToDtype/Normalize on whole batches) when the loader
    normalizes on the device, else None."""
    lc = cfg.loader
    on_device = device.type == "cuda" if lc.normalize_on_device is None else lc.normalize_on_device
    return build_transforms_for_device(cfg.transforms) if on_device else (*build_transforms(cfg.transforms), None)


def build_loaders(cfg: DictConfig, splits: DataSplits, device: torch.device, collate: Callable = default_collate,
                  world_size: int = 1, rank: int = 0) -> Data:
    """A DataLoader per split; `collate` makes a batch of samples (the task's). Under torchrun each rank reads its
    own shard (DistributedSampler); `loader.batch_size` is per rank."""
    lc = cfg.loader
    decode = resolve_decode(lc.decode, device)
    device_tf = split_transforms(cfg, device)[2]
    if lc.class_balanced and world_size > 1:
        raise NfTrainerError("loader.class_balanced is not supported under torchrun yet: drop it or run in one process")
    common = dict(
        num_workers=lc.num_workers,
        multiprocessing_context=dataloader_start_method() if lc.num_workers > 0 else None,
        pin_memory=device.type == "cuda" if lc.pin_memory is None else lc.pin_memory,
        persistent_workers=lc.persistent_workers and lc.num_workers > 0,
        prefetch_factor=lc.prefetch_factor if lc.num_workers > 0 else None,
        collate_fn=partial(collate_valid, collate=collate),  # drops a sample whose file failed to decode; CountBadFiles counts it
    )
    generator = torch.Generator()

    def shard(dataset, shuffle: bool):
        if world_size == 1:
            return None
        return DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=cfg.seed, drop_last=lc.drop_last)

    streamed = isinstance(splits.train, ShardStream)  # split across ranks and workers, shuffled by the stream
    if streamed and lc.class_balanced:
        raise NfTrainerError("loader.class_balanced needs random access to the train set: not with dataset=shards")
    if streamed:
        splits.train.shuffle = lc.shuffle
    sampler = None if streamed else (class_balanced_sampler(splits.train, splits.num_classes, generator)
                                     if lc.class_balanced else shard(splits.train, lc.shuffle))
    device_steps = list(device_tf.transforms) if device_tf is not None else []

    def loader(dataset, batch_size: int, train: bool):
        if isinstance(dataset, ShardStream):
            shards = CountBadFiles(shard_loader(dataset, batch_size, world_size, rank, lc.drop_last and train,
                                                generator=generator if train else None, **common), splits.bad_files)
            return OnDevice(shards, device, device_tf) if device_tf is not None else shards
        options = dict(sampler=sampler if train else shard(dataset, False), drop_last=lc.drop_last and train,
                       shuffle=lc.shuffle and train and sampler is None)
        if lc.batched_transforms:  # a set in memory: whole batches on the device (dataset/tensor_batches.py)
            batches = batched_loader(dataset, batch_size, device, device_steps, generator=generator if train else None,
                                     **options)
            if batches is not None:
                return batches
        if decode == "gpu" and isinstance(dataset, ImageFileDataset):  # workers read bytes, the GPU decodes
            files = DataLoader(EncodedFiles(dataset), batch_size=batch_size, generator=generator if train else None,
                               **options, **(common | {"collate_fn": collate_encoded}))
            return DecodedOnDevice(files, dataset, device, dataset.transform, device_tf, splits.bad_files)
        loader = CountBadFiles(DataLoader(dataset, batch_size=batch_size, generator=generator if train else None,
                                          **options, **common), splits.bad_files)
        return OnDevice(loader, device, device_tf) if device_tf is not None else loader

    loaders = {"train": loader(splits.train, lc.batch_size, True)}
    for name, dataset in splits.eval.items():
        loaders[name] = loader(dataset, lc.eval_batch_size or lc.batch_size, False)
    return Data(splits, loaders, generator)


def dataloader_start_method() -> str | None:
    """'fork' inside joblib's (loky) workers, where DataLoader workers start in no other way; else the default."""
    if not HydraConfig.initialized():
        return None
    launcher = str(OmegaConf.select(HydraConfig.get(), "launcher._target_", default=""))
    if "joblib" in launcher.lower() and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return None
