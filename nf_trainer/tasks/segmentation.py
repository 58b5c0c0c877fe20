"""`task=segmentation`: one class per pixel.

A sample is (image, mask): the mask an (H, W) index map, 0..K-1 the dataset's classes (their names in
`classes`, background included where the data has one) and 255 void, the value every mask format uses for
"no class asked for": it weighs nothing in the loss (the `loss` group's `ignore_index`) nor in the metrics.
The model gives logits (N, K, H, W) at the input's size, plain (segmentation-models-pytorch, the tiny UNet) or
as torchvision's dict {"out", "aux"}: the auxiliary head's loss is added with `aux_weight` where there is one.

The metrics are the dataset-level ones everyone reports: one confusion matrix over the whole set (the
`metrics` group's MulticlassConfusionMatrix with ignore_index 255), from which come the per-class IoU, mIoU
(the mean over the classes present in the truth or the predictions), pixel accuracy and mean class accuracy.
A class absent from both is absent, not 0: its `iou/<class>` is not logged.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.metric_keys import per_class_key
from nf_trainer.tasks.base import Task
from nf_trainer.tasks.drawing import DARK, captioned, grid, resized, tile_scale, viewable
from nf_trainer.tasks.segmentation_reports import write_reports
from nf_trainer.trainer.step import Step

VOID = 255  # the mask value of pixels no class is asked for
DERIVED = ("miou", "pixel_accuracy", "mean_accuracy")  # what one confusion matrix gives, besides iou/<class>
EXAMPLE_SIZE = 256  # the export's example side where the images kept their own sizes (transforms.size's default)


class Segmentation(Task):
    shown = ("loss", "miou", "pixel_accuracy")
    serialization_format = "pickle"  # torchvision's models answer a dict, which torch.export's MLflow signature cannot hold
    onnx_dynamic = {0: "batch", 2: "height", 3: "width"}

    def __init__(self, classes, loss=None, batch_transform=None, name: str = "segmentation", monitor: str = "miou",
                 aux_weight: float = 0.5, palette=None, alpha: float = 0.6):
        if batch_transform is not None:
            raise NfTrainerError("task=segmentation: MixUp/CutMix mix whole images and labels, not masks; set "
                                 "transforms.mixup_alpha=0 and transforms.cutmix_alpha=0")
        super().__init__(classes, loss, None, name, monitor)
        self.aux_weight, self.alpha = aux_weight, alpha
        self.palette = colours(len(self.classes), palette)

    # -- the data and the model's shape --------------------------------------------------------------------
    def to_device(self, batch: tuple, device: torch.device, channels_last: bool = False) -> tuple:
        images, masks = batch
        fmt = torch.channels_last if channels_last and images.dim() == 4 else torch.preserve_format
        images = images.as_subclass(torch.Tensor).to(device, non_blocking=True, memory_format=fmt)
        if masks is not None and isinstance(masks, torch.Tensor) and masks.dim() == 3:  # predict: sizes, not masks
            masks = masks.as_subclass(torch.Tensor).to(device, non_blocking=True).long()
        return images, masks

    def check_data(self, splits) -> None:
        if len(self.classes) >= VOID:
            raise NfTrainerError(f"task=segmentation takes at most {VOID - 1} classes (mask value {VOID} is void), "
                                 f"the data has {len(self.classes)}")

    # -- steps ---------------------------------------------------------------------------------------------
    def losses(self, output, masks: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The loss of the main output, plus `aux_weight` times the auxiliary head's where the model has one."""
        if self.loss_fn is None:  # a task built to predict or serve has none
            raise NfTrainerError("task=segmentation needs a loss: choose loss=pixel_cross_entropy (or loss=dice)")
        if isinstance(output, dict):
            main = self.loss_fn(output["out"], masks)
            if output.get("aux") is not None and self.aux_weight:
                aux = self.loss_fn(output["aux"], masks)
                return main + self.aux_weight * aux, {"out": main, "aux": self.aux_weight * aux}
            return main, {}
        return self.loss_fn(output, masks), {}

    def train_step(self, model, batch) -> Step:
        images, masks = batch
        output = model(images)
        loss, parts = self.losses(output, masks)
        return Step(loss, images.shape[0], logits(output).detach().argmax(dim=1), masks, parts)

    def eval_step(self, model, batch) -> Step:
        images, masks = batch
        output = model(images)
        loss, parts = self.losses(output, masks)
        return Step(loss, images.shape[0], logits(output).argmax(dim=1), masks, parts)

    def predict(self, model, inputs) -> torch.Tensor:
        """Class probabilities (N, K, H, W) in the inputs' pixels."""
        return logits(model(inputs)).float().softmax(dim=1)

    def unbatch(self, predictions, input_sizes, sizes) -> list[torch.Tensor]:
        """Each image's index mask (H, W) uint8 at its own size: the probabilities resized (bilinear) from the
        input's pixels, then the most likely class."""
        masks = []
        for probabilities, (h, w) in zip(predictions, sizes):
            if tuple(probabilities.shape[-2:]) != (h, w):
                probabilities = F.interpolate(probabilities[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            masks.append(probabilities.argmax(dim=0).to(torch.uint8).cpu())
        return masks

    # -- metrics -------------------------------------------------------------------------------------------
    def metric_kwargs(self) -> dict:
        return {"num_classes": len(self.classes)}

    def metric_names(self, node: DictConfig, train: bool = False) -> list[str]:
        names = []
        for name, entry in (node or {}).items():
            if train and entry.get("eval_only", False):
                continue
            if is_confusion(entry):
                names += [*DERIVED, *(per_class_key("iou", c) for c in self.classes)]
            else:
                names.append(name)
        return ["loss", *names]

    def values(self, computed: dict[str, torch.Tensor]) -> dict[str, float]:
        """A confusion matrix (K x K) becomes miou, pixel_accuracy, mean_accuracy and iou/<class> of the classes
        present (in the truth or the predictions); other metrics as the base task gives them."""
        values, others = {}, {}
        k = len(self.classes)
        for name, value in computed.items():
            if value.shape == (k, k) and k > 1:
                values |= confusion_values(value, self.classes)
            else:
                others[name] = value
        return super().values(others) | values

    # -- what the model does, shown and written --------------------------------------------------------------
    def draw(self, inputs, targets, predictions) -> np.ndarray:
        """Each image three times: as it is, its true mask and the predicted one over it (void in white)."""
        images = viewable(inputs)
        predicted = predictions.argmax(dim=1).cpu()
        tiles = []
        for image, truth, found in zip(images, targets.cpu(), predicted):
            scale = tile_scale(*image.shape[-2:])
            iou = image_iou(truth, found, len(self.classes))
            tiles += [captioned(resized(image, scale), [("image", DARK)]),
                      captioned(resized(self.overlay(image, truth), scale), [("truth", DARK)]),
                      captioned(resized(self.overlay(image, found), scale), [(f"predicted: IoU {iou}", DARK)])]
        return grid(tiles, columns=6)

    def overlay(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`image` (3, H, W uint8) with each class's pixels in its palette colour, void in white."""
        from torchvision.utils import draw_segmentation_masks

        mask = mask.long()
        shown = [c for c in mask.unique().tolist() if c != VOID and 0 <= c < len(self.classes)]
        layers = torch.stack([mask == c for c in shown]) if shown else torch.zeros(0, *mask.shape, dtype=torch.bool)
        out = draw_segmentation_masks(image, layers, alpha=self.alpha, colors=[self.palette[c] for c in shown]) \
            if shown else image.clone()
        out[:, mask == VOID] = 255
        return out

    def report(self, model, loader, device, limit_batches, folder: Path, title: str) -> None:
        write_reports(self, model, loader, device, limit_batches, folder, title)

    def write_predictions(self, output: Path, files, predictions, sizes, options) -> list[Path]:
        """Beside `output` (a CSV: image, mask, height, width, the classes present), a folder `<output stem>_masks/`
        with one index PNG per image (mode P, the palette's colours) at the image's own size."""
        import csv

        output.parent.mkdir(parents=True, exist_ok=True)
        folder = output.parent / f"{output.stem}_masks"
        folder.mkdir(parents=True, exist_ok=True)
        written, names = [output], set()
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "mask", "height", "width", "classes"])
            for file, mask, (h, w) in zip(files, predictions, sizes):
                stem = Path(file).stem
                name = stem if stem not in names else f"{stem}_{len(names)}"
                names.add(name)
                path = folder / f"{name}.png"
                self.mask_image(mask).save(path)
                present = [self.classes[c] for c in mask.unique().tolist() if c < len(self.classes)]
                writer.writerow([str(file), str(path), h, w, ";".join(present)])
                written.append(path)
        return written

    def mask_image(self, mask: torch.Tensor):
        """An index mask as a palette PNG image (mode P): pixel values are class indices, 255 white."""
        from PIL import Image

        picture = Image.fromarray(mask.numpy().astype(np.uint8))  # mode L; putpalette makes it P, the values kept
        table = [0] * 768
        for index, colour in enumerate(self.palette):
            table[3 * index:3 * index + 3] = colour
        table[3 * VOID:3 * VOID + 3] = (255, 255, 255)
        picture.putpalette(table)
        return picture

    def answer(self, predictions, sizes) -> dict[str, list]:
        """Per image: `mask` (an index PNG in its own pixels, base64), `class_names` (the classes present),
        `height`, `width`."""
        masks, present = [], []
        for mask in predictions:
            buffer = io.BytesIO()
            self.mask_image(mask).save(buffer, format="PNG")
            masks.append(base64.b64encode(buffer.getvalue()).decode())
            present.append([self.classes[c] for c in mask.unique().tolist() if c < len(self.classes)])
        return {"mask": masks, "class_names": present, "height": [h for h, _ in sizes], "width": [w for _, w in sizes]}

    def example_input(self, facts: dict, where: Path):
        """2 random inputs of the data's size for `mode=export`; EXAMPLE_SIZE px square where the data's images kept
        their own sizes (mask_folder, voc_seg: the checkpoint records none)."""
        size = facts.get("image_size") or EXAMPLE_SIZE
        return torch.rand(2, facts["in_channels"], size, size)

    def torchscript(self, model, example):
        return torch.jit.trace(model, example, strict=False)  # strict=False: torchvision's models answer a dict

    def onnx(self, model, example, path: Path) -> None:
        """The main logits alone (torchvision's dict's "out": an auxiliary head only trains); a model takes in ONNX the
        sizes it takes in torch (any for the tiny UNet and torchvision's; sides divisible by 32 for smp's)."""
        super().onnx(MainLogits(model).eval(), example, path)


class MainLogits(torch.nn.Module):
    """A segmentation model answering its main logits only, whichever output form it has (for ONNX)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logits(self.model(images))


def logits(output) -> torch.Tensor:
    """The main logits of either output form: torchvision's dict {"out", "aux"} or a plain tensor."""
    return output["out"] if isinstance(output, dict) else output


def is_confusion(entry) -> bool:
    return str(entry.get("_target_", "")).endswith("ConfusionMatrix")


def confusion_values(matrix: torch.Tensor, classes: list[str]) -> dict[str, float]:
    """From one confusion matrix (rows: truth, columns: predictions; void pixels left out): iou/<class> of each class
    present in the truth or the predictions, miou their mean, pixel_accuracy, mean_accuracy (the mean recall of the
    classes in the truth). Absent classes are absent, not 0."""
    matrix = matrix.double()
    hits, truth, found = matrix.diagonal(), matrix.sum(dim=1), matrix.sum(dim=0)
    union = truth + found - hits
    present = union > 0
    iou = hits / union.clamp(min=1)
    values = {per_class_key("iou", c): v for c, v, p in zip(classes, iou.tolist(), present.tolist()) if p}
    in_truth = truth > 0
    values["miou"] = iou[present].mean().item() if present.any() else 0.0
    values["pixel_accuracy"] = (hits.sum() / matrix.sum().clamp(min=1)).item()
    values["mean_accuracy"] = (hits[in_truth] / truth[in_truth]).mean().item() if in_truth.any() else 0.0
    return values


def image_iou(truth: torch.Tensor, found: torch.Tensor, k: int) -> str:
    """The mIoU of one image (over the classes present in it), for a picture's caption."""
    keep = truth != VOID
    matrix = torch.bincount(truth[keep].long() * k + found[keep].long(), minlength=k * k).reshape(k, k)
    return f"{confusion_values(matrix, [str(i) for i in range(k)])['miou']:.2f}"


DEFAULT_COLOURS = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                   (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
                   (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]


def colours(count: int, palette=None) -> list[tuple[int, int, int]]:
    """One RGB colour per class: `palette` (a list of [r, g, b]) where given, else distinct ones (class 0 black,
    as VOC draws its background); more classes than colours get colours of their index's bits."""
    if palette is not None:
        palette = [tuple(int(v) for v in colour) for colour in palette]
        if len(palette) < count or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
            raise NfTrainerError(f"task.palette must give one [r, g, b] (0-255) per class ({count}), got {len(palette)}")
        return palette[:count]
    return [DEFAULT_COLOURS[i] if i < len(DEFAULT_COLOURS) else bit_colour(i) for i in range(count)]


def bit_colour(index: int) -> tuple[int, int, int]:
    """VOC's palette: the bits of the index spread over the three channels."""
    r = g = b = 0
    for shift in range(8):
        r |= ((index >> 0) & 1) << (7 - shift)
        g |= ((index >> 1) & 1) << (7 - shift)
        b |= ((index >> 2) & 1) << (7 - shift)
        index >>= 3
    return r, g, b
