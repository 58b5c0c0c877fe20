"""The data of a job: the dataset builder's splits with their transforms, and a DataLoader per split."""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.dataset.files import collate_valid
from nf_trainer.dataset.shards import ShardStream, shard_loader
from nf_trainer.dataset.splits import DataSplits, class_balanced_sampler
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


def build_data(cfg: DictConfig, device: torch.device, world_size: int = 1, rank: int = 0) -> Data:
    """Under torchrun each rank reads its own shard (DistributedSampler); `loader.batch_size` is per rank."""
    lc = cfg.loader
    on_device = device.type == "cuda" if lc.normalize_on_device is None else lc.normalize_on_device
    train_tf, eval_tf, device_tf = (build_transforms_for_device(cfg.transforms) if on_device
                                    else (*build_transforms(cfg.transforms), None))
    splits = create_instance(cfg.dataset, train_transform=train_tf, eval_transform=eval_tf)
    if len(splits.train) == 0:
        raise NfTrainerError("the dataset has no train images: check dataset.root, dataset.train_csv, dataset.val_fraction")
    if lc.class_balanced and world_size > 1:
        raise NfTrainerError("loader.class_balanced is not supported under torchrun yet: drop it or run in one process")
    common = dict(
        num_workers=lc.num_workers,
        multiprocessing_context=dataloader_start_method() if lc.num_workers > 0 else None,
        pin_memory=device.type == "cuda" if lc.pin_memory is None else lc.pin_memory,
        persistent_workers=lc.persistent_workers and lc.num_workers > 0,
        prefetch_factor=lc.prefetch_factor if lc.num_workers > 0 else None,
        collate_fn=collate_valid,  # drops a sample whose file failed to decode
    )
    generator = torch.Generator()

    def shard(dataset, shuffle: bool):
        if world_size == 1:
            return None
        return DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=cfg.seed, drop_last=lc.drop_last)

    if isinstance(splits.train, ShardStream):  # streamed: split across ranks and workers, shuffled by the stream
        if lc.class_balanced:
            raise NfTrainerError("loader.class_balanced needs random access to the train set: not with dataset=shards")
        splits.train.shuffle = lc.shuffle
        loaders = {"train": shard_loader(splits.train, lc.batch_size, world_size, rank, lc.drop_last, generator=generator,
                                         **common)}
    else:
        sampler = (class_balanced_sampler(splits.train, splits.num_classes, generator) if lc.class_balanced
                   else shard(splits.train, lc.shuffle))
        loaders = {"train": DataLoader(splits.train, batch_size=lc.batch_size, shuffle=lc.shuffle and sampler is None,
                                       sampler=sampler, drop_last=lc.drop_last, generator=generator, **common)}
    for name, dataset in splits.eval.items():
        eval_batch = lc.eval_batch_size or lc.batch_size
        loaders[name] = (shard_loader(dataset, eval_batch, world_size, rank, **common) if isinstance(dataset, ShardStream)
                         else DataLoader(dataset, batch_size=eval_batch, shuffle=False, sampler=shard(dataset, False),
                                         **common))
    if device_tf is not None:
        loaders = {name: OnDevice(loader, device, device_tf) for name, loader in loaders.items()}
    return Data(splits, loaders, generator)


def dataloader_start_method() -> str | None:
    """'fork' inside joblib's (loky) workers, where DataLoader workers start in no other way; else the default."""
    if not HydraConfig.initialized():
        return None
    launcher = str(OmegaConf.select(HydraConfig.get(), "launcher._target_", default=""))
    if "joblib" in launcher.lower() and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return None
