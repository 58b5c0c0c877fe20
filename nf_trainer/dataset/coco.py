"""COCO instances JSON: `python main.py task=detection dataset=coco dataset.train_json=FILE [dataset.val_json=FILE]`.

    {"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id", "image_id", "category_id",
     "bbox": [x, y, w, h], "iscrowd"}], "categories": [{"id", "name"}]}

`file_name` is relative to `train_images` / `val_images` (default: the JSON's folder). Category ids need not be
contiguous: class i is the category with the i-th smallest id, and the category names are the class names.
Without `val_json` the train images are split by `val_fraction` (by image, fixed by `split_seed`). Read with
the standard library's json: loading needs no pycocotools.
"""
from __future__ import annotations

import json
from pathlib import Path

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.detection import ImageBoxes, detection_splits, required_file
from nf_trainer.dataset.splits import DataSplits


def coco(train_json: str | None = None, train_images: str | None = None, val_json: str | None = None,
         val_images: str | None = None, name: str | None = None, mode: str = "RGB", val_fraction: float | None = 0.2,
         split_seed: int = 0, on_bad_file: str = "skip", check: str = "quick", train_transform=None,
         eval_transform=None) -> DataSplits:
    train_file = required_file(train_json, "dataset.train_json")
    train_doc = read_json(train_file)
    classes, label_of = class_list(train_doc, train_file)
    train_folder = images_folder(train_images, train_file, "dataset.train_images")
    train = image_boxes(train_doc, train_file, train_folder, label_of)
    val, val_folder = None, train_folder
    if val_json:
        val_file = required_file(val_json, "dataset.val_json")
        val_doc = read_json(val_file)
        val_folder = images_folder(val_images, val_file, "dataset.val_images")
        val = image_boxes(val_doc, val_file, val_folder, same_classes(val_doc, val_file, classes, train_file))
    return detection_splits(train, val, classes, name=name or val_folder.name, source=str(train_file),
                            root=str(train_folder), mode=mode, on_bad_file=on_bad_file, check=check,
                            val_fraction=val_fraction, split_seed=split_seed, train_transform=train_transform,
                            eval_transform=eval_transform)


def read_json(file: Path) -> dict:
    """The parsed JSON object; a syntax error is one line, `file:line:column: ...`."""
    try:
        with open(file, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise NfTrainerError(f"{file}:{exc.lineno}:{exc.colno}: JSON does not parse: {exc.msg}; fix the file "
                             "(or export it again)") from None
    except UnicodeDecodeError as exc:
        raise NfTrainerError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start}): is it a COCO JSON file?"
                             ) from None
    missing = [key for key in ("images", "annotations", "categories")
               if not isinstance(doc, dict) or not isinstance(doc.get(key), list)]
    if missing:
        raise NfTrainerError(f"{file} is not a COCO instances file: no list '{missing[0]}' at its top level "
                             "(expected images, annotations and categories)")
    return doc


def class_list(doc: dict, file: Path) -> tuple[list[str], dict[int, int]]:
    """(class names in the order of their category ids, category id -> class index)."""
    categories = sorted(category_fields(doc, file), key=lambda c: c[0])
    names = [name for _, name in categories]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise NfTrainerError(f"{file}: several categories are named {', '.join(map(repr, twice))}: class names must "
                             "be unique (they name every metric and prediction); rename or merge them")
    if not names:
        raise NfTrainerError(f"{file} lists no categories")
    return names, {cid: index for index, (cid, _) in enumerate(categories)}


def same_classes(doc: dict, file: Path, classes: list[str], train_file: Path) -> dict[int, int]:
    """category id -> class index for a val JSON, matched to the train JSON's classes by name."""
    label_of = {}
    for cid, name in category_fields(doc, file):
        if name not in classes:
            raise NfTrainerError(f"{file}: category '{name}' (id {cid}) is not among the categories of {train_file} "
                                 f"({', '.join(classes)}); both files must name the same classes")
        label_of[cid] = classes.index(name)
    return label_of


def category_fields(doc: dict, file: Path) -> list[tuple[int, str]]:
    pairs = []
    for i, category in enumerate(doc["categories"]):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or "name" not in category:
            raise NfTrainerError(f"{file}: categories[{i}] needs an integer 'id' and a 'name', got {category!r:.200}")
        pairs.append((category["id"], str(category["name"])))
    return pairs


def images_folder(folder: str | None, json_file: Path, what: str) -> Path:
    path = Path(str(folder)).expanduser().resolve() if folder else json_file.parent
    if not path.is_dir():
        raise NfTrainerError(f"{what}={folder} is not a folder (the JSON's file_name paths are relative to it)")
    return path


def image_boxes(doc: dict, file: Path, folder: Path, label_of: dict[int, int]) -> list[ImageBoxes]:
    """One ImageBoxes per entry of `images` (those without annotations hold no boxes: background images)."""
    records = {}
    for i, image in enumerate(doc["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise NfTrainerError(f"{file}: images[{i}] needs an 'id' and a 'file_name', got {image!r:.200}")
        width, height = image.get("width"), image.get("height")
        size = (height, width) if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0 else None
        records[image["id"]] = ImageBoxes(str(folder / image["file_name"]), str(file), box_format="xywh", size=size)
    for i, ann in enumerate(doc["annotations"]):
        ref = f"annotation id {ann.get('id', f'#{i}')}" if isinstance(ann, dict) else f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise NfTrainerError(f"{file}: {ref} is not an object: {ann!r:.200}")
        if ann.get("iscrowd"):
            # crowd regions mark many objects under one box: neither a training target nor a box to find
            continue
        if ann.get("image_id") not in records:
            raise NfTrainerError(f"{file}: {ref} refers to image_id {ann.get('image_id')!r}, which is not in its images")
        if ann.get("category_id") not in label_of:
            raise NfTrainerError(f"{file}: {ref} has category_id {ann.get('category_id')!r}, which is not among its "
                                 f"categories (ids {', '.join(map(str, sorted(label_of)))}); fix the annotation or add "
                                 "the category")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise NfTrainerError(f"{file}: {ref} needs 'bbox': [x, y, width, height] (4 numbers), got {bbox!r:.200}")
        record = records[ann["image_id"]]
        record.boxes.append([float(v) for v in bbox])
        record.labels.append(label_of[ann["category_id"]])
        record.refs.append(ref)
    return list(records.values())
