"""Detection sets on disk for the tests: the vendored deepforest photographs (tests/data/deepforest, README there)
in COCO, YOLO and VOC form, and copies of them to change."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import ROOT

DEEPFOREST = ROOT / "tests" / "data" / "deepforest"
PHOTOS = ("OSBS_029", "SOAP_061")
CLASSES = ["Alive", "Dead", "Tree"]


def coco_doc(path: Path = DEEPFOREST / "coco.json") -> dict:
    return json.loads(path.read_text())


def copy_set(folder: Path, count: int = 2) -> Path:
    """`count` images (the two photographs in turn, named img_00.jpg ...) with their boxes, in the vendored layout:
    images/, labels/ + data.yaml (YOLO), voc/ (VOC XMLs in a parallel folder), coco.json (file_name relative to
    images/)."""
    for sub in ("images", "labels", "voc"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    source = coco_doc()
    doc = {"images": [], "annotations": [], "categories": source["categories"]}
    for i in range(count):
        photo, stem = PHOTOS[i % 2], f"img_{i:02d}"
        shutil.copy(DEEPFOREST / "images" / f"{photo}.jpg", folder / "images" / f"{stem}.jpg")
        shutil.copy(DEEPFOREST / "labels" / f"{photo}.txt", folder / "labels" / f"{stem}.txt")
        xml = (DEEPFOREST / "voc" / f"{photo}.xml").read_text().replace(f"{photo}.jpg", f"{stem}.jpg")
        (folder / "voc" / f"{stem}.xml").write_text(xml)
        old = next(image for image in source["images"] if image["file_name"] == f"{photo}.jpg")
        doc["images"].append({**old, "id": 100 + i, "file_name": f"{stem}.jpg"})
        doc["annotations"] += [{**ann, "id": len(doc["annotations"]) + n, "image_id": 100 + i}
                               for n, ann in enumerate(a for a in source["annotations"] if a["image_id"] == old["id"])]
    write_json(folder / "coco.json", doc)
    shutil.copy(DEEPFOREST / "data.yaml", folder / "data.yaml")
    return folder


def write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc, indent=1))
    return path


def voc_object(name: str, box: tuple, extra: str = "") -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name>{extra}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
            f"<ymax>{ymax}</ymax></bndbox></object>")


def voc_xml(filename: str, objects: list[str], size: tuple[int, int] = (400, 400)) -> str:
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{''.join(objects)}</annotation>")
