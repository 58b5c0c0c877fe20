"""WebDataset tar shards: `python main.py dataset=shards dataset.urls=DIR/train-{000000..000009}.tar`.

`python -m nf_trainer.prepare shards SRC OUT` writes them (nf_trainer/cli/prepare.py): `<key>.<ext>` (the
image file's bytes, as stored) and `<key>.cls` (the class index) per sample, and `index.json` with the class
names, every shard's sample count and size, the class counts and the files left out as bad.

Each epoch is one stream: the shards in an order drawn from the epoch's seed (the loop's
`seed * 1_000_003 + epoch`), one after the other. Every (rank, DataLoader worker) slot reads its own
contiguous part of that stream, the same number of samples each: the parts cover every sample once, padded
by the stream's first samples to equal parts (`loader.drop_last`: cut instead), as DistributedSampler pads.
A slot shuffles what it reads through a buffer seeded by (epoch seed, slot). The order is a function of
(seed, epoch, world size, workers, batch size) only, so a mid-epoch resume that skips the batches done
(trainer/loop.py) reproduces the epoch exactly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.files import check_options
from nf_trainer.dataset.images import IMAGE_EXTENSIONS, decode_image_bytes, describe_error, skip_or_raise
from nf_trainer.dataset.splits import DataSplits

log = logging.getLogger("nf_trainer")

INDEX = "index.json"
FORMAT = "nf_trainer.shards/1"
IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


def shards(urls=None, val_urls=None, index: str | None = None, name: str | None = None, mode: str = "RGB",
           shuffle_buffer: int = 1000, on_bad_file: str = "skip", check: str = "quick", train_transform=None,
           eval_transform=None) -> DataSplits:
    check_options(mode, on_bad_file, check)
    if not urls:
        raise NfTrainerError("shards: dataset.urls is not set; pass dataset.urls=DIR/train-{000000..000009}.tar "
                             "(what python -m nf_trainer.prepare shards wrote)")
    train_urls = expand(urls)
    index_url = index or sibling(train_urls[0], INDEX, "dataset.index")
    facts = read_index(index_url)
    val_list = expand(val_urls) if val_urls else [sibling(index_url, s["name"], "dataset.val_urls")
                                                  for s in facts["splits"]["val"]["shards"]]
    recorded = {s["name"]: s for split in facts["splits"].values() for s in split["shards"]}
    train_shards, val_shards = (describe(u, recorded, index_url) for u in (train_urls, val_list))
    if check != "none":
        check_shards(train_shards + val_shards)
    common = dict(mode=mode, on_bad_file=on_bad_file, name=name or facts["name"], source=str(urls))
    train = ShardStream(train_shards, train_transform, shuffle_buffer=shuffle_buffer, **common)
    val = ShardStream(val_shards, eval_transform, shuffle=False, shuffle_buffer=0, **common)
    image = probe(val)
    return DataSplits(train=train, eval={common["name"]: val}, classes=list(facts["classes"]),
                      in_channels=int(image.shape[-3]), image_size=int(image.shape[-2]),
                      bad_files=[tuple(bad) for bad in facts.get("bad_files", [])])


def expand(urls) -> list[str]:
    """A URL, a brace pattern (shard-{000000..000009}.tar) or a list of them, as one list of URLs."""
    import braceexpand  # lazy: webdataset's dependency, only this dataset needs it

    found = [url for pattern in ([urls] if isinstance(urls, str) else list(urls))
             for url in braceexpand.braceexpand(str(pattern))]
    if not found:
        raise NfTrainerError(f"dataset.urls={urls} names no shard")
    return found


def sibling(url: str, name: str, key: str) -> str:
    """The file `name` in the folder of `url` (a path or a URL)."""
    if url.startswith("pipe:"):
        raise NfTrainerError(f"{url} is a pipe: set {key} to where {name} lies (a path or URL)")
    if urlparse(url).scheme in ("", "file"):
        return str(Path(url.removeprefix("file://")).expanduser().parent / name)
    return url.rsplit("/", 1)[0] + "/" + name


def open_url(url: str):
    """A binary stream of `url`: a local path, `pipe:COMMAND` (its stdout), or any URL fsspec opens."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen  # lazy: webdataset imports torch

        return gopen(url, "rb")
    if urlparse(url).scheme in ("", "file"):
        return open(Path(url.removeprefix("file://")).expanduser(), "rb")
    import fsspec  # lazy: only remote shards need it

    fs, path = fsspec.core.url_to_fs(url)
    # block_size=0: a plain stream (fsspec's HTTP files would otherwise need range requests)
    return fs.open(path, "rb", block_size=0) if fs.protocol[0] in ("http", "https") else fs.open(path, "rb")


def size_of(url: str) -> int | None:
    """The shard's size in bytes; None for a pipe. Raises FileNotFoundError when it does not exist."""
    if url.startswith("pipe:"):
        return None
    if urlparse(url).scheme in ("", "file"):
        return os.path.getsize(Path(url.removeprefix("file://")).expanduser())
    import fsspec  # lazy: only remote shards need it

    fs, path = fsspec.core.url_to_fs(url)
    return fs.size(path)


def read_index(url: str) -> dict:
    try:
        with open_url(url) as f:
            facts = json.loads(f.read())
    except (OSError, ValueError) as exc:
        why = "it does not exist" if isinstance(exc, FileNotFoundError) else describe_error(exc)
        raise NfTrainerError(f"cannot read the shards' index {url}: {why}; prepare shards writes "
                             f"{INDEX} beside the shards, or set dataset.index") from None
    if not isinstance(facts, dict) or facts.get("format") != FORMAT:
        raise NfTrainerError(f"{url} is not an index written by python -m nf_trainer.prepare shards")
    return facts


def describe(urls: list[str], recorded: dict, index_url: str) -> list[dict]:
    """{url, samples, bytes} per shard, from the index (found by file name)."""
    found = []
    for url in urls:
        entry = recorded.get(url.rstrip("/").rsplit("/", 1)[-1])
        if entry is None:
            raise NfTrainerError(f"shard {url} is not in the index {index_url}: give the shards prepare wrote with it "
                                 "(or dataset.index=their index)")
        found.append({"url": url, "samples": int(entry["samples"]), "bytes": int(entry["bytes"])})
    return found


def check_shards(shard_list: list[dict]) -> None:
    """Every shard exists and has the size its index records (a cut-short copy is found before training)."""
    def problem(shard):
        try:
            size = size_of(shard["url"])
        except FileNotFoundError:
            return f"shard {shard['url']} does not exist: check dataset.urls"
        except OSError as exc:
            return f"shard {shard['url']} cannot be read: {describe_error(exc)}"
        if size is not None and size < shard["bytes"]:
            return (f"shard {shard['url']} is truncated: {size} of the {shard['bytes']} bytes its index records; "
                    "copy it again or rerun prepare shards")
        if size is not None and size != shard["bytes"]:
            return f"shard {shard['url']} has {size} bytes, not the {shard['bytes']} its index records: rerun prepare shards"
        return None

    with ThreadPoolExecutor(min(32, len(shard_list))) as pool:  # remote stores answer one request at a time
        problems = [p for p in pool.map(problem, shard_list) if p]
    if problems:
        more = f" ({len(problems) - 1} more shards have problems)" if len(problems) > 1 else ""
        raise NfTrainerError(problems[0] + more)


def shard_order(count: int, seed: int, shuffle: bool) -> list[int]:
    order = list(range(count))
    if shuffle:
        random.Random(seed).shuffle(order)
    return order


class ShardStream(IterableDataset):
    """The samples of a list of shards, decoded and transformed, split across ranks and DataLoader workers."""

    def __init__(self, shard_list: list[dict], transform=None, mode: str = "RGB", on_bad_file: str = "skip",
                 shuffle: bool = True, shuffle_buffer: int = 1000, name: str = "shards", source: str = ""):
        self.shards, self.transform, self.mode, self.on_bad_file = shard_list, transform, mode, on_bad_file
        self.shuffle, self.shuffle_buffer, self.name, self.source = shuffle, shuffle_buffer, name, source
        self.world_size, self.rank, self.workers, self.drop_last = 1, 0, 1, False
        # the epoch's seed: set by ShardLoader in the main process, read by the workers (persistent ones too)
        self.epoch_seed = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        """Every sample of the shards (all ranks together)."""
        return sum(shard["samples"] for shard in self.shards)

    def digest(self) -> str:
        """Changes when a shard is added, removed or rewritten (its name, count and size, as the index records)."""
        rows = "".join(f"{s['url'].rsplit('/', 1)[-1]}\t{s['samples']}\t{s['bytes']}\n" for s in self.shards)
        return hashlib.sha256(rows.encode()).hexdigest()[:16]

    def split(self, world_size: int, rank: int, workers: int, drop_last: bool) -> None:
        self.world_size, self.rank, self.workers, self.drop_last = world_size, rank, max(1, workers), drop_last

    @property
    def per_slot(self) -> int:
        """Samples each (rank, worker) slot reads in an epoch."""
        slots = self.world_size * self.workers
        return len(self) // slots if self.drop_last else math.ceil(len(self) / slots)

    def pieces(self, slot: int, seed: int) -> list[tuple[int, int, int]]:
        """(shard, first sample, end) ranges that make up `slot`'s part of the epoch's stream."""
        order = shard_order(len(self.shards), seed, self.shuffle)
        starts, total = [], 0
        for i in order:
            starts.append(total)
            total += self.shards[i]["samples"]
        found, position, end = [], slot * self.per_slot, (slot + 1) * self.per_slot
        while position < end:  # past the stream's end: padding, from its start again
            at = position % total
            k = max(j for j, start in enumerate(starts) if start <= at)
            first = at - starts[k]
            take = min(self.shards[order[k]]["samples"] - first, end - position)
            found.append((order[k], first, first + take))
            position += take
        return found

    def raw_samples(self, slot: int, seed: int):
        """(url, key, image bytes, label) of `slot`'s part of the epoch, in stream order."""
        for shard, first, end in self.pieces(slot, seed):
            yield from read_shard(self.shards[shard], first, end)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        seed = int(self.epoch_seed)
        slot = self.rank * self.workers + worker
        samples = self.raw_samples(slot, seed)
        if self.shuffle and self.shuffle_buffer > 1:
            from webdataset.filters import shuffle  # lazy: webdataset imports torch

            samples = shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=f"{seed}:{slot}")(iter(samples))
        for url, key, data, label in samples:
            yield self.decode(url, key, data, label)

    def decode(self, url: str, key: str, data: bytes, label: int):
        try:
            image = decode_image_bytes(data, self.mode)
        except Exception as exc:  # any decoder error: the file is bad, not the code
            return skip_or_raise(exc, f"{key} in {url}", self.on_bad_file,  # collate_valid drops it from the batch
                                 "prepare shards checks files before writing; dataset.on_bad_file=skip drops such files")
        return (self.transform(image) if self.transform is not None else image), label


def read_shard(shard: dict, first: int, end: int):
    """(url, key, image bytes, label) of samples first..end-1 of a shard; a shard that ends early is an error."""
    import tarfile

    url, seen = shard["url"], 0
    try:
        with open_url(url) as stream:
            for sample in whole_samples(stream, url):
                if seen >= first:
                    yield url, sample["__key__"], image_bytes(sample, url), label_of(sample, url)
                seen += 1
                if seen >= end:
                    return
    except FileNotFoundError:
        raise NfTrainerError(f"shard {url} does not exist: check dataset.urls") from None
    except (tarfile.ReadError, OSError) as exc:
        raise NfTrainerError(f"shard {url} is truncated or damaged after {seen} samples ({describe_error(exc)}): "
                             "copy it again or rerun prepare shards") from None
    raise NfTrainerError(f"shard {url} is truncated: it ends after {seen} of the {shard['samples']} samples its index "
                         "records; copy it again or rerun prepare shards")


def whole_samples(stream, url: str):
    """The samples of a tar stream, each once the next one begins: a stream cut short ends without an error
    (tarfile), and its last sample may lack files; that one is left out (the count then falls short)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator  # lazy: webdataset imports torch

    pending = None
    for sample in group_by_keys({**f, "__url__": url} for f in tar_file_iterator(stream)):
        if pending is not None:
            yield pending
        pending = sample
    if pending is not None and "cls" in pending and any(suffix in pending for suffix in IMAGE_SUFFIXES):
        yield pending


def image_bytes(sample: dict, url: str) -> bytes:
    for suffix in IMAGE_SUFFIXES:
        if suffix in sample:
            return sample[suffix]
    raise NfTrainerError(f"sample {sample['__key__']} in {url} has no image ({', '.join(IMAGE_SUFFIXES)})")


def label_of(sample: dict, url: str) -> int:
    try:
        return int(sample["cls"])
    except (KeyError, ValueError):
        raise NfTrainerError(f"sample {sample['__key__']} in {url} has no class index (.cls)") from None


def probe(stream: ShardStream):
    """The first val image as the model will see it (channels and size)."""
    for sample in stream:
        if sample is not None:
            return sample[0]
    raise NfTrainerError(f"{stream.name}: no readable image in the val shards")


WORKER_TRACEBACK = re.compile(r"^(?:\w+\.)*NfTrainerError: (.*)$", re.MULTILINE)


class ShardLoader(DataLoader):
    """A DataLoader over a ShardStream: its exact number of batches, the epoch's seed handed to the stream (the
    loop seeds `generator` per (seed, epoch) before each epoch), and a worker's error as the one line it was."""

    def __len__(self) -> int:
        per = self.dataset.per_slot
        return self.dataset.workers * (per // self.batch_size if self.drop_last else math.ceil(per / self.batch_size))

    def __iter__(self):
        self.dataset.epoch_seed.fill_(self.generator.initial_seed() if self.generator is not None else 0)
        try:
            yield from super().__iter__()
        except NfTrainerError as exc:
            found = WORKER_TRACEBACK.findall(str(exc))  # raised in a worker: the message after its traceback
            if not found:
                raise
            raise NfTrainerError(found[-1]) from None


def shard_loader(dataset: ShardStream, batch_size: int, world_size: int, rank: int, drop_last: bool = False,
                 **kwargs) -> ShardLoader:
    dataset.split(world_size, rank, kwargs.get("num_workers", 0), drop_last)
    return ShardLoader(dataset, batch_size=batch_size, drop_last=drop_last, **kwargs)
