"""Datasets of image files listed as (path, class index): what `image_folder` and `csv` build.

Bad files are found before training by a check over every file (`dataset.check`): skipped with a
warning or a one-line error (`dataset.on_bad_file`). A file that passes the quick check but still
fails to decode (corruption in the middle of the data) is dropped from its batch with a warning
(`skip`) instead of crashing the epoch.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torch.utils.data import Dataset, default_collate

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.loader_view import LoaderView
from nf_trainer.dataset.decoded_cache import cached_split, check_cache
from nf_trainer.dataset.images import BadFile, check_image_file, check_mode, load_image, skip_or_raise
from nf_trainer.dataset.splits import DataSplits, probe_shape

log = logging.getLogger("nf_trainer")

ON_BAD_FILE = ("skip", "fail")
CHECKS = ("quick", "full", "none")

Samples = list[tuple[str, int]]


class ImageFileDataset(Dataset):
    """Samples (path, class index) decoded by `load_image` into uint8 tensors, then transformed."""

    def __init__(self, samples: Samples, transform=None, mode: str = "RGB", on_bad_file: str = "skip",
                 name: str = "images", source: str = "", root: str = ""):
        self.samples, self.transform, self.mode, self.on_bad_file = samples, transform, mode, on_bad_file
        self.name, self.source, self.root = name, source, root

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = load_image(path, self.mode)
        except Exception as exc:  # any decoder error: the file is bad, not the code
            return skip_or_raise(exc, path, self.on_bad_file,  # collate_valid drops it from the batch
                                 "dataset.check=full finds such files before training; dataset.on_bad_file=skip drops "
                                 "them", " (dataset.check=full finds such files before training)")
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def digest(self) -> str:
        """Changes when a file is added, removed, relabelled or changes size."""
        h = hashlib.sha256()
        for path, label in self.samples:
            rel = os.path.relpath(path, self.root) if self.root else path
            size = os.path.getsize(path) if os.path.exists(path) else -1
            h.update(f"{rel}\t{label}\t{size}\n".encode())
        return h.hexdigest()[:16]


def collate_valid(batch, collate=default_collate):
    """(inputs, targets, bad files) of a batch: `collate` (the task's) over the samples that loaded, and the (path,
    reason) of those that did not (a BadFile in their place), for `CountBadFiles` in the main process."""
    kept = [sample for sample in batch if not isinstance(sample, BadFile)]
    bad = [tuple(sample) for sample in batch if isinstance(sample, BadFile)]
    with batch_errors(kept):
        return (*collate(kept), bad)


@contextlib.contextmanager
def batch_errors(kept: list):
    """One line for a batch of which no image decoded, or whose images differ in size (not resized)."""
    if not kept:
        raise NfTrainerError("no image of a batch could be decoded; run with dataset.check=full to find the bad "
                             "files before training")
    try:
        yield
    except RuntimeError as exc:
        if "stack expects each tensor to be equal size" not in str(exc):
            raise
        raise NfTrainerError(f"images of different sizes in one batch ({' '.join(str(exc).split())}): the transforms "
                             "must resize, e.g. transforms=imagenet transforms.image_size=224") from exc


class BadFileCount:
    """Adds each bad file to `bad_files` (the split's list, logged as data/bad_files) once, however many epochs
    meet it."""

    def __init__(self, bad_files: list):
        self.bad_files, self.counted = bad_files, {path for path, _ in bad_files}

    def add(self, path: str, reason: str) -> bool:
        """Whether the file is new to the count."""
        if path in self.counted:
            return False
        self.counted.add(path)
        self.bad_files.append((path, reason))
        return True


class CountBadFiles(LoaderView):
    """A DataLoader over `collate_valid` batches that yields (images, targets) and counts the files they left out."""

    def __init__(self, loader, bad_files: list):
        super().__init__(loader)
        self.count = BadFileCount(bad_files)

    def __iter__(self):
        for images, targets, bad in self.loader:
            for path, reason in bad:
                self.count.add(path, reason)
            yield images, targets


def check_options(mode: str, on_bad_file: str, check: str) -> None:
    check_mode(mode)
    if on_bad_file not in ON_BAD_FILE:
        raise NfTrainerError(f"dataset.on_bad_file must be skip or fail, not '{on_bad_file}'")
    if check not in CHECKS:
        raise NfTrainerError(f"dataset.check must be one of {', '.join(CHECKS)}, not '{check}'")


def drop_bad_files(samples: Samples, check: str, on_bad_file: str, mode: str, where: str
                   ) -> tuple[Samples, list[tuple[str, str]]]:
    """(good samples, [(path, reason)]) after checking every file; `fail` raises on the first bad ones."""
    if check == "none" or not samples:
        return samples, []
    full = check == "full"
    workers = min(32, (os.cpu_count() or 1) * (1 if full else 4))  # the quick check waits on the disk, not the CPU
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(lambda s: check_image_file(s[0], mode, full), samples, chunksize=64))
    bad = [(path, reason) for (path, _), reason in zip(samples, reasons) if reason is not None]
    if bad and on_bad_file == "fail":
        path, reason = bad[0]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NfTrainerError(f"bad image in {where}: {path}: {reason}{more}; fix or remove it, or set dataset.on_bad_file=skip")
    for path, reason in bad:
        log.warning("skipping %s: %s", path, reason)
    if bad:
        log.warning("%s: skipped %d bad file(s) of %d", where, len(bad), len(samples))
    return [s for s, reason in zip(samples, reasons) if reason is None], bad


def file_splits(train: Samples, val: Samples, classes: list[str], name: str, source: str, root: str,
                mode: str, on_bad_file: str, check: str, train_transform, eval_transform, cache: str = "none",
                cache_dir=None) -> DataSplits:
    """The DataSplits of a train and a val list of files, bad files checked, shapes probed; decoded once
    into memory or a disk cache with `cache` (nf_trainer/dataset/decoded_cache.py)."""
    folder = check_cache(cache, cache_dir)  # before any work: an unwritable cache folder fails at once
    train, bad_train = drop_bad_files(train, check, on_bad_file, mode, f"{name} (train)")
    val, bad_val = drop_bad_files(val, check, on_bad_file, mode, f"{name} (val)")
    if not val:
        raise NfTrainerError(f"{name}: no usable image in the val set ({source})")
    common = dict(mode=mode, on_bad_file=on_bad_file, name=name, source=source, root=root)
    train_set, val_set = ImageFileDataset(train, train_transform, **common), ImageFileDataset(val, eval_transform, **common)
    if cache != "none":
        decoded = []
        for split, where in ((train_set, f"{source} (train)"), (val_set, f"{source} (val)")):
            dataset, bad = cached_split(split.samples, mode, cache, folder, split.transform, name, source, where,
                                        split.digest())
            if bad and on_bad_file == "fail":
                raise NfTrainerError(f"bad image in {where}: {bad[0][0]}: {bad[0][1]}; fix or remove it, or set "
                                     "dataset.on_bad_file=skip")
            decoded.append(dataset)
            bad_train += bad if split is train_set else []
            bad_val += bad if split is val_set else []
        train_set, val_set = decoded
    channels, size = probe_shape(val_set, name)
    return DataSplits(train=train_set, eval={name: val_set}, classes=classes,
                      in_channels=channels, image_size=size, bad_files=bad_train + bad_val)


def resolve_root(root, what: str) -> Path:
    if root in (None, "", "???"):
        raise NfTrainerError(f"{what}: dataset.root is not set; pass dataset.root=DIR")
    path = Path(str(root)).expanduser().resolve()
    if not path.is_dir():
        raise NfTrainerError(f"{what}: dataset.root={root} is not a folder")
    return path
