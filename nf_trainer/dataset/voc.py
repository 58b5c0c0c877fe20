"""Pascal VOC XML: `python main.py task=detection dataset=voc dataset.root=DIR`.

Two layouts:
    DIR/Annotations/<id>.xml, DIR/JPEGImages/<id>.jpg, DIR/ImageSets/Main/<train_split>.txt and <val_split>.txt
        the VOC tree (VOCdevkit/VOC2012); without the split lists, all annotations, split by val_fraction
    DIR/**/<stem>.<image extension> with <stem>.xml beside it, or at the same place under `annotations`
        a plain folder, as LabelImg and other tools write; DIR/<train_split>/ + DIR/<val_split>/ are used as given,
        else the images are split by val_fraction (by image, fixed by split_seed). An image without an XML is a
        background image.

An XML names its image by its stem (`<filename>` only decides between images of the same stem, or names the
image of an XML that has none). Coordinates are used as written (1-based in VOC, as torchvision's
VOCDetection keeps them). `difficult` objects are kept as boxes to learn. The classes are `classes`, else the
sorted object names found in the XMLs.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.detection import ImageBoxes, detection_splits, image_files
from nf_trainer.dataset.files import resolve_root
from nf_trainer.dataset.images import IMAGE_EXTENSIONS
from nf_trainer.dataset.splits import DataSplits

CORNERS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class VocFile:
    """What one XML says: its `<filename>`, `<size>` (height, width) and objects (name, box, where)."""
    path: Path
    filename: str
    size: tuple[int, int] | None
    objects: list[tuple[str, list[float], str]]


def voc(root: str | None = None, annotations: str | None = None, classes: list[str] | None = None,
        train_split: str = "train", val_split: str = "val", name: str | None = None, mode: str = "RGB",
        val_fraction: float | None = 0.2, split_seed: int = 0, on_bad_file: str = "skip", check: str = "quick",
        train_transform=None, eval_transform=None) -> DataSplits:
    folder = resolve_root(root, "voc")
    if (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir():
        train, val = tree_pairs(folder, train_split, val_split)
    else:
        xml_root = Path(str(annotations)).expanduser().resolve() if annotations else folder
        if not xml_root.is_dir():
            raise NfTrainerError(f"voc: dataset.annotations={annotations} is not a folder")
        if (folder / train_split).is_dir() and (folder / val_split).is_dir():
            train = folder_pairs(folder / train_split, xml_root / train_split)
            val = folder_pairs(folder / val_split, xml_root / val_split)
        else:
            train, val = folder_pairs(folder, xml_root), None
    found = sorted({obj[0] for pairs in (train, val or []) for _, xml in pairs if xml for obj in xml.objects})
    classes = [str(c) for c in classes] if classes else found
    if not classes:
        raise NfTrainerError(f"voc: no <object> in the XMLs under {folder}: nothing to learn (and no dataset.classes)")
    return detection_splits(records(train, classes), records(val, classes) if val is not None else None, classes,
                            name=name or folder.name, source=str(folder), root=str(folder), mode=mode,
                            on_bad_file=on_bad_file, check=check, val_fraction=val_fraction, split_seed=split_seed,
                            train_transform=train_transform, eval_transform=eval_transform)


Pairs = list[tuple[Path, "VocFile | None"]]  # (image, its annotation or None)


def tree_pairs(folder: Path, train_split: str, val_split: str) -> tuple[Pairs, Pairs | None]:
    """(train, val) of a VOC tree: the ids ImageSets/Main lists, else every annotation (val None: split later)."""
    lists = folder / "ImageSets" / "Main"
    train_list, val_list = lists / f"{train_split}.txt", lists / f"{val_split}.txt"
    val_ids = read_ids(val_list) if val_list.is_file() else None
    if train_list.is_file():
        train_ids = read_ids(train_list)
    else:
        train_ids = sorted(p.stem for p in (folder / "Annotations").glob("*.xml") if not p.name.startswith("."))
        train_ids = [i for i in train_ids if i not in set(val_ids or [])]
    train = [tree_pair(folder, i, train_list) for i in train_ids]
    return train, [tree_pair(folder, i, val_list) for i in val_ids] if val_ids is not None else None


def read_ids(listing: Path) -> list[str]:
    """The first word of each line (per-class lists add a 1/-1 flag after the id)."""
    return [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]


def tree_pair(folder: Path, image_id: str, listing: Path) -> tuple[Path, VocFile]:
    xml = folder / "Annotations" / f"{image_id}.xml"
    if not xml.is_file():
        raise NfTrainerError(f"{listing} lists {image_id}, but {xml} does not exist; remove the id or add its "
                             "annotation")
    found = (folder / "JPEGImages" / f"{image_id}{ext}" for ext in IMAGE_EXTENSIONS)
    image = next((p for p in found if p.is_file()), folder / "JPEGImages" / f"{image_id}.jpg")  # none: counted missing
    return image, read_xml(xml)


def folder_pairs(images_dir: Path, xml_dir: Path) -> Pairs:
    """Every image under `images_dir` with the XML of the same relative stem under `xml_dir` (or None), and every
    XML without an image (its image counted missing later)."""
    images: dict[Path, list[Path]] = {}
    for image in image_files(images_dir):
        images.setdefault(image.relative_to(images_dir).with_suffix(""), []).append(image)
    xmls = {}
    if xml_dir.is_dir():
        for dirpath, dirnames, filenames in os.walk(xml_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for f in filenames:
                if f.lower().endswith(".xml") and not f.startswith("."):
                    path = Path(dirpath) / f
                    xmls[path.relative_to(xml_dir).with_suffix("")] = path
    pairs = []
    for stem in sorted(set(images) | set(xmls)):
        annotation = read_xml(xmls[stem]) if stem in xmls else None
        candidates = images.get(stem, [])
        if len(candidates) > 1 and annotation is not None:
            named = [p for p in candidates if p.name == annotation.filename]
            if len(named) != 1:
                raise NfTrainerError(f"{annotation.path}: images {', '.join(p.name for p in candidates)} share its "
                                     f"stem and its <filename> ({annotation.filename or 'none'}) names none of them; "
                                     "set <filename> or rename the other images")
            candidates = named
        if not candidates:  # an annotation whose image is not there: counted with the bad files
            candidates = [images_dir / stem.parent / (annotation.filename or f"{stem.name}.jpg")]
        pairs += [(image, annotation) for image in candidates]
    return pairs


def read_xml(path: Path) -> VocFile:
    """The parsed annotation; a file that does not parse, or lacks what a box needs, is a one-line error."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        text = re.sub(r": line \d+, column \d+$", "", str(exc))
        raise NfTrainerError(f"{path}:{line}:{column + 1}: XML does not parse: {text}; fix the file") from None
    if root.tag != "annotation":
        raise NfTrainerError(f"{path}: not a Pascal VOC annotation (its root element is <{root.tag}>, not <annotation>)")
    width, height = (number(root.find("size"), side, path, "<size>", required=False) for side in ("width", "height"))
    size = (int(height), int(width)) if width and height else None  # 0 or absent: unknown, the file's own size is used
    objects = []
    for index, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        where = f"<object> {index}" + (f" ('{name}')" if name else "")
        if not name:
            raise NfTrainerError(f"{path}: {where} has no <name>; name its class")
        box = obj.find("bndbox")
        if box is None:
            raise NfTrainerError(f"{path}: {where} has no <bndbox>; give xmin ymin xmax ymax or remove the object")
        objects.append((name, [number(box, corner, path, f"{where} <bndbox>") for corner in CORNERS], f"object {index}"))
    return VocFile(path, (root.findtext("filename") or "").strip(), size, objects)


def number(element, tag: str, path: Path, where: str, required: bool = True) -> float | None:
    text = element.findtext(tag) if element is not None else None
    if text is None or not text.strip():
        if not required:
            return None
        raise NfTrainerError(f"{path}: {where} has no <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise NfTrainerError(f"{path}: {where} <{tag}> is '{text.strip()[:40]}', not a number") from None


def records(pairs: Pairs, classes: list[str]) -> list[ImageBoxes]:
    label_of, out = {name: index for index, name in enumerate(classes)}, []
    for image, annotation in pairs:
        record = ImageBoxes(str(image), str(annotation.path) if annotation else str(image),
                            size=annotation.size if annotation else None)
        for name, box, ref in annotation.objects if annotation else []:
            if name not in label_of:
                raise NfTrainerError(f"{annotation.path}: {ref} is a '{name}', which dataset.classes does not list "
                                     f"({', '.join(classes)}); add it there")
            record.boxes.append(box)
            record.labels.append(label_of[name])
            record.refs.append(ref)
        out.append(record)
    return out
