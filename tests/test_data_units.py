"""The data builders in-process on real files: image decoding and modes, the bad-file check, the one-line
errors for bad folders and CSVs, class agreement across sets, transforms presets, MixUp/CutMix, sampling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.metric_keys import resolve_key
from nf_trainer.dataset.combine import combine
from nf_trainer.dataset.csv_manifest import csv_manifest
from nf_trainer.dataset.files import ImageFileDataset, collate_valid
from nf_trainer.dataset.image_folder import image_folder
from nf_trainer.dataset.images import check_image_file, describe_error, load_image
from nf_trainer.dataset.loaders import build_data
from nf_trainer.dataset.splits import class_balanced_sampler
from nf_trainer.transforms import build_batch_transform, build_transforms
from nf_trainer.transforms.on_device import OnDevice
from tests.conftest import compose_cfg
from tests.data_files import KINDS, make_image_folder, write_csv, write_image

PIXELS = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
NOISE = np.random.RandomState(0).randint(0, 256, (64, 64), dtype=np.uint8)  # a PNG of several kB


def damage_middle(path: Path) -> None:
    """Zero 20 bytes in the middle of the image data: the file keeps its size and its end marker."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 20] = bytes(20)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("units") / "clean", per_class=6, bad=False)


@pytest.mark.parametrize("ext,mode,fmt", KINDS + [(".gif", "P", "GIF")])
def test_load_image_converts_every_mode_to_the_configured_one(tmp_path, ext, mode, fmt):
    path = tmp_path / f"x{ext}"
    write_image(path, PIXELS, mode, fmt)
    rgb, gray = load_image(path, "RGB"), load_image(path, "L")
    assert rgb.shape == (3, 8, 8) and gray.shape == (1, 8, 8) and rgb.dtype == gray.dtype == torch.uint8
    if fmt in ("PNG", "BMP"):  # lossless: the gray values come back exactly
        assert torch.equal(gray[0], torch.from_numpy(PIXELS)) and torch.equal(rgb[1], torch.from_numpy(PIXELS))


def test_check_finds_empty_foreign_and_cut_files_and_keeps_trailing_data(tmp_path):
    write_image(tmp_path / "ok.png", PIXELS, "L", "PNG")
    write_image(tmp_path / "ok.jpg", PIXELS, "RGB", "JPEG")
    png, jpg = (tmp_path / "ok.png").read_bytes(), (tmp_path / "ok.jpg").read_bytes()
    files = {"empty.png": b"", "text.jpg": b"hello", "cut.png": png[: len(png) // 2], "cut.jpg": jpg[: len(jpg) // 2],
             "motion.jpg": jpg + b"\x00\x00\x00\x18ftypmp42" + bytes(500)}  # data after the JPEG end marker is legal
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reasons = {name: check_image_file(tmp_path / name) for name in [*files, "ok.png", "ok.jpg"]}
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["text.jpg"] == "not an image (unknown file signature)"
    assert reasons["cut.png"] and reasons["cut.jpg"] == "Image is incomplete or truncated"
    assert reasons["motion.jpg"] is reasons["ok.png"] is reasons["ok.jpg"] is None


def test_a_file_that_fails_to_decode_is_dropped_from_its_batch_or_fails(tmp_path):
    write_image(tmp_path / "ok.png", PIXELS, "L", "PNG")
    write_image(tmp_path / "damaged.png", NOISE, "L", "PNG")
    damage_middle(tmp_path / "damaged.png")  # only decoding tells
    assert check_image_file(tmp_path / "damaged.png") is None and check_image_file(tmp_path / "damaged.png", full=True)
    samples = [(str(tmp_path / "ok.png"), 0), (str(tmp_path / "damaged.png"), 1)]
    skip = ImageFileDataset(samples, mode="L")
    images, labels, bad = collate_valid([skip[0], skip[1]])
    assert images.shape == (1, 1, 8, 8) and labels.tolist() == [0]  # the damaged one is left out, and handed on
    assert [path for path, _ in bad] == [str(tmp_path / "damaged.png")] and bad[0][1]
    with pytest.raises(NfTrainerError, match="cannot decode .*damaged.png"):
        ImageFileDataset(samples, mode="L", on_bad_file="fail")[1]


def test_images_of_different_sizes_ask_for_a_resize():
    with pytest.raises(NfTrainerError, match="transforms must resize"):
        collate_valid([(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 9, 9), 1)])


def test_train_val_folders_mode_l_and_hidden_folders(tmp_path):
    make_image_folder(tmp_path / "train", per_class=5, bad=False)
    make_image_folder(tmp_path / "val", per_class=2, offset=10, bad=False)
    write_image(tmp_path / "train" / ".ipynb_checkpoints" / "x.png", PIXELS, "L", "PNG")  # not a class
    write_image(tmp_path / "train" / "0" / ".hidden" / "x.png", PIXELS, "L", "PNG")  # not an image of class 0
    data = image_folder(str(tmp_path), mode="L")
    assert data.classes == [str(i) for i in range(10)] and data.in_channels == 1 and data.image_size == 8
    assert len(data.train) == 50 and len(data.eval[tmp_path.name]) == 20


def test_an_empty_class_folder_fails_in_one_line(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=3, bad=False)
    for image in (root / "7").rglob("*.*"):
        image.unlink()
    (root / "7" / "notes.txt").write_text("not an image")
    with pytest.raises(NfTrainerError) as err:
        image_folder(str(root))
    assert str(err.value).startswith(f"class folder(s) with no images in {root}: 7 (images end in .png, .jpg")
    with pytest.raises(NfTrainerError, match="no class folders in .*empty: expected .*/<class>/<image files>"):
        (tmp_path / "empty").mkdir()
        image_folder(str(tmp_path / "empty"))


def test_val_class_unknown_to_train_fails(tmp_path):
    make_image_folder(tmp_path / "train", per_class=2, bad=False)
    make_image_folder(tmp_path / "val", per_class=1, bad=False)
    write_image(tmp_path / "val" / "x" / "1.png", PIXELS, "L", "PNG")
    with pytest.raises(NfTrainerError, match="class folders that .*train lacks: x"):
        image_folder(str(tmp_path))


def test_check_full_finds_damage_before_training(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=6, bad=False)
    victim = root / "2" / "noise.png"
    write_image(victim, NOISE, "L", "PNG")
    damage_middle(victim)
    assert image_folder(str(root), check="quick").bad_files == []
    assert [path for path, _ in image_folder(str(root), check="full").bad_files] == [str(victim)]


def test_a_bad_files_reason_does_not_name_the_decoders_buffer(tmp_path):
    import io

    from PIL import Image, UnidentifiedImageError

    write_image(tmp_path / "whole.png", PIXELS, "L", "PNG")
    with pytest.raises(UnidentifiedImageError) as raised:  # 30 bytes of a PNG: PIL cannot tell what it is
        Image.open(io.BytesIO((tmp_path / "whole.png").read_bytes()[:30]))
    assert "_io.BytesIO object at 0x" in str(raised.value)
    assert describe_error(raised.value) == "cannot identify image file"


def rows_of(folder: Path):
    return [(p.relative_to(folder).as_posix(), p.relative_to(folder).parts[0]) for p in sorted(folder.rglob("*.*"))]


def test_csv_names_indices_and_split(clean_folder, tmp_path):
    rows = rows_of(clean_folder)
    named = csv_manifest(str(write_csv(tmp_path / "named.csv", rows)), root=str(clean_folder), mode="L")
    assert named.classes == [str(i) for i in range(10)] and len(named.train) + len(named.eval["clean"]) == 60
    pets = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    index_csv = write_csv(tmp_path / "index.csv", [(p, int(c)) for p, c in rows], columns=("file", "y"))
    indexed = csv_manifest(str(index_csv), root=str(clean_folder), path_column="file", label_column="y",
                           label_type="index", classes=pets)
    assert indexed.classes == pets and sorted(indexed.train.targets + indexed.eval["clean"].targets) == sorted(
        int(c) for _, c in rows)


@pytest.mark.parametrize("label,kwargs,needle", [
    ("cat", {"classes": ["0", "1"]}, r"line 2: label 'cat' is not in the class list \(0, 1\)"),
    ("12", {"label_type": "index", "classes": ["0", "1"]}, "line 2: class index 12 is out of range for 2 classes"),
    ("cat", {"label_type": "index"}, "line 2: label 'cat' is not a class index; set dataset.label_type=name"),
    ("0", {"path_column": "file"}, "has no column 'file' .*set dataset.path_column"),
    ("0", {"missing": True}, r"line 3: .*/0/gone.png does not exist \(1 more missing\); paths are relative to dataset.root"),
])
def test_bad_csvs_fail_in_one_line(clean_folder, tmp_path, label, kwargs, needle):
    image = rows_of(clean_folder)[0][0]
    rows = [(image, label)] + ([("0/gone.png", "0"), ("0/gone2.png", "0")] if kwargs.pop("missing", False) else [])
    with pytest.raises(NfTrainerError, match=needle) as err:
        csv_manifest(str(write_csv(tmp_path / "train.csv", rows)), root=str(clean_folder), **kwargs)
    assert "\n" not in str(err.value)


def test_val_csv_label_unknown_to_train_fails(clean_folder, tmp_path):
    first = {label: path for path, label in reversed(rows_of(clean_folder))}
    train = write_csv(tmp_path / "train.csv", [(first["0"], "0"), (first["1"], "1")])
    val = write_csv(tmp_path / "val.csv", [(first["2"], "2")])
    with pytest.raises(NfTrainerError, match=r"val.csv line 2: label '2' is not in the class list \(0, 1\)"):
        csv_manifest(str(train), str(val), root=str(clean_folder))


def test_combine_checks_the_index_mapping_and_reserves_avg(clean_folder, tmp_path):
    rows = rows_of(clean_folder)
    folder_node = {"_target_": "nf_trainer.dataset.image_folder.image_folder", "root": str(clean_folder)}
    csv_node = {"_target_": "nf_trainer.dataset.csv_manifest.csv_manifest", "root": str(clean_folder),
                "train_csv": str(write_csv(tmp_path / "all.csv", rows)), "classes": [str(i) for i in reversed(range(10))]}
    with pytest.raises(NfTrainerError, match="class index mapping differs between dataset.train.a and dataset.eval.b: "
                                             "index 0 is '0' in one and '9' in the other"):
        combine(train={"a": folder_node}, eval={"b": csv_node})
    with pytest.raises(NfTrainerError, match="'avg' names the average"):
        combine(train={"avg": folder_node})
    both = combine(train={"a": folder_node}, eval={"b": {**csv_node, "classes": None, "val_fraction": 0.2}})
    assert list(both.eval) == ["a", "b"] and len(both.eval["b"]) == 60  # an eval member is not split


def test_a_split_that_cannot_keep_class_balance_says_so(tmp_path):
    root = make_image_folder(tmp_path / "tiny", per_class=1, bad=False)
    with pytest.raises(NfTrainerError, match="cannot split .*tiny into train/val by val_fraction=0.2"):
        image_folder(str(root))


@pytest.mark.parametrize("preset,size", [("digits", 8), ("cifar", 32), ("imagenet", 224)])
@pytest.mark.parametrize("augment", [None, "randaugment", "trivialaugment", "autoaugment"])
def test_transform_presets_resize_any_image_to_image_size(preset, size, augment):
    overrides = [f"transforms={preset}", "transforms/erasing=random_erasing"]
    overrides += [f"transforms/augment={augment}"] if augment else []
    train, evaluate = build_transforms(compose_cfg(*overrides).transforms)
    image = torch.randint(0, 256, (3, 300, 200), dtype=torch.uint8)
    for pipeline in (train, evaluate):
        out = pipeline(image)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
    assert any(type(t).__name__ == "RandomErasing" for t in train.transforms)


def test_mixup_cutmix_give_soft_targets():
    cfg = compose_cfg("transforms.mixup_alpha=0.2", "transforms.cutmix_alpha=1.0").transforms
    assert build_batch_transform(compose_cfg().transforms, 10) is None
    images, labels = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    for _ in range(4):
        mixed, targets = build_batch_transform(cfg, 10)(images, labels)
        assert mixed.shape == images.shape and targets.shape == (16, 10)
        assert torch.allclose(targets.sum(1), torch.ones(16))


def test_class_balanced_sampler_draws_classes_equally():
    dataset = torch.utils.data.TensorDataset(torch.zeros(100))
    dataset.targets = [0] * 90 + [1] * 10
    drawn = list(class_balanced_sampler(dataset, 2, torch.Generator().manual_seed(0)))
    assert len(drawn) == 100
    assert 35 < sum(dataset.targets[i] == 1 for i in drawn) < 65


def test_average_over_eval_sets_is_a_monitor_name():
    known = {"val/a/f1", "val/b/f1", "val/avg/f1"}
    assert resolve_key("avg/f1", ["a", "b"], known) == "val/avg/f1"
    assert resolve_key("val/avg/f1", ["a", "b"], known) == "val/avg/f1"
    assert resolve_key("f1", ["a", "b"], known) == "val/a/f1"


def test_normalize_on_device_gives_the_host_pipelines_batches(clean_folder):
    """loader.normalize_on_device (the CUDA default): workers stop at uint8, ToDtype/Normalize run on the batch."""
    def batches(on_device: bool, *extra):
        cfg = compose_cfg("dataset=image_folder", f"dataset.root={clean_folder}", "transforms=imagenet",
                          "transforms.image_size=16", "loader.batch_size=8", f"loader.normalize_on_device={on_device}", *extra)
        loaders = build_data(cfg, torch.device("cpu")).loaders
        torch.manual_seed(0)  # the same random crops and flips either way
        return loaders, [(split, images, targets) for split, loader in loaders.items() for images, targets in loader]

    host_loaders, host = batches(False)
    device_loaders, device = batches(True)
    assert not isinstance(host_loaders["train"], OnDevice) and isinstance(device_loaders["train"], OnDevice)
    assert next(iter(device_loaders["train"].loader))[0].dtype == torch.uint8  # what crosses to the GPU
    assert len(device) == len(host) > 2
    for (split, a, ta), (_, b, tb) in zip(host, device):
        assert a.dtype == b.dtype == torch.float32 and torch.allclose(a, b, atol=1e-6) and torch.equal(ta, tb), split
    erasing_loaders, _ = batches(True, "transforms/erasing=random_erasing")  # train ends after Normalize: all stays on the host
    assert not isinstance(erasing_loaders["train"], OnDevice)


@pytest.mark.parametrize("labels,fraction,seed", [
    (None, 0.2, 0), (None, 0.2, 3), (None, 0.35, 1),  # None: the digits labels
    ([0] * 7 + [1] * 5 + [2] * 3 + [3] * 2, 0.3, 0), (["b", "a", "c", "a", "b", "c", "a", "b"] * 3, 0.25, 5),
])
def test_stratified_split_is_sklearns_train_test_split(labels, fraction, seed):
    """Written out to keep sklearn out of startup, the split stays scikit-learn's, index for index."""
    from sklearn.model_selection import train_test_split

    from nf_trainer.dataset.digits import load_digits
    from nf_trainer.dataset.splits import stratified_split

    labels = load_digits()[1].tolist() if labels is None else labels
    indices = list(range(len(labels)))
    expected = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    assert stratified_split(labels, fraction, seed, "x") == tuple(list(part) for part in expected)
