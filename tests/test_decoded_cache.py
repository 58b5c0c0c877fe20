"""`dataset.cache=memory|disk`: image files decoded once, the same pixels as decoding per epoch, batches from
memory, a disk cache that later builds read and that is rebuilt when the folder changes, bad files skipped and
counted, an unwritable cache folder in one line."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nf_trainer.dataset.decoded_cache import CachedImageList, CachedImages
from nf_trainer.dataset.loaders import build_data
from nf_trainer.dataset.tensor_batches import TensorBatches
from tests.conftest import compose_cfg, fails_in_one_line, runs
from tests.data_files import make_image_folder, write_image
from tests.test_data_units import damage_middle


def folder_data(root: Path, *overrides: str, cache_dir: Path | None = None):
    cfg = compose_cfg("dataset=image_folder", f"dataset.root={root}", "dataset.mode=L", "transforms=digits",
                      *((f"dataset.cache_dir={cache_dir}",) if cache_dir else ()), *overrides)
    return build_data(cfg, torch.device("cpu"))


@pytest.fixture
def folder(tmp_path) -> Path:
    """Digits as 8x8 PNG/JPEG/BMP/WebP files of mixed modes, and one file that only decoding finds bad."""
    root = make_image_folder(tmp_path / "digits", per_class=8, bad=False)
    write_image(root / "4" / "damaged.png", np.random.RandomState(0).randint(0, 256, (64, 64), dtype=np.uint8), "L", "PNG")
    damage_middle(root / "4" / "damaged.png")
    return root


def test_a_memory_cache_gives_the_decoded_pixels_in_batches_and_counts_the_bad_file(folder):
    plain, cached = folder_data(folder, "dataset.check=quick"), folder_data(folder, "dataset.cache=memory")
    assert isinstance(cached.splits.train, CachedImages) and isinstance(cached.loaders["train"], TensorBatches)
    assert [path for path, _ in cached.splits.bad_files] == [str(folder / "4" / "damaged.png")]  # counted
    name = folder.name
    without_bad = [(x, y) for x, y in plain.loaders[name]]  # the per-sample path drops it from its batch
    for (x, y), (xp, yp) in zip(cached.loaders[name], without_bad, strict=True):
        assert torch.equal(x, xp) and torch.equal(y, yp)


def test_a_disk_cache_is_read_by_later_builds_and_rebuilt_when_the_folder_changes(folder, tmp_path):
    cache = tmp_path / "cache"
    first = folder_data(folder, "dataset.cache=disk", cache_dir=cache)
    metas = sorted(cache.glob("*/meta.json"))
    assert len(metas) == 2  # train and val
    written = {m: m.parent.joinpath("images.u8").stat().st_mtime_ns for m in metas}
    again = folder_data(folder, "dataset.cache=disk", cache_dir=cache)
    assert {m: m.parent.joinpath("images.u8").stat().st_mtime_ns for m in metas} == written  # read, not rebuilt
    assert again.splits.bad_files == first.splits.bad_files  # the bad file is still counted from the cache
    assert torch.equal(again.splits.train.images, first.splits.train.images)

    victim = next(p for p in sorted(folder.rglob("*.png")) if p.name != "damaged.png")
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a touched file: same bytes, new mtime
    folder_data(folder, "dataset.cache=disk", cache_dir=cache)
    changed = [m for m in metas if m.parent.joinpath("images.u8").stat().st_mtime_ns != written[m]]
    assert len(changed) == 1  # only the split that holds the file
    write_image(folder / "7" / "added.png", np.zeros((8, 8), np.uint8), "L", "PNG")
    grown = folder_data(folder, "dataset.cache=disk", cache_dir=cache)
    counts = sorted(int(json.loads(m.read_text())["fingerprint"].split(":")[0]) for m in sorted(cache.glob("*/meta.json")))
    assert sum(counts) == len(grown.splits.train) + len(grown.splits.eval[folder.name]) + 1  # + the bad file


def test_images_of_different_sizes_are_cached_as_a_list(tmp_path):
    root = make_image_folder(tmp_path / "sizes", per_class=6, bad=False)
    write_image(root / "2" / "big.png", np.zeros((12, 10), np.uint8), "L", "PNG")
    data = folder_data(root, "dataset.cache=disk", "transforms.image_size=8", cache_dir=tmp_path / "cache")
    train, val = data.splits.train, data.splits.eval["sizes"]
    assert isinstance(train, CachedImageList) or isinstance(val, CachedImageList)
    assert all(image.shape == (1, 8, 8) for image, _ in (train[i] for i in range(len(train))))


def test_an_unwritable_cache_folder_fails_in_one_line_before_the_run(folder, out):
    blocker = out / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    message = fails_in_one_line("dataset=image_folder", f"dataset.root={folder}", "transforms=digits",
                                "dataset.cache=disk", f"dataset.cache_dir={blocker}/cache", "debug=fast", out=out)
    assert message.startswith(f"dataset.cache_dir={blocker}/cache is not a writable folder") and "\n" not in message
    assert "dataset.cache=memory" in message
    assert runs(out) == []  # nothing started
    message = fails_in_one_line("dataset=image_folder", f"dataset.root={folder}", "dataset.cache=ram", "debug=fast", out=out)
    assert message == "dataset.cache must be one of none, memory, disk, not 'ram'"
