"""What a served model does with raw images: read them as training read its files, apply the run's eval
transforms, run the model, and answer as its task does (classification: the class; detection: boxes with
class names and scores, in each image's own pixels).

Inputs, as `predict` takes them (and MLflow's scoring server hands them over):
- a pandas DataFrame: its `image` column (else its first column), one image per row;
- a list (or 1-D object array) of images; a 4-D uint8 array (N, H, W, C) is a batch;
- one image: a uint8 array (H, W) or (H, W, C) of any size (integers 0-255 too, as JSON gives them), or
  encoded PNG/JPEG/... bytes, or those bytes base64-encoded in a string (a `data:image/png;base64,` prefix
  is allowed).
Output: a DataFrame with one row per image, the task's columns (classification: `class_name`, `class_index`,
`probabilities`; detection: `boxes`, `class_names`, `scores`).
"""
from __future__ import annotations

import base64
import binascii

import numpy as np
import torch

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.images import decode_image_bytes, image_from_array

IMAGE_COLUMN = "image"


class ServedModel:
    def __init__(self, model: torch.nn.Module, transform, channels: int, task):
        self.model, self.transform, self.task = model, transform, task
        self.mode = "L" if channels == 1 else "RGB"

    def predict(self, model_input, params: dict | None = None):
        import pandas as pd  # lazy: only serving needs it (MLflow's dependency)

        images = self.read(model_input)
        sizes = [tuple(image.shape[-2:]) for image in images]
        inputs = [self.transform(image) if self.transform is not None else image for image in images]
        return pd.DataFrame(self.task.answer(self.predictions(inputs, sizes), sizes))

    @torch.inference_mode()
    def predictions(self, inputs: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list:
        """One per image, in its own pixels: one batch when the eval transforms make every input the same size,
        else one input at a time."""
        same_size = len({tuple(image.shape) for image in inputs}) == 1
        groups = [range(len(inputs))] if same_size else [[i] for i in range(len(inputs))]
        found = []
        for group in groups:
            batch, _ = self.task.collate([(inputs[i], i) for i in group])
            found += self.task.unbatch(self.task.predict(self.model, batch), [tuple(inputs[i].shape[-2:]) for i in group],
                                       [sizes[i] for i in group])
        return found

    def read(self, model_input) -> list[torch.Tensor]:
        """The input's images as uint8 tensors (C, H, W) in the model's colour mode."""
        if hasattr(model_input, "columns"):  # a pandas DataFrame
            column = IMAGE_COLUMN if IMAGE_COLUMN in model_input.columns else model_input.columns[0]
            items = list(model_input[column])
        elif isinstance(model_input, dict):  # named inputs: the `image` one, else the first
            return self.read(model_input.get(IMAGE_COLUMN, next(iter(model_input.values()), [])))
        elif isinstance(model_input, np.ndarray) and model_input.dtype != object and model_input.ndim in (2, 3):
            items = [model_input]  # one image
        elif isinstance(model_input, (str, bytes)):
            items = [model_input]
        else:
            items = list(model_input)
        if not items:
            raise NfTrainerError("no images in the input")
        return [self.read_one(item) for item in items]

    def read_one(self, item) -> torch.Tensor:
        if isinstance(item, str):
            text = item.split(",", 1)[1] if item.startswith("data:") else item
            try:
                item = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise NfTrainerError(f"an image string must be base64-encoded PNG/JPEG bytes: {exc}") from None
        if isinstance(item, (bytes, bytearray)):
            try:
                return decode_image_bytes(bytes(item), self.mode)
            except Exception as exc:  # Pillow's and torchvision's decoders raise many types
                raise NfTrainerError(f"cannot decode an image: {' '.join(str(exc).split())[:200]}") from None
        return image_from_array(item, self.mode)
