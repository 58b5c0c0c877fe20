"""Image files decoded on the GPU (`loader.decode=gpu`, and `auto` on CUDA): workers read bytes, nvJPEG decodes.

The loader's workers only read each file's encoded bytes (`EncodedFiles`, collated into a list by
`collate_encoded`); `DecodedOnDevice` decodes each batch in the main process: its JPEGs in one
`torchvision.io.decode_jpeg(list, device="cuda")` call (nvJPEG, batched), then every image through the split's
v2 pipeline on the GPU (per sample: images of any size come in, RandomResizedCrop/resize make them one), and
the ToDtype/Normalize tail on the whole batch. PNG and the other formats, and a JPEG that nvJPEG refuses, are
decoded on the CPU by `decode_image_bytes` (the same decoder as `load_image`) and copied over. A file that
neither decodes is left out of its batch, warned about once, and counted in `data/bad_files`.
"""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset, default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.loader_view import LoaderView
from nf_trainer.dataset.files import BadFileCount, ImageFileDataset, batch_errors
from nf_trainer.dataset.images import CHANNELS, decode_image_bytes, describe_error, image_format, to_channels

log = logging.getLogger("nf_trainer")

DECODES = ("auto", "cpu", "gpu")


def resolve_decode(decode: str, device: torch.device) -> str:
    """'cpu' or 'gpu' for `loader.decode`; gpu without CUDA is an error, before anything is built."""
    if decode not in DECODES:
        raise NfTrainerError(f"loader.decode must be one of {', '.join(DECODES)}, not '{decode}'")
    if decode == "gpu" and device.type != "cuda":
        raise NfTrainerError(f"loader.decode=gpu needs a CUDA GPU (training runs on {device.type}): use loader.decode=auto "
                             "or loader.decode=cpu")
    return "gpu" if decode == "gpu" or (decode == "auto" and device.type == "cuda") else "cpu"


class EncodedFiles(Dataset):
    """The files of an ImageFileDataset as (encoded bytes as a uint8 tensor, label, index): no decoding here."""

    def __init__(self, files: ImageFileDataset):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path, label = self.files.samples[index]
        try:
            with open(path, "rb") as f:
                data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        except OSError as exc:
            data = exc  # reported with the batch, in the main process, where it is counted
        return data, label, index


def collate_encoded(batch):
    """([encoded tensors or read errors], labels, indices)."""
    return [sample[0] for sample in batch], default_collate([s[1] for s in batch]), [s[2] for s in batch]


def decode_batch(encoded: list, mode: str, device: torch.device) -> list:
    """Each entry decoded to uint8 (C, H, W) on `device`, or the reason it could not be (a str)."""
    channels = CHANNELS[mode]
    out: list = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if isinstance(data, torch.Tensor)
             and image_format(bytes(data[:12])) == "jpeg"] if device.type == "cuda" else []
    if jpegs:
        read_mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=read_mode, device=device, apply_exif_orientation=True)
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError:  # one bad JPEG fails the whole call: those of this batch go one by one to the CPU
            pass
    for i, data in enumerate(encoded):
        if out[i] is not None:
            continue
        if isinstance(data, Exception):
            out[i] = f"unreadable: {getattr(data, 'strerror', None) or data}"
            continue
        try:
            out[i] = to_channels(decode_image_bytes(bytes(data.numpy()), mode), channels).to(device, non_blocking=True)
        except Exception as exc:  # any decoder failure: the file is bad
            out[i] = describe_error(exc)
    return out


class DecodedOnDevice(LoaderView):
    """A DataLoader of `EncodedFiles` whose batches arrive decoded and transformed on `device`."""

    def __init__(self, loader, files: ImageFileDataset, device: torch.device, transform, batch_transform,
                 bad_files: list):
        super().__init__(loader)
        self.files, self.device, self.transform, self.batch_transform = files, device, transform, batch_transform
        self.count = BadFileCount(bad_files)

    def __iter__(self):
        for encoded, labels, indices in self.loader:
            images, keep = [], []
            for k, image in enumerate(decode_batch(encoded, self.files.mode, self.device)):
                if isinstance(image, str):
                    self.bad(self.files.samples[indices[k]][0], image)
                    continue
                images.append(self.transform(image) if self.transform is not None else image)
                keep.append(k)
            with batch_errors(images):
                batch = torch.stack(images)
            if self.batch_transform is not None:
                batch = self.batch_transform(batch)
            yield batch, labels[keep] if len(keep) < len(labels) else labels

    def bad(self, path: str, reason: str) -> None:
        if self.files.on_bad_file == "fail":
            raise NfTrainerError(f"cannot decode {path}: {reason} (dataset.check=full finds such files before training; "
                                 "dataset.on_bad_file=skip drops them)")
        if self.count.add(path, reason):  # warned once per file, however many epochs meet it
            log.warning("skipping %s: %s (dataset.check=full finds such files before training)", path, reason)
