"""`task=classification`: one class per image. The model gives logits; the loss is the `loss` group's
(cross-entropy), the metrics torchmetrics' Multiclass* of the `metrics` group, MixUp/CutMix mix the train
batches; predictions are softmax probabilities."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import ImageDraw

from nf_trainer.tasks.base import Task
from nf_trainer.tasks.classification_reports import write_reports
from nf_trainer.tasks.drawing import DARK, GREEN, LINE, RED, captioned, resized, sheet, tile_scale, viewable, write
from nf_trainer.trainer.evaluation import predictions
from nf_trainer.trainer.guard import check_labels
from nf_trainer.trainer.step import Step


class Classification(Task):
    shown = ("loss", "accuracy", "f1")

    def __init__(self, classes, loss=None, batch_transform=None, name: str = "classification", monitor: str = "loss"):
        super().__init__(classes, loss, batch_transform, name, monitor)

    def metric_kwargs(self) -> dict:
        return {"num_classes": len(self.classes)}

    def check_data(self, splits) -> None:
        check_labels(splits)

    def train_step(self, model, batch) -> Step:
        images, targets = batch
        inputs, loss_targets = self.batch_transform(images, targets) if self.batch_transform else (images, targets)
        logits = model(inputs)
        return Step(self.loss_fn(logits, loss_targets), targets.shape[0], logits.detach(), targets)

    def eval_step(self, model, batch) -> Step:
        images, targets = batch
        logits = model(images)
        return Step(self.loss_fn(logits, targets), targets.shape[0], logits, targets)

    def predict(self, model, inputs) -> torch.Tensor:
        """Class probabilities (N, K)."""
        return model(inputs).float().softmax(dim=1)

    def draw(self, inputs, targets, predictions) -> np.ndarray:
        """Each image with its true and predicted class (and probability), the mistakes first."""
        confidence, predicted = predictions.max(dim=1)
        truth, predicted, confidence = targets.tolist(), predicted.tolist(), confidence.tolist()
        order = sorted(range(len(truth)), key=lambda i: truth[i] == predicted[i])  # stable: mistakes, then the rest
        tiles = self.truth_tiles(inputs, truth)
        page, corners = sheet([tiles[i] for i in order])
        draw = ImageDraw.Draw(page)
        for i, (x, y) in zip(order, corners):
            right = truth[i] == predicted[i]
            write(draw, (x + 2, y + tiles[i].height - LINE - 2), f"pred {self.classes[predicted[i]]} {confidence[i]:.2f}",
                  GREEN if right else RED, tiles[i].width - 4)
        return np.asarray(page)

    def truth_tiles(self, inputs, truth: list[int]) -> list:
        """Each image with its true class and room for the prediction: drawn once for the fixed images of a run (the
        pictures come at every evaluation, and on small models drawing them anew took ~10% of an epoch)."""
        if getattr(self, "_tiles", (None,))[0] is not inputs:
            images = viewable(inputs)
            scale = tile_scale(*images.shape[-2:])
            width = max(int(images.shape[-1] * scale), 120)
            self._tiles = (inputs, [captioned(resized(image, scale), [(f"true {self.classes[t]}", DARK)], width, room=1)
                                    for image, t in zip(images, truth)])
        return self._tiles[1]

    def report(self, model, loader, device, limit_batches, folder: Path, title: str) -> None:
        found, truths = predictions(self, model, loader, device, limit_batches)
        predicted = torch.cat([p.argmax(dim=1) for p in found]).cpu().numpy()
        write_reports(torch.cat(truths).cpu().numpy(), predicted, self.classes, folder, title)

    def write_predictions(self, output: Path, files, predictions, sizes, options) -> list[Path]:
        """A CSV: `path`, `predicted` (class name), `confidence` (its probability), then `top1_class,
        top1_confidence, ...` up to `predict.topk` (at most the number of classes)."""
        probabilities = torch.stack(list(predictions))
        k = min(options.topk, len(self.classes))
        confidences, indices = probabilities.topk(k, dim=1)
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            ranked = (f"top{i}_{what}" for i in range(1, k + 1) for what in ("class", "confidence"))
            writer.writerow(["path", "predicted", "confidence", *ranked])
            for file, confs, idxs in zip(files, confidences.tolist(), indices.tolist()):
                top = [value for c, i in zip(confs, idxs) for value in (self.classes[i], f"{c:.6f}")]
                writer.writerow([str(file), self.classes[idxs[0]], f"{confs[0]:.6f}", *top])
        return [output]

    def answer(self, predictions, sizes) -> dict[str, list]:
        """`class_name`, `class_index`, `probabilities` (one per class) of each image."""
        probabilities = torch.stack(list(predictions))
        indices = probabilities.argmax(dim=1).tolist()
        return {"class_name": [self.classes[i] for i in indices], "class_index": indices,
                "probabilities": probabilities.tolist()}
