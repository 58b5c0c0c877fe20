"""What the detection readers (`coco`, `yolo`, `voc`) share: one annotated image as read (`ImageBoxes`), the
file-backed dataset they all build (`DetectionDataset`), and the steps from annotations to `DataSplits`.

A sample is `(image, target)`: a uint8 `tv_tensors.Image` (C, H, W) and `{"boxes": tv_tensors.BoundingBoxes
XYXY float32 (N, 4) in pixels, "labels": int64 (N,)}`, labels 0..K-1 into the class list (no background class).
The split's transform (a torchvision.transforms.v2 pipeline) is applied to both together, so boxes follow
the image. An image without boxes has boxes (0, 4) and labels (0,).

Before training every image is checked as `image_folder`'s are (`dataset.check`, `dataset.on_bad_file`) and its
size read from the file's header; an annotated image that is missing, does not decode, or whose size differs
from the size its annotation states is a bad file: skipped and listed, or a one-line error. Boxes are clipped
to their image and boxes of zero area dropped; each repair is listed in `DataSplits.annotation_fixes`.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import box_convert

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.files import check_options
from nf_trainer.dataset.images import IMAGE_EXTENSIONS, check_image_file, load_image, skip_or_raise
from nf_trainer.dataset.splits import DataSplits, probe_shape

log = logging.getLogger("nf_trainer")

EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees: load_image applies them


@dataclass
class ImageBoxes:
    """One image and its boxes as an annotation file gives them.

    `boxes` are in `box_format` (torchvision's names: "xyxy", "xywh", "cxcywh"), in pixels, or in fractions of
    the image's width and height when `normalized` (YOLO). `refs` says where each box comes from ("annotation
    id 7", "line 3", "object 2"), for the list of repairs. `size` is the (height, width) the annotation states,
    when it states one."""
    image: str
    annotation: str
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    box_format: str = "xyxy"
    normalized: bool = False
    size: tuple[int, int] | None = None


class DetectionDataset(Dataset):
    """Annotated image files, decoded by `load_image`, transformed jointly with their boxes.

    The boxes of all images live in one array with per-image offsets rather than one tensor per image: the
    loader's worker processes then share a few arrays instead of touching (and copying) one Python object per
    image, as Detectron2 does for COCO-sized lists."""

    def __init__(self, images: list[str], boxes: np.ndarray, labels: np.ndarray, offsets: np.ndarray,
                 transform=None, mode: str = "RGB", on_bad_file: str = "skip", name: str = "detection",
                 source: str = "", root: str = ""):
        self.images, self.boxes, self.labels, self.offsets = images, boxes, labels, offsets
        self.transform, self.mode, self.on_bad_file = transform, mode, on_bad_file
        self.name, self.source, self.root = name, source, root

    def __len__(self) -> int:
        return len(self.images)

    def target(self, index: int, canvas_size: tuple[int, int]) -> dict:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return {"boxes": tv_tensors.BoundingBoxes(torch.tensor(self.boxes[start:end]), format="XYXY",
                                                  canvas_size=canvas_size),
                "labels": torch.tensor(self.labels[start:end])}

    def __getitem__(self, index: int):
        path = self.images[index]
        try:
            image = load_image(path, self.mode)
        except Exception as exc:  # any decoder error: the file is bad, not the code
            return skip_or_raise(exc, path, self.on_bad_file,  # the task's collate drops it from the batch
                                 "dataset.check=full finds such files before training; dataset.on_bad_file=skip drops "
                                 "them", " (dataset.check=full finds such files before training)")
        image, target = tv_tensors.Image(image), self.target(index, tuple(image.shape[-2:]))
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def digest(self) -> str:
        """Changes when an image is added, removed or changes size, or a box or label changes."""
        h = hashlib.sha256()
        for index, path in enumerate(self.images):
            rel = os.path.relpath(path, self.root) if self.root else path
            size = os.path.getsize(path) if os.path.exists(path) else -1
            h.update(f"{rel}\t{size}\n".encode())
            start, end = int(self.offsets[index]), int(self.offsets[index + 1])
            h.update(self.boxes[start:end].tobytes() + self.labels[start:end].tobytes())
        return h.hexdigest()[:16]


def detection_splits(train: list[ImageBoxes], val: list[ImageBoxes] | None, classes: list[str], *, name: str,
                     source: str, root: str, mode: str, on_bad_file: str, check: str, val_fraction: float | None,
                     split_seed: int, train_transform, eval_transform) -> DataSplits:
    """The DataSplits of annotated images: `val` None splits `train` by image (`split_images`); every image
    checked and sized; boxes converted to pixels XYXY, clipped to their image, zero-area boxes dropped."""
    check_options(mode, on_bad_file, check)
    if val is None:
        train, val = split_images(train, val_fraction, split_seed, source)
    built, bad_files, fixes = {}, [], []
    for split, records, transform in (("train", train, train_transform), ("val", val, eval_transform)):
        where = f"{name} ({split})"
        sized, bad = inspect_images(records, check, mode, on_bad_file, where)
        images, boxes, labels, offsets = pixel_boxes(sized, fixes)
        bad_files += bad
        built[split] = DetectionDataset(images, boxes, labels, offsets, transform, mode, on_bad_file, name, source,
                                        root)
    # an image in both splits (YOLO sets may list one folder as train and val) is one bad file, its boxes one repair
    bad_files, fixes = list(dict.fromkeys(bad_files)), list(dict.fromkeys(fixes))
    if fixes:
        log.warning("%s: %d box(es) clipped to their image or dropped for zero area (listed in the run's annotation "
                    "fixes)", name, len(fixes))
    if not len(built["val"]):
        raise NfTrainerError(f"{name}: no usable image in the val set ({source})")
    channels, _ = probe_shape(built["val"], name)
    return DataSplits(train=built["train"], eval={name: built["val"]}, classes=list(classes), in_channels=channels,
                      image_size=0, bad_files=bad_files, annotation_fixes=fixes)  # 0: images keep their own sizes


def split_images(records: list[ImageBoxes], val_fraction: float | None, seed: int, where: str
                 ) -> tuple[list[ImageBoxes], list[ImageBoxes]]:
    """(train, val) drawn by image: a permutation of the images in path order, fixed by `seed`, so the same
    files and seed always give the same split. Not stratified: an image holds boxes of several classes.
    val_fraction None: no split, everything is val (an eval-only member of dataset=multi)."""
    records = sorted(records, key=lambda r: r.image)
    if val_fraction is None:
        return [], records
    n_val = math.ceil(val_fraction * len(records))
    if not 0 < n_val < len(records):
        raise NfTrainerError(f"cannot split {where} into train/val by val_fraction={val_fraction}: {len(records)} "
                             "image(s); add images, change val_fraction, or give a separate val set")
    order = np.random.RandomState(seed).permutation(len(records))
    return [records[i] for i in sorted(order[n_val:])], [records[i] for i in sorted(order[:n_val])]


def inspect_images(records: list[ImageBoxes], check: str, mode: str, on_bad_file: str, where: str
                   ) -> tuple[list[tuple[ImageBoxes, tuple[int, int]]], list[tuple[str, str]]]:
    """([(record, (height, width))] of the images that are good, [(path, reason)] of those that are not);
    on_bad_file=fail raises on the first bad one."""
    full = check == "full"
    workers = min(32, (os.cpu_count() or 1) * (1 if full else 4))  # the quick check waits on the disk, not the CPU
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda r: image_size_or_reason(r, check, mode), records, chunksize=64))
    bad = [(r.image, result) for r, result in zip(records, results) if isinstance(result, str)]
    if bad and on_bad_file == "fail":
        path, reason = bad[0]
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise NfTrainerError(f"bad image in {where}: {path}: {reason}{more}; fix or remove it, or set "
                             "dataset.on_bad_file=skip")
    for path, reason in bad:
        log.warning("skipping %s: %s", path, reason)
    if bad:
        log.warning("%s: skipped %d bad file(s) of %d", where, len(bad), len(records))
    return [(r, result) for r, result in zip(records, results) if not isinstance(result, str)], bad


def image_size_or_reason(record: ImageBoxes, check: str, mode: str) -> tuple[int, int] | str:
    """The image's (height, width) as `load_image` will give it, or why the file is bad."""
    if not os.path.isfile(record.image):
        return f"missing: annotated in {record.annotation}"
    if check != "none":
        reason = check_image_file(record.image, mode, full=check == "full")
        if reason is not None:
            return reason
    try:
        with Image.open(record.image) as im:  # reads the header only
            width, height = im.size
            # Pillow decodes a whole PNG to look for EXIF after its pixels; one before them is in `info` already
            has_exif = im.format != "PNG" or "exif" in im.info
            if has_exif and im.getexif().get(EXIF_ORIENTATION, 1) in SWAPS_SIDES:
                width, height = height, width
    except Exception as exc:  # any reader error: the file is bad
        return f"cannot read the image size: {' '.join(str(exc).split())[:200]}"
    if record.size is not None and record.size != (height, width):
        return (f"{record.annotation} says the image is {record.size[1]}x{record.size[0]} but it is {width}x{height} "
                "(resized or rotated after annotating?); fix the annotation's size and boxes")
    return height, width


def pixel_boxes(sized: list[tuple[ImageBoxes, tuple[int, int]]], fixes: list[tuple[str, str]]):
    """(image paths, boxes (M, 4) float32 XYXY pixels, labels (M,) int64, offsets (n + 1,)) of the images; boxes
    outside their image are clipped to it and boxes of zero area dropped, each repair added to `fixes`.

    All boxes at once (a reader gives all its boxes in one format): 1.7 s for 20 000 COCO-like images of 7 boxes
    here, where torchvision's clip_boxes_to_image per image (it takes one size) took 13.4 s."""
    records = [record for record, _ in sized]
    counts = torch.tensor([len(r.boxes) for r in records], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(records)), counts)  # the image of each box
    heights, widths = (torch.tensor([size[i] for _, size in sized], dtype=torch.float64)[owner] for i in (0, 1))
    limits = torch.stack([widths, heights, widths, heights], dim=1)
    boxes = torch.tensor([box for r in records for box in r.boxes], dtype=torch.float64).reshape(-1, 4)
    labels = torch.tensor([label for r in records for label in r.labels], dtype=torch.int64)
    if records and records[0].normalized:
        boxes = boxes * limits
    boxes = box_convert(boxes, records[0].box_format if records else "xyxy", "xyxy")
    clipped = torch.minimum(boxes.clamp(min=0), limits)  # clip_boxes_to_image's clamp, with a size per box
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    refs = [(r, ref) for r in records for ref in r.refs]
    for i in torch.nonzero(~keep | (clipped != boxes).any(dim=1)).flatten().tolist():
        record, ref = refs[i]
        box = ", ".join(f"{v:g}" for v in boxes[i].tolist())
        what = "dropped: zero area inside" if not keep[i] else "clipped to"
        fixes.append((record.annotation, f"{os.path.basename(record.image)}: {ref}: box x1,y1,x2,y2 [{box}] {what} "
                                         f"the {int(widths[i])}x{int(heights[i])} image"))
    kept_per_image = torch.bincount(owner[keep], minlength=len(records))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), kept_per_image.cumsum(0)])
    return ([r.image for r in records], clipped[keep].to(torch.float32).numpy(), labels[keep].numpy(),
            offsets.numpy())


def image_files(folder: Path) -> list[Path]:
    """The visible image files under `folder` (any depth, extensions in any case), in path order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    return sorted(found)


def required_file(path, what: str) -> Path:
    """`path` as an absolute Path, or a one-line error when it is unset or no file."""
    if path in (None, "", "???"):
        raise NfTrainerError(f"{what} is not set; pass {what}=FILE")
    file = Path(str(path)).expanduser().resolve()
    if not file.is_file():
        raise NfTrainerError(f"{what}={path}: no such file")
    return file
