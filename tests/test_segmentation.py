"""task=segmentation end to end: the tiny UNet learns the generated shapes' masks far above the same run on shuffled
masks, and its run holds what a segmentation researcher reads (losses, mIoU, per-class IoU, overlays by step,
reports); the checkpoint evaluates, predicts palette PNG masks at each image's own size, and the logged model
answers raw images with masks. A real image and mask pair (imgaug's quokka) trains through dataset=mask_folder.
Every bad input of a mask folder is one line. The metric arithmetic is checked against torchmetrics in-process."""
from __future__ import annotations

import base64
import csv
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.masks import mask_folder, write_index_png
from nf_trainer.dataset.shapes import shapes
from nf_trainer.tasks.segmentation import confusion_values
from tests.conftest import ROOT, client, environment, fails_in_one_line, metric_history, only_run, run_here, run_main, runs

QUOKKA = ROOT / "tests" / "data" / "quokka"
LEARN = ("task=segmentation", "trainer.progress_bar=false")  # the task's own recipe: 12 epochs of dataset=shapes


# -- the arithmetic, in-process ------------------------------------------------------------------------------
def test_miou_is_the_dataset_level_jaccard_of_torchmetrics_and_absent_classes_are_absent():
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (6, 20, 20), generator=generator)  # class 4 never appears, nor is predicted
    predicted = torch.where(torch.rand(6, 20, 20, generator=generator) < 0.7, truth,
                            torch.randint(0, 4, (6, 20, 20), generator=generator))
    truth[:, :3] = 255  # void rows weigh nothing
    matrix = MulticlassConfusionMatrix(5, ignore_index=255)(predicted, truth)
    values = confusion_values(matrix, ["bg", "a", "b", "c", "never"])
    per_class = MulticlassJaccardIndex(5, ignore_index=255, average=None)(predicted, truth)
    assert values["miou"] == pytest.approx(MulticlassJaccardIndex(5, ignore_index=255)(predicted, truth).item(), abs=1e-6)
    assert [values[f"iou/{c}"] for c in ("bg", "a", "b", "c")] == pytest.approx(per_class[:4].tolist(), abs=1e-6)
    assert "iou/never" not in values and per_class[4] == 0  # torchmetrics says 0; we say absent
    keep = truth != 255
    assert values["pixel_accuracy"] == pytest.approx((predicted[keep] == truth[keep]).float().mean().item())
    recalls = [((predicted == c) & (truth == c)).sum() / (truth == c).sum() for c in range(4)]
    assert values["mean_accuracy"] == pytest.approx(torch.stack(recalls).mean().item())


def test_predicted_masks_come_back_at_each_images_own_size_as_palette_pngs(tmp_path):
    from nf_trainer.tasks.segmentation import Segmentation

    task = Segmentation(["background", "a", "b"], palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]])
    probabilities = torch.zeros(2, 3, 8, 8)
    probabilities[:, 1, :, :4] = 1  # class a on the left half, b on the right half of the model's input
    probabilities[:, 2, :, 4:] = 1
    masks = task.unbatch(probabilities, [(8, 8), (8, 8)], [(16, 24), (5, 7)])
    assert [tuple(m.shape) for m in masks] == [(16, 24), (5, 7)] and masks[0].dtype == torch.uint8
    assert (masks[0][:, :12] == 1).all() and (masks[0][:, 12:] == 2).all()
    written = task.write_predictions(tmp_path / "p.csv", [Path("x/one.jpg"), Path("y/one.jpg")], masks,
                                     [(16, 24), (5, 7)], None)
    with Image.open(written[1]) as first, Image.open(written[2]) as second:
        assert first.mode == "P" and first.size == (24, 16) and second.size == (7, 5)  # two files of one name: both kept
        assert np.array_equal(np.asarray(first), masks[0].numpy()) and first.getpalette()[3:6] == [255, 0, 0]
    answer = task.answer(masks, [(16, 24), (5, 7)])
    assert answer["class_names"] == [["a", "b"], ["a", "b"]] and answer["height"] == [16, 5]


def test_shapes_masks_name_background_first_and_mark_occluded_remnants_void():
    data = shapes(task="segmentation", train_size=60, val_size=10)
    assert data.classes == ["background", "circle", "square", "triangle"]
    seen = set()
    for i in range(60):
        image, mask = data.train[i]
        assert mask.shape == image.shape[-2:] and mask.dtype == torch.uint8
        seen |= set(mask.unique().tolist())
        scene = data.train.scene(i)
        for visible, label in zip(scene.masks, scene.labels):
            assert (mask[torch.from_numpy(visible)] == label + 1).all()
    assert seen == {0, 1, 2, 3, 255}
    control = shapes(task="segmentation", train_size=60, val_size=10, shuffle_labels=True)
    changed = sum(not torch.equal(data.train[i][1], control.train[i][1]) for i in range(60))
    assert changed > 20 and all(torch.equal(data.train[i][1] > 0, control.train[i][1] > 0) for i in range(60))


# -- mask folders: reading and bad input ------------------------------------------------------------------------
def pair_folder(root: Path, count: int = 3, size=(24, 16), colours: bool = False) -> Path:
    """`count` images with index masks (0 left half, 1 right half, a void line), optionally as RGB colours."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        w, h = size
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / "images" / f"p{i}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[:, w // 2:] = 1
        mask[0] = 255
        if colours:
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[mask == 1] = (255, 0, 0)
            rgb[mask == 255] = (224, 224, 192)
            Image.fromarray(rgb).save(root / "masks" / f"p{i}.png")
        else:
            write_index_png(mask, root / "masks" / f"p{i}.png")
    return root


def test_mask_folder_reads_index_and_colour_masks_alike(tmp_path):
    index = mask_folder(pair_folder(tmp_path / "index"), classes=["background", "thing"], val_fraction=0.3)
    coloured = mask_folder(pair_folder(tmp_path / "rgb", colours=True), classes=["background", "thing"],
                           palette=[[0, 0, 0], [255, 0, 0]], void_colour=[224, 224, 192], val_fraction=0.3)
    assert len(index.train) == 2 and len(index.eval["index"]) == 1 and index.image_size == 0
    for i in range(2):
        assert torch.equal(index.train[i][1], coloured.train[i][1])
    assert set(index.train[0][1].unique().tolist()) == {0, 1, 255}
    described = mask_folder(QUOKKA, val=str(QUOKKA))
    assert described.classes == ["background", "quokka"] and described.in_channels == 3


@pytest.mark.parametrize("spoil,needle", [
    ("size", "is 12x16 but its image"),
    ("value", "has the value 7, neither a class index (0..1: 2 classes) nor 255"),
    ("missing", "has no mask"),
    ("jpeg", "is a JPEG: lossy compression"),
    ("colour", "has the colour [0, 255, 0], which no class has in dataset.palette"),
])
def test_a_bad_mask_folder_fails_in_one_line_naming_the_file(tmp_path, spoil, needle):
    root = pair_folder(tmp_path / "pairs", colours=spoil == "colour")
    mask = root / "masks" / "p1.png"
    if spoil == "size":
        write_index_png(np.zeros((16, 12), np.uint8), mask)
    elif spoil == "value":
        write_index_png(np.full((16, 24), 7, np.uint8), mask)
    elif spoil == "missing":
        mask.unlink()
    elif spoil == "jpeg":
        mask.unlink()
        Image.fromarray(np.zeros((16, 24), np.uint8)).save(root / "masks" / "p1.jpg")
    elif spoil == "colour":
        Image.fromarray(np.full((16, 24, 3), (0, 255, 0), np.uint8)).save(mask)
    palette = {"palette": [[0, 0, 0], [255, 0, 0]], "void_colour": [224, 224, 192]} if spoil == "colour" else {}
    with pytest.raises(NfTrainerError) as err:
        mask_folder(root, classes=["background", "thing"], val_fraction=0.3, **palette)
    message = str(err.value)
    assert needle in message and "p1" in message and "\n" not in message, message


def test_bad_input_through_main_is_one_line_and_leaves_no_run(out, tmp_path):
    line = fails_in_one_line("task=segmentation", "model=resnet18", out=out)
    assert line.startswith("task=segmentation with model=resnet18: it serves classification") and "model=tiny_unet" in line
    root = pair_folder(tmp_path / "pairs")
    write_index_png(np.full((16, 24), 9, np.uint8), root / "masks" / "p2.png")
    line = fails_in_one_line("task=segmentation", "dataset=mask_folder", f"dataset.root={root}",
                             "dataset.classes=[background,thing]", "dataset.val_fraction=0.3", out=out)
    assert "p2.png has the value 9" in line
    assert runs(out) == []  # refused before any run starts


# -- Pascal VOC: dataset=voc_seg ---------------------------------------------------------------------------------------
VOC_TRAIN, VOC_VAL = ["2007_000032", "2007_000039", "2008_000002", "2008_000003"], ["2007_000033", "2009_000001"]


def voc_tree(root: Path) -> dict[str, np.ndarray]:
    """A small VOC2012 layout as VOC ships it: JPEGImages/<id>.jpg, SegmentationClass/<id>.png (mode P with VOC's
    palette, the pixel values class indices, a 255 band on each object's boundary), ImageSets/Segmentation/train.txt
    and val.txt. The scenes are generated shapes, their classes 1..3 standing for VOC's aeroplane, bicycle, bird;
    every other image cropped to 64x48 (VOC's images have their own sizes). Returns each id's written mask."""
    from nf_trainer.tasks.segmentation import bit_colour

    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    scenes = shapes(task="segmentation", train_size=len(VOC_TRAIN + VOC_VAL), val_size=1, background_only=0)
    palette = [v for index in range(256) for v in bit_colour(index)]  # VOC's colour map, 255 = (224, 224, 192)
    written = {}
    for i, stem in enumerate(VOC_TRAIN + VOC_VAL):
        image, mask = (t.numpy() for t in scenes.train[i])
        image, mask = image.transpose(1, 2, 0), mask.copy()
        if i % 2:
            image, mask = image[:48], mask[:48]
        edge = np.zeros_like(mask, bool)  # VOC's void band where two labels meet
        edge[1:] |= mask[1:] != mask[:-1]
        edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
        mask[edge] = 255
        Image.fromarray(np.ascontiguousarray(image)).save(root / "JPEGImages" / f"{stem}.jpg", quality=90)
        picture = Image.fromarray(mask, mode="P")
        picture.putpalette(palette)
        picture.save(root / "SegmentationClass" / f"{stem}.png")
        written[stem] = mask
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{s}\n" for s in VOC_TRAIN))
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{s}\n" for s in VOC_VAL))
    return written


def test_voc_seg_reads_palette_masks_as_class_indices_with_the_void_border_kept(tmp_path):
    from nf_trainer.dataset.masks import VOC_CLASSES, voc_seg

    written = voc_tree(tmp_path / "VOC2012")
    with Image.open(tmp_path / "VOC2012" / "SegmentationClass" / f"{VOC_TRAIN[0]}.png") as mask:
        assert mask.mode == "P" and mask.getpalette()[3 * 255:3 * 256] == [224, 224, 192]  # as VOC's own files
    data = voc_seg(tmp_path / "VOC2012")
    assert data.classes == VOC_CLASSES and len(data.classes) == 21 and data.in_channels == 3 and data.image_size == 0
    assert len(data.train) == 4 and list(data.eval) == ["voc"] and len(data.eval["voc"]) == 2
    seen = set()
    for dataset, stems in ((data.train, VOC_TRAIN), (data.eval["voc"], VOC_VAL)):
        for i, stem in enumerate(stems):
            image, mask = dataset[i]
            assert image.dtype == torch.uint8 and mask.dtype == torch.uint8 and image.shape[0] == 3
            assert tuple(image.shape[-2:]) == tuple(mask.shape) == written[stem].shape
            assert np.array_equal(mask.numpy(), written[stem])  # the indices, not the palette's colours
            seen |= set(mask.unique().tolist())
    assert {0, 255} < seen and seen <= {0, 1, 2, 3, 255}
    assert {(48, 64), (64, 64)} == {tuple(m.shape) for m in written.values()}


@pytest.mark.parametrize("spoil,needle", [
    ("mask", "the image {root}/JPEGImages/2007_000039.jpg has no mask"),
    ("image", "the id 2007_000039 in {root}/ImageSets/Segmentation/train.txt has no image"),
    ("value", "voc (train): mask {root}/SegmentationClass/2007_000039.png has the value 21, neither a class index "
              "(0..20: 21 classes) nor 255"),
    ("split", "no {root}/ImageSets/Segmentation/val.txt"),
])
def test_a_bad_voc_tree_fails_in_one_line(tmp_path, spoil, needle):
    from nf_trainer.dataset.masks import voc_seg

    root = tmp_path / "VOC2012"
    voc_tree(root)
    if spoil == "mask":
        (root / "SegmentationClass" / "2007_000039.png").unlink()
    elif spoil == "image":
        (root / "JPEGImages" / "2007_000039.jpg").unlink()
    elif spoil == "value":
        write_index_png(np.full((48, 64), 21, np.uint8), root / "SegmentationClass" / "2007_000039.png")
    elif spoil == "split":
        (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(NfTrainerError) as err:
        voc_seg(root)
    message = str(err.value)
    assert needle.format(root=root) in message and "\n" not in message, message


def test_a_voc_tree_trains_and_evaluates_through_main_and_a_missing_mask_is_one_line(tmp_path, out):
    root = tmp_path / "VOC2012"
    voc_tree(root)
    run_here("task=segmentation", "dataset=voc_seg", f"dataset.root={root}", "transforms=segmentation_resize",
             "transforms.size=64", "loader.batch_size=2", "loader.eval_batch_size=2", "trainer.max_epochs=1",
             "trainer.pictures=2", "trainer.progress_bar=false", out=out)
    run = only_run(out)
    assert run.info.status == "FINISHED" and run.data.params["data.num_classes"] == "21"
    assert 0 <= run.data.metrics["val/voc/miou"] <= 1 and run.data.metrics["objective"] == run.data.metrics["val/voc/miou"]
    assert "val/voc/iou/background" in run.data.metrics  # a class in the truth
    (root / "SegmentationClass" / f"{VOC_VAL[1]}.png").unlink()
    line = fails_in_one_line("task=segmentation", "dataset=voc_seg", f"dataset.root={root}", out=out)
    assert line.startswith("dataset=voc_seg: the image") and f"{VOC_VAL[1]}.png" in line and "\n" not in line, line
    assert len(runs(out)) == 1  # refused before a run starts


@pytest.mark.parametrize("model", ["tiny_unet", pytest.param("lraspp_mobilenet_v3_large", marks=pytest.mark.slow)])
def test_the_onnx_export_gives_the_checkpoints_logits_at_any_batch_and_image_size(tmp_path, out, model):
    """A one-epoch run on a VOC tree (files of mixed sizes: the checkpoint records no image size), then `mode=export
    export=[onnx]`: onnxruntime answers the model's main logits (torchvision's dict's "out") for a batch of two
    64 px images and for an image at its own 64x48 size."""
    from omegaconf import OmegaConf

    from nf_trainer.dataset.masks import voc_seg
    from nf_trainer.model.build import build_model, for_export
    from nf_trainer.tasks.segmentation import logits
    from nf_trainer.transforms import build_pipeline

    if not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript")):
        pytest.skip("the onnx extra is not installed")
    ort = pytest.importorskip("onnxruntime")
    root = tmp_path / "VOC2012"
    voc_tree(root)
    run_here("task=segmentation", f"model={model}", "dataset=voc_seg", f"dataset.root={root}",
             "transforms=segmentation_resize", "transforms.size=64", "loader.batch_size=2", "loader.eval_batch_size=2",
             "trainer.max_epochs=1", "trainer.pictures=0", "trainer.progress_bar=false", out=out)
    ckpt_path = Path(only_run(out).data.tags["output_dir"]) / "best-miou.pt"
    run_here("mode=export", f"ckpt={ckpt_path}", "export=[onnx]", out=out)
    (exported,) = [r for r in runs(out) if r.data.tags["mode"] == "export"]
    session = ort.InferenceSession(str(Path(exported.data.tags["output_dir"]) / "export" / "model.onnx"))
    assert [o.name for o in session.get_inputs()] == ["images"] and [o.name for o in session.get_outputs()] == ["logits"]

    ckpt = torch.load(ckpt_path, weights_only=True)
    cfg = OmegaConf.create(ckpt["config"])
    net = build_model(cfg.model, dict(ckpt["data"]))
    net.load_state_dict(ckpt["model"])
    net = for_export(net)
    steps = OmegaConf.to_container(cfg.transforms, resolve=True)["eval"]
    resize, plain = build_pipeline(steps), build_pipeline(steps[1:])  # steps[0]: the Resize to 64 x 64
    square = voc_seg(root, eval_transform=resize).eval["voc"]
    own = voc_seg(root, eval_transform=plain).eval["voc"][1][0][None]  # 2009_000001: 64 wide, 48 high
    assert own.shape == (1, 3, 48, 64)
    for images in (torch.stack([square[0][0], square[1][0]]), own):
        (found,) = session.run(None, {"images": images.numpy()})
        with torch.inference_mode():
            expected = logits(net(images)).numpy()
        assert found.shape == expected.shape == (len(images), 21, *images.shape[-2:])
        assert np.allclose(found, expected, atol=1e-4), np.abs(found - expected).max()
        assert (found.argmax(1) == expected.argmax(1)).mean() > 0.999  # the mask (ties of equal logits aside)


# -- training end to end -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """`python main.py task=segmentation` as a new user runs it (dataset=shapes, model=tiny_unet), with its model
    logged and a TorchScript export: (out, run, output dir, stdout)."""
    out = tmp_path_factory.mktemp("segmenter") / "outputs"
    out.mkdir()
    result = run_main(*LEARN, "mlflow.log_model=true", "export=[torchscript]", out=out, timeout=1800)
    run = only_run(out)
    return out, run, Path(run.data.tags["output_dir"]), result.stdout + result.stderr


def best(out, run, key: str) -> float:
    return max(m.value for m in metric_history(out, run.info.run_id, key))


@pytest.mark.slow  # two trainings of the tiny UNet
def test_the_tiny_unet_learns_shapes_masks_far_above_shuffled_masks(segmenter, tmp_path):
    out, run, _, _ = segmenter
    control = tmp_path / "control"
    control.mkdir()
    run_here(*LEARN, "dataset.shuffle_labels=true", "trainer.pictures=0", out=control)
    learned, shuffled = best(out, run, "val/shapes/miou"), best(control, only_run(control), "val/shapes/miou")
    # shuffled masks still teach where the shapes are (background vs object), not which shape
    assert learned >= 0.6 and learned >= shuffled + 0.2, (learned, shuffled)


@pytest.mark.slow
def test_a_segmentation_run_logs_miou_per_class_iou_overlays_and_reports(segmenter):
    out, run, out_dir, log = segmenter
    epochs = int(run.data.params["trainer.max_epochs"])
    steps = list(range(1, epochs + 1))
    for key in ("train/loss", "train/miou", "val/shapes/loss", "val/shapes/miou", "val/shapes/pixel_accuracy",
                "val/shapes/mean_accuracy", "val/shapes/iou/background", "val/shapes/iou/circle",
                "val/shapes/iou/square", "val/shapes/iou/triangle"):
        assert [m.step for m in metric_history(out, run.info.run_id, key)] == steps, key
    assert run.data.metrics["objective"] == best(out, run, "val/shapes/miou")
    assert f"best val/shapes/miou: {run.data.metrics['objective']:#.4g} at epoch" in log
    assert f"best checkpoint: {out_dir}/best-miou.pt" in log
    assert run.data.params["data.num_classes"] == "4"
    artifacts = {a.path for a in client(out).list_artifacts(run.info.run_id, "reports/shapes")}
    assert {"reports/shapes/per_class_iou.csv", "reports/shapes/per_class_iou.png", "reports/shapes/confusion_matrix.csv",
            "reports/shapes/confusion_matrix.png"} <= artifacts
    table = Path(client(out).download_artifacts(run.info.run_id, "reports/shapes/per_class_iou.csv", str(out / "dl")))
    rows = list(csv.DictReader(table.open()))
    assert [r["class"] for r in rows] == ["background", "circle", "square", "triangle"]
    assert all(0 < float(r["iou"]) <= 1 for r in rows)
    pictures = [a.path for a in client(out).list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert len(pictures) >= 2  # by step (pictures never take more than ~2% of the training)
    with Image.open(client(out).download_artifacts(run.info.run_id, pictures[0], str(out / "dl"))) as picture:
        assert picture.mode == "RGB" and picture.width > 3 * 128


@pytest.mark.slow
def test_eval_mode_measures_the_checkpoint_as_training_did(segmenter):
    out, run, out_dir, _ = segmenter
    ckpt = torch.load(out_dir / "best-miou.pt", weights_only=True)
    run_here("mode=eval", f"ckpt={out_dir}/best-miou.pt", out=out)
    evaluated = [r for r in runs(out) if r.data.tags["mode"] == "eval"][0]
    assert evaluated.data.metrics["val/shapes/miou"] == pytest.approx(ckpt["metrics"]["val/shapes/miou"], abs=1e-6)


def shapes_files(folder: Path, count: int, scale: int) -> list[Path]:
    folder.mkdir(parents=True)
    val = next(iter(shapes(task="segmentation").eval.values()))
    files = []
    for i in range(count):
        image = Image.fromarray(val[i][0].permute(1, 2, 0).numpy())
        files.append(folder / f"shape_{i:02d}.png")
        image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(files[-1])
    return files


@pytest.mark.slow
def test_predict_writes_palette_pngs_at_each_images_own_size_and_the_logged_model_answers_masks(segmenter, tmp_path):
    import mlflow

    out, run, out_dir, _ = segmenter
    files = shapes_files(tmp_path / "x1", 4, 1)
    run_here("mode=predict", f"ckpt={out_dir}/best-miou.pt", f"predict.input={tmp_path / 'x1'}",
             f"predict.output={tmp_path / 'x1.csv'}", out=out)
    rows = list(csv.DictReader((tmp_path / "x1.csv").open()))
    assert [Path(r["image"]).name for r in rows] == [f.name for f in files]
    val = next(iter(shapes(task="segmentation").eval.values()))
    agree = []
    for i, row in enumerate(rows):
        with Image.open(row["mask"]) as mask:
            assert mask.mode == "P" and mask.size == (64, 64)
            predicted = torch.from_numpy(np.asarray(mask))
        truth = val[i][1]
        keep = truth != 255
        agree.append((predicted[keep] == truth[keep]).float().mean().item())
    assert np.mean(agree) > 0.8  # the masks are the model's answer, not noise
    with environment(MLFLOW_TRACKING_URI=None):
        mlflow.set_tracking_uri(f"sqlite:///{out}/mlflow.db")
        served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    answers = served.predict([base64.b64encode(f.read_bytes()).decode() for f in files])
    assert list(answers.columns) == ["mask", "class_names", "height", "width"]
    for row, answer, names in zip(rows, answers["mask"], answers["class_names"]):
        with Image.open(io.BytesIO(base64.b64decode(answer))) as served_mask, Image.open(row["mask"]) as written:
            assert np.array_equal(np.asarray(served_mask), np.asarray(written))
        assert ";".join(names) == row["classes"]
    scripted = torch.jit.load(str(out_dir / "export" / "model.torchscript.pt"))
    assert scripted(torch.rand(2, 3, 64, 64)).shape == (2, 4, 64, 64)


@pytest.mark.slow
def test_a_real_image_and_mask_pair_trains_through_mask_folder(tmp_path):
    """imgaug's quokka photograph and its outline polygon as a mask (tests/data/quokka), trained and evaluated on
    itself: the plumbing of a real file pair, and a model that fits it."""
    out = tmp_path / "outputs"
    out.mkdir()
    run_here("task=segmentation", "dataset=mask_folder", f"dataset.root={QUOKKA}", f"dataset.val={QUOKKA}",
             "transforms=segmentation_resize", "transforms.size=96", "loader.batch_size=1", "loader.eval_batch_size=1",
             "trainer.max_epochs=30", "trainer.early_stopping.enabled=false", "trainer.pictures=1",
             "trainer.progress_bar=false", out=out)
    run = only_run(out)
    history = [m.value for m in metric_history(out, run.info.run_id, "val/quokka/miou")]
    assert history[-1] > max(0.6, history[0]), history
    assert "val/quokka/iou/quokka" in run.data.metrics


# -- model options: both output forms, offline by default -----------------------------------------------------------
@pytest.mark.parametrize("model", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "smp", "tiny_unet"])
def test_every_model_option_trains_a_step_offline_in_either_output_form(model):
    from nf_trainer.model.build import build_model
    from nf_trainer.tasks import build_task
    from tests.conftest import compose_cfg

    cfg = compose_cfg("task=segmentation", f"model={model}", "loss=dice")
    facts = {"num_classes": 3, "in_channels": 3, "image_size": 64}
    task = build_task(cfg, ["background", "a", "b"], facts)
    net = build_model(cfg.model, task.model_facts(facts))
    images, masks = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    masks[:, :4] = 255
    step = task.train_step(net.train(), (images, masks))
    step.loss.backward()
    assert torch.isfinite(step.loss) and step.outputs.shape == (2, 64, 64)
    assert sorted(step.parts) == (["aux", "out"] if model == "deeplabv3_mobilenet_v3_large" else [])
    assert task.predict(net.eval(), images).shape == (2, 3, 64, 64)


def test_pretrained_backbones_are_opt_in_and_fail_offline_in_one_line(tmp_path):
    from nf_trainer.model.segmentation import torchvision_segmenter

    with environment(TORCH_HOME=str(tmp_path)), pytest.raises(NfTrainerError) as err:
        torchvision_segmenter("lraspp_mobilenet_v3_large", 3, pretrained=True)
    message = str(err.value)
    assert message.startswith("cannot download the pretrained weights of lraspp_mobilenet_v3_large's backbone")
    assert "model.pretrained=false" in message and "\n" not in message
    with pytest.raises(NfTrainerError, match="has no auxiliary head"):
        torchvision_segmenter("lraspp_mobilenet_v3_large", 3, aux_loss=True)
