"""Segmentation readers: `dataset=mask_folder` (an `images/` and a `masks/` folder with matching names) and
`dataset=voc_seg` (Pascal VOC's SegmentationClass), on one file-backed `MaskDataset`.

A sample is `(image, mask)`: a uint8 `tv_tensors.Image` (C, H, W) and a uint8 `tv_tensors.Mask` (H, W) of class
indices 0..K-1 (K the class names, background included where the data has one) and 255 for void, transformed
together (v2 resizes masks with nearest). Masks are index PNGs (mode P, L or I;16: the pixel values are the
indices) or RGB colour PNGs mapped to indices through the palette (one [r, g, b] per class). JPEG masks are
refused: lossy compression invents values at every edge.

Before training (`dataset.check` quick or full) every pair is checked: a mask for every image, of the image's
size, of values that are class indices or 255 (colours of the palette), PNG. Each is a one-line error naming
the file; an image that does not decode is a bad file, skipped and counted or an error (`dataset.on_bad_file`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.files import check_options, resolve_root
from nf_trainer.dataset.images import IMAGE_EXTENSIONS, check_image_file, image_format, load_image, skip_or_raise
from nf_trainer.dataset.splits import DataSplits, probe_shape

log = logging.getLogger("nf_trainer")

VOID = 255
DESCRIPTION = ("classes.yaml", "classes.yml", "classes.json")  # class names (and a palette) beside the data
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


class MaskDataset(Dataset):
    """Pairs of (image file, mask file), decoded when asked for; the mask's colours mapped through `palette`."""

    def __init__(self, pairs: list[tuple[str, str]], transform=None, mode: str = "RGB", palette=None,
                 on_bad_file: str = "skip", name: str = "masks", source: str = "", root: str = ""):
        self.pairs, self.transform, self.mode, self.palette = pairs, transform, mode, palette
        self.on_bad_file, self.name, self.source, self.root = on_bad_file, name, source, root

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, mask_path = self.pairs[index]
        try:
            image = load_image(image_path, self.mode)
        except Exception as exc:  # any decoder error: the file is bad, not the code
            return skip_or_raise(exc, image_path, self.on_bad_file,
                                 "dataset.check=full finds such files before training; dataset.on_bad_file=skip drops "
                                 "them", " (dataset.check=full finds such files before training)")
        mask = read_mask(mask_path, self.palette)
        sample = tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(np.array(mask)))
        return self.transform(*sample) if self.transform is not None else sample

    def digest(self) -> str:
        """Changes when a pair is added or removed, or a file changes size."""
        h = hashlib.sha256()
        for pair in self.pairs:
            for path in pair:
                rel = os.path.relpath(path, self.root) if self.root else path
                h.update(f"{rel}\t{os.path.getsize(path) if os.path.exists(path) else -1}\n".encode())
        return h.hexdigest()[:16]


def read_mask(path: str, palette=None) -> np.ndarray:
    """A mask file as an (H, W) uint8 index array: index PNGs as they are, colour PNGs through `palette`
    ({(r, g, b): index})."""
    with Image.open(path) as picture:
        if picture.mode in ("RGB", "RGBA"):
            if palette is None:
                raise NfTrainerError(f"mask {path} is an RGB colour image: give the colours of the classes "
                                     "(dataset.palette, one [r, g, b] per class), or save index PNGs")
            rgb = np.asarray(picture.convert("RGB"), dtype=np.int32)
            codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            keys = np.array(sorted(palette), dtype=np.int32)
            values = np.array([palette[k] for k in sorted(palette)], dtype=np.uint8)
            where = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
            unknown = keys[where] != codes
            if unknown.any():
                code = int(codes[unknown][0])
                raise NfTrainerError(f"mask {path} has the colour {[code >> 16, (code >> 8) & 255, code & 255]}, which no "
                                     "class has in dataset.palette: add it to the palette (or dataset.void_colour)")
            return values[where]
        array = np.asarray(picture if picture.mode in ("P", "L") else picture.convert("I"))
    if array.dtype != np.uint8:
        if array.max(initial=0) > VOID or array.min(initial=0) < 0:
            bad = int(array[(array > VOID) | (array < 0)][0])
            raise NfTrainerError(f"mask {path} has the value {bad}: mask values are class indices or {VOID} (void)")
        array = array.astype(np.uint8)
    return array


def check_pair(image: str, mask: str, classes: int, palette, check: str, mode: str) -> str | None:
    """Why the pair is bad as data (a one-line error: the user must fix it), None if it is good. An image that
    does not decode is returned as 'bad image: ...' (a bad file, counted or an error by dataset.on_bad_file)."""
    if check != "none":
        reason = check_image_file(image, mode, full=check == "full")
        if reason is not None:
            return f"bad image: {reason}"
    try:
        with open(mask, "rb") as f:
            head = f.read(32)
    except OSError as exc:
        return f"mask {mask} is unreadable: {exc.strerror or exc}"
    kind = image_format(head)
    if kind == "jpeg" or Path(mask).suffix.lower() in (".jpg", ".jpeg"):
        return (f"mask {mask} is a JPEG: lossy compression changes class indices at every edge; save masks as "
                "index PNGs")
    if kind != "png":
        return f"mask {mask} is not a PNG ({kind or 'unknown signature'}): save masks as index PNGs"
    try:
        with Image.open(image) as im:
            size = im.size
    except Exception as exc:  # noqa: BLE001 - a bad image is reported as one
        return f"bad image: {' '.join(str(exc).split())[:200]}"
    with Image.open(mask) as m:
        if m.size != size:
            return (f"mask {mask} is {m.size[0]}x{m.size[1]} but its image {image} is {size[0]}x{size[1]}: a mask "
                    "must have its image's size")
    try:
        values = np.unique(read_mask(mask, palette))
    except NfTrainerError as exc:
        return str(exc)
    wrong = [int(v) for v in values if v >= classes and v != VOID]
    if wrong:
        return (f"mask {mask} has the value {wrong[0]}, neither a class index (0..{classes - 1}: {classes} classes) "
                f"nor {VOID} (void): fix the mask or add the class to dataset.classes")
    return None


def check_pairs(pairs: list[tuple[str, str]], classes: int, palette, check: str, mode: str, on_bad_file: str,
                where: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(good pairs, [(image, reason)] of the images that do not decode); any other fault of a pair is an error."""
    if check == "none":
        return pairs, []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(lambda p: check_pair(*p, classes, palette, check, mode), pairs))
    bad = []
    for (image, _), reason in zip(pairs, reasons):
        if reason is None:
            continue
        if not reason.startswith("bad image: "):
            raise NfTrainerError(f"{where}: {reason}")
        if on_bad_file == "fail":
            raise NfTrainerError(f"bad image in {where}: {image}: {reason.removeprefix('bad image: ')}; fix or remove "
                                 "it, or set dataset.on_bad_file=skip")
        log.warning("skipping %s: %s", image, reason.removeprefix("bad image: "))
        bad.append((image, reason.removeprefix("bad image: ")))
    return [p for p, r in zip(pairs, reasons) if r is None], bad


def folder_pairs(root: Path, images: str, masks: str, where: str) -> list[tuple[str, str]]:
    """(image, mask) for every image under root/images: the mask at the same relative path under root/masks, any
    image extension, the mask's .png (or another suffix, which the checks then refuse as not PNG)."""
    image_dir, mask_dir = root / images, root / masks
    for folder, key in ((image_dir, "images"), (mask_dir, "masks")):
        if not folder.is_dir():
            raise NfTrainerError(f"{where}: no folder {folder} (dataset.{key}): a mask folder holds images/ and masks/")
    found = {}
    for path in mask_dir.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            found.setdefault(path.relative_to(mask_dir).with_suffix(""), path)
    pairs = []
    for image in sorted(p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
        key = image.relative_to(image_dir).with_suffix("")
        if key not in found:
            raise NfTrainerError(f"{where}: the image {image} has no mask ({mask_dir / key}.png); add it or move the "
                                 "image out")
        pairs.append((str(image), str(found[key])))
    if not pairs:
        raise NfTrainerError(f"{where}: no images under {image_dir}")
    return pairs


def described(root: Path, classes, palette) -> tuple[list[str], list | None]:
    """The class names and palette: the config's, else classes.yaml (or .json) beside the data."""
    if classes is None:
        for name in DESCRIPTION:
            if (root / name).is_file():
                import yaml  # lazy: only this reader

                try:
                    spec = yaml.safe_load((root / name).read_text()) or {}
                except yaml.YAMLError as exc:
                    raise NfTrainerError(f"{root / name} is not valid YAML/JSON: {' '.join(str(exc).split())[:200]}") \
                        from None
                if not isinstance(spec, dict) or not spec.get("classes"):
                    raise NfTrainerError(f"{root / name} must hold `classes: [name, ...]` (and optionally `palette`)")
                classes, palette = spec["classes"], palette if palette is not None else spec.get("palette")
                break
        else:
            raise NfTrainerError(f"dataset.classes is not set and there is no classes.yaml in {root}: name the classes "
                                 "in mask index order, e.g. 'dataset.classes=[background,cat]'")
    return [str(c) for c in classes], ([list(c) for c in palette] if palette is not None else None)


def palette_map(palette, classes: list[str], void_colour) -> dict[int, int] | None:
    """{(r << 16) | (g << 8) | b: class index} of the palette, the void colour mapped to 255."""
    if palette is None:
        return None
    if len(palette) != len(classes):
        raise NfTrainerError(f"dataset.palette has {len(palette)} colours for {len(classes)} classes: give one "
                             "[r, g, b] per class")
    mapping = {}
    for index, colour in enumerate(palette):
        if len(colour) != 3 or not all(0 <= int(v) <= 255 for v in colour):
            raise NfTrainerError(f"dataset.palette[{index}] = {list(colour)}: a colour is [r, g, b], each 0-255")
        code = (int(colour[0]) << 16) | (int(colour[1]) << 8) | int(colour[2])
        if code in mapping:
            raise NfTrainerError(f"dataset.palette gives {list(colour)} to both {classes[mapping[code]]} and "
                                 f"{classes[index]}: each class needs its own colour")
        mapping[code] = index
    if void_colour is not None:
        mapping.setdefault((int(void_colour[0]) << 16) | (int(void_colour[1]) << 8) | int(void_colour[2]), VOID)
    return mapping


def split_pairs(pairs: list, val_fraction: float, seed: int, where: str) -> tuple[list, list]:
    n_val = math.ceil(val_fraction * len(pairs))
    if not 0 < n_val < len(pairs):
        raise NfTrainerError(f"cannot split {where} into train/val by val_fraction={val_fraction}: {len(pairs)} "
                             "image(s); add images, change val_fraction, or give a separate val folder (dataset.val)")
    order = np.random.RandomState(seed).permutation(len(pairs))
    return [pairs[i] for i in sorted(order[n_val:])], [pairs[i] for i in sorted(order[:n_val])]


def mask_splits(train: list, val: list, classes: list[str], palette, *, name: str, source: str, root: str, mode: str,
                on_bad_file: str, check: str, train_transform, eval_transform, void_colour=None) -> DataSplits:
    if len(classes) >= VOID or len(classes) < 2:
        raise NfTrainerError(f"{name}: {len(classes)} classes; segmentation takes 2 to {VOID - 1} (background counts)")
    colours = palette_map(palette, classes, void_colour)
    sets, bad_files = {}, []
    for split, pairs, transform in (("train", train, train_transform), ("val", val, eval_transform)):
        good, bad = check_pairs(pairs, len(classes), colours, check, mode, on_bad_file, f"{name} ({split})")
        bad_files += bad
        sets[split] = MaskDataset(good, transform, mode, colours, on_bad_file, name, source, root)
    if not len(sets["val"]):
        raise NfTrainerError(f"{name}: no usable image in the val set ({source})")
    channels, _ = probe_shape(sets["val"], name)
    return DataSplits(train=sets["train"], eval={name: sets["val"]}, classes=classes, in_channels=channels,
                      image_size=0, bad_files=list(dict.fromkeys(bad_files)))  # 0: images keep their own sizes


def mask_folder(root=None, images: str = "images", masks: str = "masks", val=None, classes=None, palette=None,
                void_colour=None, name: str | None = None, mode: str = "RGB", val_fraction: float = 0.2,
                split_seed: int = 0, on_bad_file: str = "skip", check: str = "quick", train_transform=None,
                eval_transform=None) -> DataSplits:
    """`root`/images and `root`/masks with matching names; `val`: another such folder for the val set (else the
    pairs are split by `val_fraction`, fixed by `split_seed`)."""
    check_options(mode, on_bad_file, check)
    folder = resolve_root(root, "dataset=mask_folder")
    classes, palette = described(folder, classes, palette)
    name = name or folder.name
    pairs = folder_pairs(folder, images, masks, f"dataset=mask_folder ({folder})")
    if val is not None:
        val_folder = resolve_root(val, "dataset=mask_folder (dataset.val)")
        val_pairs = folder_pairs(val_folder, images, masks, f"dataset=mask_folder ({val_folder})")
    else:
        pairs, val_pairs = split_pairs(pairs, val_fraction, split_seed, str(folder))
    return mask_splits(pairs, val_pairs, classes, palette, name=name, source=str(folder), root=str(folder), mode=mode,
                       on_bad_file=on_bad_file, check=check, train_transform=train_transform,
                       eval_transform=eval_transform, void_colour=void_colour)


def voc_seg(root=None, classes=None, palette=None, train_split: str = "train", val_split: str = "val",
            name: str | None = None, mode: str = "RGB", on_bad_file: str = "skip", check: str = "quick",
            train_transform=None, eval_transform=None) -> DataSplits:
    """A Pascal VOC tree: JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNGs, 255 void on the
    boundaries), the ids in ImageSets/Segmentation/<train_split>.txt and <val_split>.txt; VOC's 21 classes."""
    check_options(mode, on_bad_file, check)
    folder = resolve_root(root, "dataset=voc_seg")
    classes = [str(c) for c in (classes or VOC_CLASSES)]

    def listed(split: str) -> list[tuple[str, str]]:
        ids = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not ids.is_file():
            raise NfTrainerError(f"dataset=voc_seg: no {ids}; dataset.root must be a VOC tree (VOCdevkit/VOC2012)")
        pairs = []
        for stem in ids.read_text().split():
            image = folder / "JPEGImages" / f"{stem}.jpg"
            mask = folder / "SegmentationClass" / f"{stem}.png"
            if not image.is_file():  # a listed id is the layout's promise, not a bad file to skip
                raise NfTrainerError(f"dataset=voc_seg: the id {stem} in {ids} has no image ({image}); add it or "
                                     f"remove {stem} from {ids}")
            if not mask.is_file():
                raise NfTrainerError(f"dataset=voc_seg: the image {image} has no mask ({mask}); add it or remove "
                                     f"{stem} from {ids}")
            pairs.append((str(image), str(mask)))
        if not pairs:
            raise NfTrainerError(f"dataset=voc_seg: {ids} lists no image id")
        return pairs

    return mask_splits(listed(train_split), listed(val_split), classes, palette, name=name or "voc",
                       source=str(folder), root=str(folder), mode=mode, on_bad_file=on_bad_file, check=check,
                       train_transform=train_transform, eval_transform=eval_transform)


def write_index_png(mask: np.ndarray, path: Path, palette=None) -> None:
    """An index mask as a palette PNG (tests and tools)."""
    picture = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette makes it P, the values kept
    table = [v for colour in (palette or [(i, i, i) for i in range(256)]) for v in colour]
    picture.putpalette(table + [0] * (768 - len(table)))
    picture.save(path)

