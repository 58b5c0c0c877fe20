"""The detection readers (dataset=coco, yolo, voc) on real files: the vendored deepforest photographs with their
VOC XMLs and the same boxes converted by globox to COCO JSON and YOLO txt (tests/data/deepforest/README.md), and
copies of them changed into every kind of bad input. Configs are composed through the real conf/."""
from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.dataset.images import BadFile
from tests.conftest import compose_cfg
from tests.detection_files import CLASSES, DEEPFOREST, coco_doc, copy_set, voc_object, voc_xml, write_json
from tests.test_data_units import damage_middle

FORMATS = ("coco", "yolo", "voc")
ALL_IMAGES = "dataset.val_fraction=null"  # no split: every image in the eval set


def keys(fmt: str, folder: Path = DEEPFOREST) -> dict:
    """The keys that point each option at a set in the vendored layout."""
    return {"coco": {"train_json": f"{folder}/coco.json", "train_images": f"{folder}/images"},
            "yolo": {"data": f"{folder}/data.yaml"},
            "voc": {"root": f"{folder}/images", "annotations": f"{folder}/voc"}}[fmt]


def overrides(fmt: str, folder: Path = DEEPFOREST) -> list[str]:
    """The same, as the command line gives them."""
    return [f"dataset={fmt}", *(f"dataset.{key}={value}" for key, value in keys(fmt, folder).items())]


@functools.cache
def option(fmt: str):
    """conf/dataset/<fmt>.yaml as main.py composes it: once per option, since composing costs 0.6 s here."""
    return compose_cfg(f"dataset={fmt}").dataset


def build(fmt: str, folder: Path | None = DEEPFOREST, train_transform=None, eval_transform=None, **values):
    """The option's dataset, pointed at `folder` (in the vendored layout), with other `values` for its keys."""
    node = OmegaConf.merge(option(fmt), keys(fmt, folder) if folder else {}, values)
    return create_instance(node, train_transform=train_transform, eval_transform=eval_transform)


def build_composed(*args: str, train_transform=None, eval_transform=None):
    """The dataset of conf/ composed with command-line overrides, as main.py builds it."""
    return create_instance(compose_cfg(*args).dataset, train_transform=train_transform, eval_transform=eval_transform)


def eval_set(data):
    (dataset,) = data.eval.values()
    return dataset


def names(dataset) -> list[str]:
    return [Path(path).name for path in dataset.images]


@pytest.fixture
def copied(tmp_path) -> Path:
    return copy_set(tmp_path / "set", 2)


# --- the three formats agree on real photographs ---------------------------------------------------------------

def test_the_three_formats_give_the_same_images_boxes_and_labels():
    built = {fmt: build_composed(*overrides(fmt), ALL_IMAGES) for fmt in FORMATS}
    for fmt, data in built.items():
        assert data.classes == CLASSES, fmt
        assert (data.in_channels, data.image_size, data.bad_files, data.annotation_fixes) == (3, 0, [], []), fmt
        assert names(eval_set(data)) == ["OSBS_029.jpg", "SOAP_061.jpg"], fmt
    samples = {fmt: [eval_set(data)[i] for i in range(2)] for fmt, data in built.items()}
    for index, (count, per_class) in enumerate([(61, [0, 0, 61]), (37, [9, 28, 0])]):
        image, target = samples["voc"][index]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 400, 400)
        boxes, labels = target["boxes"], target["labels"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
        assert boxes.canvas_size == (400, 400) and boxes.dtype == torch.float32 and boxes.shape == (count, 4)
        assert labels.dtype == torch.int64 and torch.bincount(labels, minlength=3).tolist() == per_class
        for fmt in ("coco", "yolo"):
            other_image, other = samples[fmt][index]
            assert torch.equal(other_image, image), fmt
            assert torch.equal(other["boxes"], boxes) and torch.equal(other["labels"], labels), fmt
    # the first object of OSBS_029.xml: <xmin>203 <ymin>67 <xmax>227 <ymax>90, a Tree
    assert samples["coco"][0][1]["boxes"][0].tolist() == [203, 67, 227, 90]
    assert samples["coco"][0][1]["labels"][0] == CLASSES.index("Tree")


def test_datasets_say_what_they_are_for_the_run_record(copied):
    data = build("coco", copied, val_fraction=None)
    dataset = eval_set(data)
    assert dataset.name == "images" and dataset.source == str(copied / "coco.json")
    before = dataset.digest()
    doc = coco_doc(copied / "coco.json")
    doc["annotations"][0]["bbox"][0] += 1
    write_json(copied / "coco.json", doc)
    assert eval_set(build("coco", copied, val_fraction=None)).digest() != before
    assert build("coco", copied, val_fraction=None, name="trees").eval.keys() == {"trees"}


def test_mode_l_gives_one_channel_images():
    data = build("yolo", mode="L")
    image, _ = eval_set(data)[0]
    assert data.in_channels == 1 and image.shape == (1, 400, 400)


def test_coco_category_ids_become_contiguous_labels_in_id_order_with_their_names(copied):
    doc = coco_doc(copied / "coco.json")
    new_ids = {"Alive": 7, "Dead": 3, "Tree": 11}
    old_to_new = {c["id"]: new_ids[c["name"]] for c in doc["categories"]}
    doc["categories"] = [{**c, "id": new_ids[c["name"]]} for c in doc["categories"]]
    for ann in doc["annotations"]:
        ann["category_id"] = old_to_new[ann["category_id"]]
    write_json(copied / "coco.json", doc)
    data = build("coco", copied, val_fraction=None)
    assert data.classes == ["Dead", "Alive", "Tree"]
    _, soap = eval_set(data)[1]
    assert torch.bincount(soap["labels"], minlength=3).tolist() == [28, 9, 0]


def test_a_separate_coco_val_json_matches_its_categories_by_name(copied, tmp_path):
    doc = coco_doc(copied / "coco.json")
    val = dict(doc, categories=list(reversed(doc["categories"])), images=doc["images"][1:],
               annotations=[a for a in doc["annotations"] if a["image_id"] == doc["images"][1]["id"]])
    write_json(copied / "images" / "val.json", val)
    data = build("coco", copied, val_json=f"{copied}/images/val.json")
    assert data.classes == CLASSES and names(data.train) == ["img_00.jpg", "img_01.jpg"]
    assert names(eval_set(data)) == ["img_01.jpg"] and "images" in data.eval  # val images: the val JSON's folder
    _, target = eval_set(data)[0]
    assert torch.bincount(target["labels"], minlength=3).tolist() == [9, 28, 0]


def test_yolo_names_may_be_an_id_to_name_mapping(copied):
    (copied / "data.yaml").write_text("path: .\ntrain: images\nval: images\nnames:\n  0: Alive\n  1: Dead\n  2: Tree\n")
    assert build("yolo", copied).classes == CLASSES
    (copied / "data.yaml").write_text("path: .\ntrain: images\nnames: {0: Alive, 2: Tree}\n")
    with pytest.raises(NfTrainerError, match=r"data.yaml: the ids of names must be 0..1 without gaps, got \[0, 2\]"):
        build("yolo", copied)


def test_voc_tree_with_imagesets_is_split_as_listed(copied, tmp_path):
    tree = tmp_path / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tree / sub).mkdir(parents=True)
    for stem in ("img_00", "img_01"):
        shutil.copy(copied / "voc" / f"{stem}.xml", tree / "Annotations")
        shutil.copy(copied / "images" / f"{stem}.jpg", tree / "JPEGImages")
    (tree / "ImageSets/Main/train.txt").write_text("img_00\n")
    (tree / "ImageSets/Main/val.txt").write_text("img_01\n")
    data = build("voc", None, root=str(tree))
    assert names(data.train) == ["img_00.jpg"] and names(eval_set(data)) == ["img_01.jpg"]
    assert data.classes == CLASSES and list(data.eval) == ["VOC2012"]
    (tree / "ImageSets/Main/val.txt").write_text("img_01\nimg_02\n")
    with pytest.raises(NfTrainerError, match=r"val.txt lists img_02, but .*Annotations/img_02.xml does not exist"):
        build("voc", None, root=str(tree))


def test_voc_xmls_beside_the_images_and_a_class_list_from_the_config(copied):
    for xml in (copied / "voc").iterdir():
        shutil.move(xml, copied / "images" / xml.name)
    data = build("voc", None, root=f"{copied}/images", classes=["Tree", "Dead", "Alive"], val_fraction=None)
    assert data.classes == ["Tree", "Dead", "Alive"]
    _, target = eval_set(data)[1]
    assert torch.bincount(target["labels"], minlength=3).tolist() == [0, 28, 9]


def test_boxes_fit_a_photo_as_its_exif_orientation_turns_it(copied):
    """A phone photo stored 40 wide and 20 high, marked 'rotate 90': viewers (and load_image) show it 20x40, and
    YOLO's fractions are of that size, as Ultralytics reads them."""
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 20), "green").save(copied / "images" / "img_00.jpg", exif=exif)
    (copied / "labels" / "img_00.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    data = build("yolo", copied)
    assert data.bad_files == [] and data.annotation_fixes == []
    image, target = eval_set(data)[0]
    assert image.shape == (3, 40, 20) and target["boxes"].canvas_size == (40, 20)
    assert target["boxes"].tolist() == [[5, 10, 15, 30]]


# --- transforms move the boxes with the image ------------------------------------------------------------------

def test_a_v2_pipeline_flips_resizes_and_sanitizes_the_boxes_with_the_image():
    plain = eval_set(build("voc", val_fraction=None))
    pipeline = v2.Compose([v2.RandomHorizontalFlip(p=1), v2.Resize((200, 100)), v2.SanitizeBoundingBoxes()])
    moved = eval_set(build("voc", val_fraction=None, eval_transform=pipeline))
    _, original = plain[0]
    image, target = moved[0]
    x1, y1, x2, y2 = original["boxes"].unbind(dim=1)
    expected = torch.stack([(400 - x2) / 4, y1 / 2, (400 - x1) / 4, y2 / 2], dim=1)  # flipped, then x/4 and y/2
    assert image.shape == (3, 200, 100) and target["boxes"].canvas_size == (200, 100)
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected)
    assert torch.equal(target["labels"], original["labels"])
    split = build("voc", val_fraction=0.5, train_transform=pipeline)  # the train set takes the train pipeline
    assert split.train[0][0].shape == (3, 200, 100) and eval_set(split)[0][0].shape == (3, 400, 400)

    cropped = eval_set(build("voc", val_fraction=None, eval_transform=v2.Compose(
        [v2.CenterCrop(100), v2.SanitizeBoundingBoxes()])))
    _, target = cropped[0]
    assert 0 < len(target["boxes"]) < 61 and len(target["labels"]) == len(target["boxes"])
    assert target["boxes"].min() >= 0 and target["boxes"].max() <= 100


# --- splitting and several eval sets ---------------------------------------------------------------------------

def test_val_fraction_splits_by_image_fixed_by_split_seed_and_alike_in_every_format(tmp_path):
    folder = copy_set(tmp_path / "set", 10)
    (folder / "data.yaml").write_text("path: .\ntrain: images\nnames: [Alive, Dead, Tree]\n")  # no val: split
    splits = {}
    for fmt in FORMATS:
        seed0 = build(fmt, folder, val_fraction=0.2, split_seed=0)
        again = build(fmt, folder, val_fraction=0.2, split_seed=0)
        seed1 = build(fmt, folder, val_fraction=0.2, split_seed=1)
        train, val = names(seed0.train), names(eval_set(seed0))
        assert len(val) == 2 and sorted(train + val) == [f"img_{i:02d}.jpg" for i in range(10)]
        assert (names(again.train), names(eval_set(again))) == (train, val)
        assert names(eval_set(seed1)) != val
        splits[fmt] = val
    assert splits["coco"] == splits["yolo"] == splits["voc"]
    for stem in [f"img_{i:02d}" for i in range(1, 10)]:
        (folder / "images" / f"{stem}.jpg").unlink()
        (folder / "voc" / f"{stem}.xml").unlink()
    with pytest.raises(NfTrainerError, match=r"cannot split .* by val_fraction=0.2: 1 image\(s\); add images"):
        build("voc", folder)


def test_multi_combines_detection_sets_of_any_format_as_eval_sets(tmp_path):
    folder = copy_set(tmp_path / "set", 4)
    doc = coco_doc(folder / "coco.json")
    doc["annotations"][0]["bbox"] = [390, 390, 50, 50]  # clipped: the repair is carried through dataset=multi
    write_json(folder / "coco.json", doc)
    data = build_composed("dataset=multi", "+dataset@dataset.train.trees=coco",
                          f"dataset.train.trees.train_json={folder}/coco.json",
                          f"dataset.train.trees.train_images={folder}/images", "+dataset@dataset.eval.photos_voc=voc",
                          f"dataset.eval.photos_voc.root={DEEPFOREST}/images",
                          f"dataset.eval.photos_voc.annotations={DEEPFOREST}/voc",
                          "+dataset@dataset.eval.photos_yolo=yolo", f"dataset.eval.photos_yolo.data={DEEPFOREST}/data.yaml")
    assert list(data.eval) == ["trees", "photos_voc", "photos_yolo"]
    assert data.classes == CLASSES and data.image_size == 0 and data.in_channels == 3
    assert len(data.train) == 3 and len(data.eval["trees"]) == 1  # 4 images, val_fraction 0.2
    assert names(data.eval["photos_voc"]) == names(data.eval["photos_yolo"]) == ["OSBS_029.jpg", "SOAP_061.jpg"]
    assert [file for file, _ in data.annotation_fixes] == [str(folder / "coco.json")]


# --- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_an_annotated_image_that_is_missing_is_counted_as_a_bad_file(fmt, copied):
    if fmt == "yolo":  # a folder lists only the images it holds: a .txt list names one that is gone
        (copied / "list.txt").write_text("./images/img_00.jpg\n./images/img_01.jpg\n")
        (copied / "data.yaml").write_text("path: .\ntrain: list.txt\nval: list.txt\nnames: [Alive, Dead, Tree]\n")
    (copied / "images" / "img_01.jpg").unlink()
    data = build(fmt, copied, val_fraction=None)
    missing = str(copied / "images" / "img_01.jpg")
    assert [path for path, _ in data.bad_files] == [missing]  # once, though yolo's lists it for train and val
    assert data.bad_files[0][1].startswith("missing: annotated in ")
    assert names(eval_set(data)) == ["img_00.jpg"]
    with pytest.raises(NfTrainerError, match=rf"bad image in .*: {missing}: missing: annotated in .*; fix or remove it, "
                                             r"or set dataset.on_bad_file=skip"):
        build(fmt, copied, val_fraction=None, on_bad_file="fail")


def test_coco_boxes_outside_the_image_are_clipped_and_boxes_of_zero_area_dropped(copied):
    doc = coco_doc(copied / "coco.json")
    first = doc["images"][0]["id"]
    extra = {901: [390, 390, 50, 50], 902: [100, 100, 0, 10], 903: [-10, 5, 20, 20], 904: [500, 500, 10, 10]}
    doc["annotations"] += [{"id": i, "image_id": first, "category_id": 2, "bbox": box, "iscrowd": 0}
                           for i, box in extra.items()]
    write_json(copied / "coco.json", doc)
    data = build("coco", copied, val_fraction=None)
    assert data.annotation_fixes == [
        (str(copied / "coco.json"), f"img_00.jpg: annotation id {i}: box x1,y1,x2,y2 [{box}] {what} the 400x400 image")
        for i, box, what in [(901, "390, 390, 440, 440", "clipped to"), (902, "100, 100, 100, 110", "dropped: zero area inside"),
                             (903, "-10, 5, 10, 25", "clipped to"), (904, "500, 500, 510, 510", "dropped: zero area inside")]]
    _, target = eval_set(data)[0]
    assert len(target["boxes"]) == 61 + 2
    assert target["boxes"][-2:].tolist() == [[390, 390, 400, 400], [0, 5, 10, 25]]


@pytest.mark.parametrize("fmt", ["yolo", "voc"])
def test_yolo_and_voc_boxes_outside_the_image_are_clipped_and_zero_area_dropped(fmt, copied):
    if fmt == "yolo":
        with open(copied / "labels" / "img_00.txt", "a") as f:
            f.write("\n2 0.99 0.5 0.1 0.1\n2 0.5 0.5 0 0.1\n")  # lines 62 and 63
        refs, file = ("line 62", "line 63"), copied / "labels" / "img_00.txt"
    else:
        xml = copied / "voc" / "img_00.xml"
        xml.write_text(xml.read_text().replace("</annotation>", voc_object("Tree", (376, 180, 416, 220))
                                               + voc_object("Tree", (100, 100, 100, 150)) + "</annotation>"))
        refs, file = ("object 62", "object 63"), xml
    data = build(fmt, copied, val_fraction=None)
    assert [(f, text.split(": box")[0]) for f, text in data.annotation_fixes] == [
        (str(file), f"img_00.jpg: {refs[0]}"), (str(file), f"img_00.jpg: {refs[1]}")]
    assert "clipped to the 400x400 image" in data.annotation_fixes[0][1]
    assert "dropped: zero area" in data.annotation_fixes[1][1]
    _, target = eval_set(data)[0]
    assert len(target["boxes"]) == 62
    torch.testing.assert_close(target["boxes"][-1].as_subclass(torch.Tensor), torch.tensor([376.0, 180, 400, 220]))


def test_a_coco_category_id_absent_from_the_categories_names_the_file_and_the_annotation(copied):
    doc = coco_doc(copied / "coco.json")
    doc["annotations"][5]["category_id"] = 42
    write_json(copied / "coco.json", doc)
    with pytest.raises(NfTrainerError) as error:
        build("coco", copied)
    assert str(error.value) == (f"{copied}/coco.json: annotation id 5 has category_id 42, which is not among its categories "
                                "(ids 0, 1, 2); fix the annotation or add the category")


def test_a_coco_json_that_does_not_parse_says_file_line_and_column(copied):
    (copied / "coco.json").write_text('{\n "images": [],\n "annotations": [}\n')
    with pytest.raises(NfTrainerError) as error:
        build("coco", copied)
    assert str(error.value) == f"{copied}/coco.json:3:18: JSON does not parse: Expecting value; fix the file (or export it again)"


def test_coco_crowd_annotations_are_left_out(copied):
    doc = coco_doc(copied / "coco.json")
    doc["annotations"].append({"id": 999, "image_id": doc["images"][0]["id"], "category_id": 2, "iscrowd": 1,
                               "bbox": [10, 10, 100, 100]})
    write_json(copied / "coco.json", doc)
    _, target = eval_set(build("coco", copied, val_fraction=None))[0]
    assert len(target["boxes"]) == 61


def test_an_image_whose_size_differs_from_its_annotation_is_a_bad_file(copied):
    doc = coco_doc(copied / "coco.json")
    doc["images"][1]["width"] = 800
    write_json(copied / "coco.json", doc)
    data = build("coco", copied, val_fraction=None)
    assert data.bad_files == [(str(copied / "images" / "img_01.jpg"), f"{copied}/coco.json says the image is 800x400 but "
                               "it is 400x400 (resized or rotated after annotating?); fix the annotation's size and boxes")]


def test_a_yolo_class_id_beyond_names_names_the_file_and_the_line(copied):
    label = copied / "labels" / "img_01.txt"
    label.write_text(label.read_text() + "\n3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(NfTrainerError) as error:
        build("yolo", copied)
    assert str(error.value) == (f"{label}:38: class id 3 is beyond names (3 classes: ids 0..2 in {copied}/data.yaml); "
                                "fix the line or add the class to names")


@pytest.mark.parametrize("line,message", [
    ("2 0.5 0.5 0.1", "expected 'class cx cy w h' (5 numbers) or a polygon 'class x1 y1 x2 y2 x3 y3 ...', got 4 value(s)"),
    ("2 0.5 x 0.1 0.1", "'x' is not a number"),
    ("2 250 120 30 40", "coordinates must be fractions of the image size (0..1), got 250 120 30 40"),
])
def test_a_malformed_yolo_line_names_the_file_and_the_line(copied, line, message):
    label = copied / "labels" / "img_00.txt"
    label.write_text("2 0.5 0.5 0.1 0.1\n\n" + line + "\n")
    with pytest.raises(NfTrainerError, match=rf"^{label}:3: {re.escape(message)}"):
        build("yolo", copied)


def test_a_yolo_polygon_line_gives_its_extent_as_the_box(copied):
    (copied / "labels" / "img_00.txt").write_text("1 0.1 0.2 0.3 0.2 0.2 0.5\n")
    _, target = eval_set(build("yolo", copied))[0]
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[40.0, 80, 120, 200]]))
    assert target["labels"].tolist() == [1]


def test_a_data_yaml_that_does_not_parse_says_file_line_and_column(copied):
    (copied / "data.yaml").write_text("path: .\ntrain: [images\nnames: [a]\n")
    with pytest.raises(NfTrainerError, match=rf"^{copied}/data.yaml:3:6: YAML does not parse: "):
        build("yolo", copied)


@pytest.mark.parametrize("text,message", [
    ("<annotation>\n<object>\n<name>Tree</name>\n</annotation>", ":4:3: XML does not parse: mismatched tag; fix the file"),
    (voc_xml("img_00.jpg", ["<object><name>Tree</name></object>"]),
     ": <object> 1 ('Tree') has no <bndbox>; give xmin ymin xmax ymax or remove the object"),
    (voc_xml("img_00.jpg", [voc_object("Tree", (1, 2, 3, 4)), voc_object("Tree", ("abc", 2, 3, 4))]),
     ": <object> 2 ('Tree') <bndbox> <xmin> is 'abc', not a number"),
    (voc_xml("img_00.jpg", [voc_object("", (1, 2, 3, 4))]), ": <object> 1 has no <name>; name its class"),
])
def test_a_malformed_voc_xml_names_the_file_and_the_element(copied, text, message):
    xml = copied / "voc" / "img_00.xml"
    xml.write_text(text)
    with pytest.raises(NfTrainerError) as error:
        build("voc", copied)
    assert str(error.value) == f"{xml}{message}"


def test_a_voc_object_outside_the_configured_classes_is_an_error(copied):
    with pytest.raises(NfTrainerError, match=r"img_01.xml: object 1 is a 'Dead', which dataset.classes does not list "
                                             r"\(Tree\); add it there"):
        build("voc", copied, classes=["Tree"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_image_without_annotations_is_a_background_image(fmt, copied):
    if fmt == "coco":
        doc = coco_doc(copied / "coco.json")
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != doc["images"][0]["id"]]
        write_json(copied / "coco.json", doc)
    elif fmt == "yolo":
        (copied / "labels" / "img_00.txt").unlink()  # no label file
        (copied / "labels" / "img_01.txt").write_text("")  # an empty one
    else:
        (copied / "voc" / "img_00.xml").unlink()
    pipeline = v2.Compose([v2.RandomHorizontalFlip(p=1), v2.Resize((100, 100)), v2.SanitizeBoundingBoxes()])
    dataset = eval_set(build(fmt, copied, val_fraction=None, eval_transform=pipeline))
    empty = [0, 1] if fmt == "yolo" else [0]
    for index in empty:
        image, target = dataset[index]
        assert image.shape == (3, 100, 100)
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert target["labels"].dtype == torch.int64


def test_an_image_that_does_not_decode_is_counted_or_stops_the_run(copied):
    (copied / "images" / "img_01.jpg").unlink()
    bad = copied / "images" / "img_01.png"  # the XML pairs with its image by stem, whatever its extension
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (400, 400, 3), dtype=np.uint8)).save(bad)
    damage_middle(bad)  # passes the quick check; only decoding tells
    data = build("voc", copied, val_fraction=None, check="full")
    assert [path for path, _ in data.bad_files] == [str(bad)] and names(eval_set(data)) == ["img_00.jpg"]
    # found only while loading: skipped (the batch drops it and the count takes it) or one line
    quick = eval_set(build("voc", copied, val_fraction=None))
    assert names(quick) == ["img_00.jpg", "img_01.png"]
    assert isinstance(quick[1], BadFile) and quick[1].path == str(bad)
    failing = eval_set(build("voc", copied, val_fraction=None, on_bad_file="fail"))
    with pytest.raises(NfTrainerError, match=rf"cannot decode {bad}: "):
        failing[1]
