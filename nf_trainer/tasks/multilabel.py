"""`task=multilabel`: any number of labels per image (none is a valid, all-negative sample).

A sample is (image, its labels): a multi-hot vector of the K labels (0/1, float), or a class index (a single-label
set read as one label per image). The model gives K logits; the loss is the `loss` group's (BCEWithLogitsLoss,
timm's asymmetric loss) on the multi-hot targets, which MixUp/CutMix mix as they are (lam * y + (1 - lam) * y');
predictions are per-label sigmoid probabilities.

A label is predicted where its probability reaches its decision threshold. `threshold: tuned` (the default)
chooses one per label after training, on the first eval set, to maximise that label's F1 (`after_training`):
the thresholds (`thresholds`, the task's state) go into the best checkpoint and the logged model, so `mode=eval`,
`mode=predict` and the served model decide with them. `threshold: 0.5` keeps one global threshold.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import ImageDraw
from torch.utils.data import default_collate

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.metric_keys import metric_key, per_class_key
from nf_trainer.tasks.base import Task
from nf_trainer.tasks.drawing import DARK, GREEN, LINE, RED, captioned, resized, sheet, tile_scale, viewable, write
from nf_trainer.tasks.multilabel_metrics import macro_f1, tune_thresholds
from nf_trainer.trainer.distributed import gather_across_ranks
from nf_trainer.trainer.evaluation import predictions
from nf_trainer.trainer.step import Step

log = logging.getLogger("nf_trainer")

TUNED = "tuned"


class Multilabel(Task):
    shown = ("loss", "map", "f1")

    def __init__(self, classes, loss=None, batch_transform=None, name: str = "multilabel", monitor: str = "map",
                 threshold: float | str = TUNED, thresholds: list[float] | None = None):
        super().__init__(classes, loss, batch_transform, name, monitor)
        if threshold != TUNED and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
            raise NfTrainerError(f"task.threshold must be '{TUNED}' (one per label, chosen after training to maximise "
                                 f"its F1) or a number between 0 and 1, not '{threshold}'")
        if thresholds is not None and len(thresholds) != len(self.classes):
            raise NfTrainerError(f"task.thresholds has {len(thresholds)} values but there are {len(self.classes)} labels")
        self.threshold = threshold
        self.thresholds = [float(t) for t in thresholds] if thresholds is not None else None
        self.warned = False

    # -- the data and the model's shape --------------------------------------------------------------------
    def collate(self, samples: list) -> tuple:
        """Images stacked; vector targets as float multi-hot (N, K); scalar ones (class indices, or what predict and
        serving put there) as they are: the steps read class indices as one label per image (`labels`)."""
        images = default_collate([sample[0] for sample in samples])
        targets = [sample[1] for sample in samples]
        return images, (default_collate(targets) if np.ndim(np.asarray(targets[0])) == 0 else self.multi_hot(targets))

    def labels(self, targets: torch.Tensor) -> torch.Tensor:
        """A batch's targets as float multi-hot (N, K): class indices (N,) one-hot."""
        if targets.dim() == 1:
            return torch.nn.functional.one_hot(targets.long(), len(self.classes)).float()
        return targets.float()

    def multi_hot(self, targets: list) -> torch.Tensor:
        first = torch.as_tensor(np.asarray(targets[0]))
        if first.dim() == 0:  # class indices (image_folder, ...): one label per image
            indices = torch.as_tensor([int(t) for t in targets])
            return torch.nn.functional.one_hot(indices, len(self.classes)).float()
        return torch.as_tensor(np.stack([np.asarray(t, dtype=np.float32) for t in targets]))

    def check_data(self, splits) -> None:
        """A target of K labels; the loss's pos_weight from the train labels' frequencies where it asks for them."""
        name, first = next(iter(splits.eval.items()))
        target = self.multi_hot([first[0][1]])
        if target.shape[-1] != len(self.classes):
            raise NfTrainerError(f"task=multilabel: a target of {name} has {target.shape[-1]} labels but the data names "
                                 f"{len(self.classes)} ({', '.join(self.classes)})")
        if getattr(self.loss_fn, "wants_label_counts", False):
            positives, count = label_counts(splits.train, self)
            self.loss_fn.fit_label_counts(positives, count)
            log.info("pos_weight from the train labels' frequencies: %s",
                     ", ".join(f"{c} {w:.3g}" for c, w in zip(self.classes, self.loss_fn.pos_weight.tolist())))

    # -- steps ---------------------------------------------------------------------------------------------
    def train_step(self, model, batch) -> Step:
        images, targets = batch[0], self.labels(batch[1])
        inputs, loss_targets = self.batch_transform(images, targets) if self.batch_transform else (images, targets)
        logits = model(inputs)
        return Step(self.loss_fn(logits, loss_targets), targets.shape[0], logits.detach(), targets.long())

    def eval_step(self, model, batch) -> Step:
        images, targets = batch[0], self.labels(batch[1])
        logits = model(images)
        return Step(self.loss_fn(logits, targets), targets.shape[0], logits, targets.long())

    def predict(self, model, inputs) -> torch.Tensor:
        """Per-label probabilities (N, K)."""
        return model(inputs).float().sigmoid()

    # -- decisions -----------------------------------------------------------------------------------------
    def cutoffs(self) -> torch.Tensor:
        """Each label's decision threshold: the tuned ones, else the global one (0.5 until tuned)."""
        if self.thresholds is not None:
            return torch.tensor(self.thresholds)
        return torch.full((len(self.classes),), 0.5 if self.threshold == TUNED else float(self.threshold))

    def decide(self, probabilities: torch.Tensor, answering: bool = False) -> torch.Tensor:
        """(N, K) bool: the labels predicted; `answering` (predict, serving): say it once when thresholds that should
        have been tuned are missing."""
        if answering and self.threshold == TUNED and self.thresholds is None and not self.warned:
            self.warned = True
            log.warning("task=multilabel: no tuned thresholds here (a checkpoint other than the best one, or trained "
                        "before them): every label decides at 0.5")
        return probabilities >= self.cutoffs().to(probabilities.device)

    def after_training(self, model, loaders: dict, device, limit_batches) -> dict[str, float]:
        """`threshold: tuned`: each label's threshold maximising its F1 on the first eval set; the macro F1 at those
        thresholds on every eval set (`val/<set>/f1_tuned`; the first is the set they were tuned on), and the thresholds
        (`val/<set>/threshold/<label>`)."""
        if self.threshold != TUNED or not loaders:
            return {}
        found = {name: probabilities_and_truth(self, model, loader, device, limit_batches)
                 for name, loader in loaders.items()}
        tuned_on = next(iter(found))
        self.thresholds = tune_thresholds(*found[tuned_on]).tolist()
        log.info("per-label thresholds tuned on %s: %s", tuned_on,
                 ", ".join(f"{c} {t:.2f}" for c, t in zip(self.classes, self.thresholds)))
        values = {metric_key("f1_tuned", name): macro_f1(probs >= self.cutoffs(), truth)
                  for name, (probs, truth) in found.items()}
        values |= {metric_key(per_class_key("threshold", c), tuned_on): t for c, t in zip(self.classes, self.thresholds)}
        return values

    def state(self) -> dict:
        return {"thresholds": self.thresholds} if self.thresholds is not None else {}

    # -- metrics -------------------------------------------------------------------------------------------
    def metric_kwargs(self) -> dict:
        return {"num_labels": len(self.classes)}

    def values(self, computed: dict[str, torch.Tensor]) -> dict[str, float]:
        """As the base task's, without the per-label values that are undefined (NaN: a label never positive in
        the set has no AP): absent, not 0."""
        return {key: value for key, value in super().values(computed).items() if not (np.isnan(value) and "/" in key)}

    # -- what the model does, shown and written --------------------------------------------------------------
    def names(self, row: torch.Tensor) -> list[str]:
        return [self.classes[i] for i in row.nonzero().flatten().tolist()]

    def draw(self, inputs, targets, predictions) -> np.ndarray:
        """Each image with its true and predicted label sets, the mistakes first."""
        truth, predicted = self.labels(targets.cpu()) > 0.5, self.decide(predictions.cpu())
        wrong = (truth != predicted).any(dim=1).tolist()
        order = sorted(range(len(wrong)), key=lambda i: not wrong[i])
        images = viewable(inputs)
        scale = tile_scale(*images.shape[-2:])
        width = max(int(images.shape[-1] * scale), 140)
        tiles = [captioned(resized(image, scale), [("true " + (" ".join(self.names(t)) or "-"), DARK)], width, room=1)
                 for image, t in zip(images, truth)]
        page, corners = sheet([tiles[i] for i in order])
        draw = ImageDraw.Draw(page)
        for i, (x, y) in zip(order, corners):
            write(draw, (x + 2, y + tiles[i].height - LINE - 2), "pred " + (" ".join(self.names(predicted[i])) or "-"),
                  RED if wrong[i] else GREEN, tiles[i].width - 4)
        return np.asarray(page)

    def report(self, model, loader, device, limit_batches, folder: Path, title: str) -> None:
        from nf_trainer.tasks.multilabel_reports import write_reports  # lazy: matplotlib, at a job's end only

        probabilities, truth = probabilities_and_truth(self, model, loader, device, limit_batches)
        write_reports(probabilities, truth, self.classes, self.cutoffs(), folder, title)

    def write_predictions(self, output: Path, files, predictions, sizes, options) -> list[Path]:
        """A CSV: `path`, `labels` (the predicted set, space-separated), then `prob_<label>` for every label."""
        probabilities = torch.stack(list(predictions)).cpu()
        chosen = self.decide(probabilities, answering=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "labels", *(f"prob_{c}" for c in self.classes)])
            for file, row, probs in zip(files, chosen, probabilities.tolist()):
                writer.writerow([str(file), " ".join(self.names(row)), *(f"{p:.6f}" for p in probs)])
        return [output]

    def answer(self, predictions, sizes) -> dict[str, list]:
        """`labels` (the predicted set) and `probabilities` (one per label, in label order) of each image."""
        probabilities = torch.stack(list(predictions)).cpu()
        return {"labels": [self.names(row) for row in self.decide(probabilities, answering=True)],
                "probabilities": probabilities.tolist()}


def probabilities_and_truth(task: Multilabel, model, loader, device, limit_batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (N, K), multi-hot truth (N, K) bool) over a loader, on the CPU; under torchrun over every rank's
    shard of the set (the thresholds are tuned on all of it, the same on every rank)."""
    found, truths = predictions(task, model, loader, device, limit_batches)
    return gather_across_ranks(torch.cat(found).cpu()), task.labels(gather_across_ranks(torch.cat(truths).cpu())) > 0.5


def label_counts(dataset, task: Multilabel) -> tuple[torch.Tensor, int]:
    """(positives per label, samples) of a dataset: from its `targets` where it has them, else read sample by sample."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    hot = task.multi_hot(list(targets))
    return hot.sum(0), len(hot)
