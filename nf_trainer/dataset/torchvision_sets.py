"""CIFAR-10/100, MNIST and Fashion-MNIST through torchvision.datasets, held in memory as uint8 tensors.

    python main.py dataset=cifar10 transforms=cifar dataset.download=true      # fetches into dataset.root once

Train on the official train split, evaluate on the official test split (named after the set).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision.datasets

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.images import check_mode, to_channels
from nf_trainer.dataset.splits import DataSplits, TensorImageDataset, probe_shape

# name -> (torchvision class, the folder it reads under root, the files to put in by hand, and where)
SETS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz", "."),
    "cifar100": ("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz", "."),
    "mnist": ("MNIST", "MNIST/raw", "the four *-ubyte.gz files", "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", "the four *-ubyte.gz files", "FashionMNIST/raw"),
}


def torchvision_set(name: str, root: str, download: bool = False, mode: str = "RGB",
                    train_transform=None, eval_transform=None) -> DataSplits:
    if name not in SETS:
        raise NfTrainerError(f"unknown torchvision set '{name}': choose one of {', '.join(SETS)}")
    channels = check_mode(mode)
    class_name, folder, files, put_in = SETS[name]
    root_path = Path(str(root)).expanduser().resolve()
    cls = getattr(torchvision.datasets, class_name)
    try:
        train, test = (cls(str(root_path), train=split, download=download) for split in (True, False))
    except Exception as exc:  # missing or damaged files (RuntimeError), no network (URLError, OSError)
        url = getattr(cls, "url", None) or cls.mirrors[0]
        by_hand = (f"put {files} from {url} in {(root_path / put_in).resolve()} and run with dataset.download=true "
                   "(it unpacks them offline), or point dataset.root at a folder that has them")
        if download:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:150]  # MNIST: the last mirror's error
            raise NfTrainerError(f"{name}: download failed ({reason}): {by_hand}") from exc
        raise NfTrainerError(f"{name} is not in {root_path / folder}: run with dataset.download=true to fetch it, "
                             f"or {by_hand}") from exc
    source = f"{root_path / folder} (torchvision.datasets.{class_name})"

    def tensors(split):
        images = torch.as_tensor(split.data)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()  # NCHW
        return to_channels(images, channels), torch.as_tensor(split.targets, dtype=torch.long)

    test_set = TensorImageDataset(*tensors(test), eval_transform, name=name, source=source)
    in_channels, size = probe_shape(test_set, name)
    return DataSplits(train=TensorImageDataset(*tensors(train), train_transform, name=name, source=source),
                      eval={name: test_set}, classes=list(train.classes), in_channels=in_channels, image_size=size)
