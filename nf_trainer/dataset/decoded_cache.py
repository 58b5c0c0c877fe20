"""Image files decoded once (`dataset.cache=memory|disk`), for folders of small images.

    python main.py dataset=image_folder dataset.root=DIR dataset.cache=disk     # later runs read DIR's pixels from outputs/cache/

Every file of a split is decoded once, in threads, by `load_image` into uint8 pixels: kept in memory (`memory`)
or written under `dataset.cache_dir` (default `outputs/cache/`) as one flat uint8 file, memory-mapped by later
runs (`disk`). The cache of a split is rebuilt when its files change: their count, any size or modification
time (the fingerprint in `meta.json`). Files that fail to decode are left out and listed with the bad files.
When all images have one shape, the split becomes a `TensorImageDataset` (N, C, H, W), so the loader takes
batches from it and augments them whole (nf_trainer/dataset/tensor_batches.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.images import describe_error, load_image
from nf_trainer.dataset.splits import TensorImageDataset

log = logging.getLogger("nf_trainer")

CACHES = ("none", "memory", "disk")
FORMAT = 1  # the layout of a disk cache: a cache of another format is rebuilt


class CachedImages(TensorImageDataset):
    """Decoded images of one shape (N, C, H, W) uint8, with the file list's digest for the MLflow input."""

    def __init__(self, images, labels, transform, name: str, source: str, digest: str):
        super().__init__(images, labels, transform, name=name, source=source)
        self._digest = digest

    def digest(self) -> str:
        return self._digest


class CachedImageList(Dataset):
    """Decoded images of different shapes: a flat uint8 buffer and (offset, C, H, W) per image, transformed per sample."""

    def __init__(self, flat, index, labels, transform, name: str, source: str, digest: str):
        self.flat, self.index, self.labels, self.transform = flat, index, labels, transform
        self.name, self.source, self._digest = name, source, digest

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        offset, c, h, w = (int(v) for v in self.index[i])
        image = torch.from_numpy(np.array(self.flat[offset:offset + c * h * w])).view(c, h, w)
        return (self.transform(image) if self.transform is not None else image), self.labels[i]

    def digest(self) -> str:
        return self._digest


def check_cache(cache: str, cache_dir) -> Path | None:
    """The cache folder for `disk`, created and known to be writable; None for none/memory."""
    if cache not in CACHES:
        raise NfTrainerError(f"dataset.cache must be one of {', '.join(CACHES)}, not '{cache}'")
    if cache != "disk":
        return None
    if not cache_dir:
        raise NfTrainerError("dataset.cache=disk needs dataset.cache_dir=DIR (a writable folder)")
    folder = Path(str(cache_dir)).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        raise NfTrainerError(f"dataset.cache_dir={cache_dir} is not a writable folder ({exc.strerror or exc}): point "
                             "it at one, or use dataset.cache=memory") from exc
    return folder


def fingerprint(samples) -> str:
    """Changes when a file is added, removed, relabelled, or changes size or modification time."""
    h = hashlib.sha256()
    for path, label in samples:
        try:
            stat = os.stat(path)
            h.update(f"{path}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\t{label}\tmissing\n".encode())
    return f"{len(samples)}:{h.hexdigest()[:32]}"


def decode_all(samples, mode: str) -> tuple[list, list, list[tuple[str, str]]]:
    """(images, labels, bad files): every file decoded once, in threads (the decoders release the GIL)."""
    def decode(sample):
        try:
            return load_image(sample[0], mode), None
        except Exception as exc:  # any decoder failure: the file is bad
            return None, describe_error(exc)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(decode, samples, chunksize=64))
    images, labels, bad = [], [], []
    for (path, label), (image, reason) in zip(samples, decoded):
        if image is None:
            bad.append((path, reason))
        else:
            images.append(image)
            labels.append(label)
    return images, labels, bad


def cached_split(samples, mode: str, cache: str, folder: Path | None, transform, name: str, source: str, where: str,
                 digest: str) -> tuple[Dataset, list[tuple[str, str]]]:
    """(the split decoded, its bad files), from the disk cache when it is current, else decoded now (and stored)."""
    stamp = fingerprint(samples)
    place = folder / hashlib.sha256(f"{where}|{mode}".encode()).hexdigest()[:16] if folder is not None else None
    stored = read_cache(place, stamp) if place is not None else None
    if stored is None:
        images, labels, bad = decode_all(samples, mode)
        if not images:
            raise NfTrainerError(f"{where}: no image could be decoded ({len(bad)} bad files)")
        flat = np.concatenate([image.numpy().ravel() for image in images])
        shapes = np.array([image.shape for image in images], dtype=np.int64)
        index = np.concatenate([np.cumsum([0, *(shapes.prod(1)[:-1])])[:, None], shapes], 1)
        labels = np.asarray(labels, dtype=np.int64)
        if place is not None:
            write_cache(place, stamp, flat, index, labels, bad, where)
            flat = np.memmap(place / "images.u8", dtype=np.uint8, mode="c")
        log.info("%s: decoded %d images once (dataset.cache=%s)", where, len(labels), cache)
    else:
        flat, index, labels, bad = stored
        log.info("%s: %d decoded images from %s", where, len(labels), place)
    labels = torch.from_numpy(labels)
    for path, reason in bad:
        log.warning("skipping %s: %s", path, reason)
    if len(np.unique(index[:, 1:], axis=0)) == 1:  # one shape: a tensor the loader batches from
        c, h, w = (int(v) for v in index[0, 1:])
        images = torch.from_numpy(np.asarray(flat)).view(len(labels), c, h, w)
        return CachedImages(images, labels, transform, name, source, digest), bad
    return CachedImageList(flat, index, labels, transform, name, source, digest), bad


def read_cache(place: Path, stamp: str):
    """(flat memmap, index, labels, bad files) of a current cache, or None (missing, stale or unreadable).
    The memmap is copy-on-write: torch wants writable arrays; the file itself is never written."""
    try:
        meta = json.loads((place / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("fingerprint") != stamp:
            return None
        index, labels = np.load(place / "index.npy"), np.load(place / "labels.npy")
        flat = np.memmap(place / "images.u8", dtype=np.uint8, mode="c")
    except (OSError, ValueError):
        return None
    return flat, index, labels, [tuple(b) for b in meta["bad"]]


def write_cache(place: Path, stamp: str, flat, index, labels, bad, where: str) -> None:
    """Written next to its place and renamed over it: a reader sees the old cache or the new one, whole."""
    try:
        staging = Path(tempfile.mkdtemp(dir=place.parent, prefix=f".{place.name}-"))
        flat.tofile(staging / "images.u8")
        np.save(staging / "index.npy", index)
        np.save(staging / "labels.npy", labels)
        meta = {"format": FORMAT, "fingerprint": stamp, "where": where, "bad": [list(b) for b in bad]}
        (staging / "meta.json").write_text(json.dumps(meta))
        if place.exists():
            shutil.rmtree(place)
        staging.rename(place)
    except OSError as exc:
        raise NfTrainerError(f"cannot write the decoded cache to {place.parent} ({exc.strerror or exc}): free space "
                             "or point dataset.cache_dir elsewhere, or use dataset.cache=memory") from exc
