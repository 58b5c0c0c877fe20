"""`task=detection`: boxes with class names and scores.

A sample is (image, {"boxes": XYXY pixels, "labels": class indices 0..K-1}) and a batch lists them: images
differ in size and in their number of boxes. The model follows torchvision's contract (its losses in train
mode, its predictions in eval mode, boxes in the pixels of its input), and counts the background as class 0
where `background` is true (torchvision's detectors): the task shifts the labels by one on the way in and out,
so the data, the metrics' names and every output keep the dataset's classes.
"""
from __future__ import annotations

import csv
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.metric_keys import per_class_key
from nf_trainer.tasks.base import Task, move
from nf_trainer.tasks.detection_reports import write_reports
from nf_trainer.tasks.drawing import DARK, box_picture, captioned, grid, resized, tile_scale, viewable
from nf_trainer.trainer.step import Step

# MeanAveragePrecision's values that are vectors or ids, not metrics of their own: turned into per-class AP
PER_CLASS = ("map_per_class", "mar_100_per_class", "classes")
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # its INFO lines (every COCO table) would flood the log
SCALARS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100",
           "mar_small", "mar_medium", "mar_large")


class Detection(Task):
    has_val_loss = False  # torchvision's detectors give losses only in train mode: no val loss, and none is faked
    shown = ("loss", "map", "map_50")
    serialization_format = "pickle"  # torch.export cannot trace a detector (its number of boxes depends on the data)
    batched_updates = False  # predictions are lists of boxes: updated batch by batch

    def __init__(self, classes, loss=None, batch_transform=None, name: str = "detection", monitor: str = "map",
                 score_threshold: float = 0.3, background: bool = True):
        if loss is not None:
            raise NfTrainerError("task=detection: the detection model computes its own losses; leave out the loss "
                                 "group (loss=null)")
        if batch_transform is not None:
            raise NfTrainerError("task=detection: MixUp/CutMix mix whole images and labels, not boxes; set "
                                 "transforms.mixup_alpha=0 and transforms.cutmix_alpha=0")
        super().__init__(classes, None, None, name, monitor)
        self.score_threshold = score_threshold  # the boxes shown in pictures and answered by the served model
        self.offset = 1 if background else 0  # the model's label of class index 0

    # -- the data and the model's shape --------------------------------------------------------------------
    def collate(self, samples: list) -> tuple:
        images, targets = zip(*samples)
        return list(images), list(targets)

    def to_device(self, batch: tuple, device: torch.device, channels_last: bool = False) -> tuple:
        images, targets = batch
        return [image.as_subclass(torch.Tensor).to(device, non_blocking=True) for image in images], move(targets, device)

    def model_facts(self, facts: dict) -> dict:
        return {**facts, "num_classes": facts["num_classes"] + self.offset}

    def for_model(self, target: dict) -> dict:
        return {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"] + self.offset}

    # -- steps ---------------------------------------------------------------------------------------------
    def train_step(self, model, batch) -> Step:
        images, targets = batch
        losses = model(images, [self.for_model(t) for t in targets])
        parts = {name.removeprefix("loss_"): value for name, value in losses.items()}
        return Step(sum(losses.values()), len(images), parts=parts)

    def eval_step(self, model, batch) -> Step:
        images, targets = batch
        return Step(None, len(images), model(images), [self.for_model(t) for t in targets])

    def predict(self, model, inputs) -> list[dict]:
        """Per image {"boxes" (XYXY, in the input's pixels), "scores", "labels" (class indices)}."""
        return [{"boxes": p["boxes"].float(), "scores": p["scores"].float(), "labels": p["labels"] - self.offset}
                for p in model(inputs)]

    def unbatch(self, predictions, input_sizes, sizes) -> list[dict]:
        """Boxes from the pixels of the inputs to those of each image's own size."""
        scaled = []
        for found, (in_h, in_w), (h, w) in zip(predictions, input_sizes, sizes):
            factor = torch.tensor([w / in_w, h / in_h, w / in_w, h / in_h], device=found["boxes"].device)
            boxes = (found["boxes"] * factor).clamp(min=0)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(max=w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(max=h)
            scaled.append({**found, "boxes": boxes})
        return scaled

    # -- metrics -------------------------------------------------------------------------------------------
    def metric_names(self, node: DictConfig, train: bool = False) -> list[str]:
        if train:
            return ["loss"]
        return [*SCALARS, *(per_class_key("ap", name) for name in self.classes)]

    def values(self, computed: dict[str, torch.Tensor]) -> dict[str, float]:
        """The scalars that apply (-1, torchmetrics' "no such box": a size bucket without boxes, is left out) and
        the AP of every class with boxes in the set under `ap/<class name>`."""
        values = {name: v.item() for name, v in computed.items() if name not in PER_CLASS and v.numel() == 1}
        values = {name: v for name, v in values.items() if v != -1}
        if "classes" in computed:
            for label, ap in zip(computed["classes"].flatten().tolist(), computed["map_per_class"].flatten().tolist()):
                if ap != -1 and 0 <= label - self.offset < len(self.classes):
                    values[per_class_key("ap", self.classes[label - self.offset])] = ap
        return values

    # -- what the model does, shown and written --------------------------------------------------------------
    def draw(self, inputs, targets, predictions) -> np.ndarray:
        """Each image twice, side by side: its true boxes, and the predicted ones scoring `score_threshold` or more."""
        images = [viewable(image[None])[0] for image in inputs]
        tiles = []
        for image, truth, found in zip(images, targets, predictions):
            scale = tile_scale(*image.shape[-2:])
            picture = resized(image, scale)
            kept = found["scores"] >= self.score_threshold
            true_labels = [self.classes[i] for i in truth["labels"].tolist()]
            found_labels = [f"{self.classes[i]} {s:.2f}" for i, s in
                            zip(found["labels"][kept].tolist(), found["scores"][kept].tolist())]
            tiles += [captioned(box_picture(picture, truth["boxes"] * scale, truth["labels"], true_labels),
                                [(f"truth: {boxes(len(true_labels))}", DARK)]),
                      captioned(box_picture(picture, found["boxes"][kept] * scale, found["labels"][kept], found_labels),
                                [(f"predicted: {boxes(len(found_labels))} >= {self.score_threshold:g}", DARK)])]
        return grid(tiles, columns=4)

    def report(self, model, loader, device, limit_batches, folder: Path, title: str) -> None:
        write_reports(self, model, loader, device, limit_batches, folder, title)

    def write_predictions(self, output: Path, files, predictions, sizes, options) -> list[Path]:
        """`output` (CSV): image, class, score, x1, y1, x2, y2 in the image's own pixels, one row per box; beside it
        (.json) the same as COCO results (`bbox` x, y, width, height; `category_id` the class index + 1, with
        `category_name`; `image_id` the file's index, with `file_name`)."""
        output.parent.mkdir(parents=True, exist_ok=True)
        results = []
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "class", "score", "x1", "y1", "x2", "y2"])
            for index, (file, found) in enumerate(zip(files, predictions)):
                for box, label, score in zip(found["boxes"].tolist(), found["labels"].tolist(), found["scores"].tolist()):
                    writer.writerow([str(file), self.classes[label], f"{score:.6f}", *(f"{v:.2f}" for v in box)])
                    x1, y1, x2, y2 = box
                    results.append({"image_id": index, "file_name": str(file), "category_id": label + 1,
                                    "category_name": self.classes[label], "bbox": [round(v, 2) for v in
                                                                                   (x1, y1, x2 - x1, y2 - y1)],
                                    "score": round(score, 6)})
        coco = output.with_suffix(".json")
        coco.write_text(json.dumps(results))
        return [output, coco]

    def answer(self, predictions, sizes) -> dict[str, list]:
        """Per image: `boxes` ([x1, y1, x2, y2] in its own pixels), `class_names`, `scores` (the boxes scoring
        `score_threshold` or more)."""
        kept = [p["scores"] >= self.score_threshold for p in predictions]
        return {"boxes": [p["boxes"][k].tolist() for p, k in zip(predictions, kept)],
                "class_names": [[self.classes[i] for i in p["labels"][k].tolist()] for p, k in zip(predictions, kept)],
                "scores": [p["scores"][k].tolist() for p, k in zip(predictions, kept)]}

    def example_input(self, facts: dict, where: Path):
        size = facts.get("image_size") or 320
        return [torch.rand(facts["in_channels"], size, size) for _ in range(2)]

    def torchscript(self, model, example):
        return torch.jit.script(model)  # a detector's control flow depends on its input: traced, it would not hold

    def onnx(self, model, example, path: Path) -> None:
        """One image (3, H, W) in, `boxes`, `labels`, `scores` out. torch.export cannot trace a detector (its number
        of boxes depends on the data), so this is the TorchScript-based exporter, as torchvision's own tests use."""
        with warnings.catch_warnings():  # that exporter is deprecated, and warns of every traced shape
            warnings.simplefilter("ignore")
            torch.onnx.export(model, ([example[0]],), path, dynamo=False, opset_version=17, input_names=["images"],
                              output_names=["boxes", "labels", "scores"],
                              dynamic_axes={"images": [1, 2], "boxes": [0], "labels": [0], "scores": [0]})


def boxes(count: int) -> str:
    return f"{count} box" if count == 1 else f"{count} boxes"
