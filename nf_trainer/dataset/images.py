"""Reading image files: the one loader that training, evaluation and prediction share, and a cheap check.

`load_image(path, mode)` returns a uint8 tensor (C, H, W), ready for torchvision.transforms.v2:
torchvision's decoders for JPEG, WebP and GIF (faster than PIL, no PIL round trip), PIL for the rest
(PNG, BMP, TIFF). Grayscale, palette, RGBA and 16-bit images come out in the requested mode: "RGB"
(3 channels) or "L" (1 channel). EXIF orientation is applied, so photos come out as viewers show them.
"""
from __future__ import annotations

import io
import logging
import os
import re
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import pil_to_tensor, rgb_to_grayscale

from nf_trainer.core.errors import NfTrainerError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CHANNELS = {"RGB": 3, "L": 1}  # dataset.mode -> channels
# Not PNG: torchvision 0.29's PNG decoder kills the process (SIGSEGV) on damaged data (a libpng CRC or
# zlib error); PIL raises a Python error for the same files.
DECODED_BY_TORCHVISION = ("jpeg", "webp", "gif")

# torchvision 0.29 marks its decoders deprecated in favour of torchcodec; they are what this project
# pins (<0.30). load_image is the one place to change when moving on.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def check_mode(mode: str) -> int:
    if mode not in CHANNELS:
        raise NfTrainerError(f"image mode must be one of {', '.join(CHANNELS)}, not '{mode}' (dataset.mode)")
    return CHANNELS[mode]


def image_format(head: bytes) -> str | None:
    """The format a file's first bytes announce, or None when they announce no image format we read."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def load_image(path, mode: str = "RGB"):
    """The image at `path` as a uint8 tensor (C, H, W) in `mode`. Raises on a file that does not decode."""
    with open(path, "rb") as f:
        return decode_image_bytes(f.read(), mode)


def decode_image_bytes(data: bytes, mode: str = "RGB"):
    """An encoded image (a file's bytes) as a uint8 tensor (C, H, W) in `mode`: what `load_image` reads a file with."""
    channels = check_mode(mode)
    fmt = image_format(data[:12])
    if fmt in DECODED_BY_TORCHVISION:
        # WebP and GIF decoders ignore GRAY (and warn): read them as RGB, convert below
        read_mode = ImageReadMode.GRAY if channels == 1 and fmt == "jpeg" else ImageReadMode.RGB
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode,
                             apply_exif_orientation=True)
        if image.ndim == 4:  # an animated GIF: its first frame
            image = image[0]
        return to_channels(image, channels)
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit: PIL's convert would clip at 255, scale instead
            im = Image.fromarray((np.clip(np.asarray(im), 0, 65535) >> 8).astype(np.uint8), "L")
        return pil_to_tensor(im.convert(mode))


def image_from_array(array, mode: str = "RGB"):
    """A uint8 array (H, W) or (H, W, C) with C 1, 3 or 4 (or integers in 0-255) as a uint8 tensor (C, H, W) in `mode`, converted
    by Pillow as a PNG of those pixels would be."""
    check_mode(mode)
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and array.max() <= 255:
        array = array.astype(np.uint8)  # JSON has no uint8: pixel values arrive as wider integers
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise NfTrainerError(f"an image array must be uint8 of shape (H, W) or (H, W, C) with C 1, 3 or 4, "
                             f"not {array.dtype} {tuple(array.shape)}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return pil_to_tensor(Image.fromarray(np.ascontiguousarray(array)).convert(mode))


def to_channels(image, channels: int):
    """uint8 images (..., C, H, W) with C in 1-4 -> `channels` (1 or 3); alpha is dropped."""
    have = image.shape[-3]
    if have == channels:
        return image
    if channels == 1:
        return rgb_to_grayscale(image[..., :3, :, :]) if have >= 3 else image[..., :1, :, :]
    if have >= 3:
        return image[..., :3, :, :]
    return image[..., :1, :, :].expand(*image.shape[:-3], 3, *image.shape[-2:])


class BadFile(NamedTuple):
    """What a dataset returns for a sample whose file did not decode: collate_valid drops it from its batch and
    hands it on, so the main process counts it (`data/bad_files`), workers or not."""
    path: str
    reason: str


def skip_or_raise(exc: BaseException, what: str, on_bad_file: str, fail_hint: str, skip_note: str = "") -> BadFile:
    """A file that did not decode: raise with what to change (dataset.on_bad_file=fail), or warn and return the
    BadFile the dataset returns in the sample's place."""
    if on_bad_file == "fail":
        raise NfTrainerError(f"cannot decode {what}: {describe_error(exc)} ({fail_hint})") from exc
    logging.getLogger("nf_trainer").warning("skipping %s: %s%s", what, describe_error(exc), skip_note)
    return BadFile(str(what), describe_error(exc))


def describe_error(exc: BaseException) -> str:
    """A decoder's error in a few words: torchvision prefixes its messages with 'function, file:line, '."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "csrc" in text:
        text = text.split(", ", 2)[-1]
    # PIL names the stream it was handed ('cannot identify image file <_io.BytesIO object at 0x7f...>')
    text = re.sub(r" <_io\.\w+ object at 0x[0-9a-f]+>", "", text)
    return text[:200]


def check_image_file(path, mode: str = "RGB", full: bool = False) -> str | None:
    """None when the file is a whole image, else why not.

    The quick check reads the size and a few bytes at each end: an empty file or an unknown signature
    is bad; a file whose end marker is missing (cut short by a failed copy or download) is decoded to
    decide, since JPEG and GIF may legally carry data after it (phones append motion-photo video).
    `full` decodes every file, which also finds damage in the middle of the data.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    fmt = image_format(head)
    if fmt is None:
        return "not an image (unknown file signature)"
    if full or not _ends_whole(fmt, head, tail, size):
        try:
            load_image(path, mode)
        except Exception as exc:  # any decoder failure makes the file bad; the reason goes to the list
            return describe_error(exc)
    return None


def _ends_whole(fmt: str, head: bytes, tail: bytes, size: int) -> bool:
    """Whether the file ends the way a complete file of its format does."""
    end = tail.rstrip(b"\x00")  # some writers pad with zeros
    if fmt == "png":
        return b"IEND" in tail
    if fmt == "jpeg":
        return end.endswith(b"\xff\xd9")
    if fmt == "gif":
        return end.endswith(b";")
    if fmt == "webp":  # RIFF header: bytes 4-8 hold the size of what follows the first 8 bytes
        return size >= 8 + int.from_bytes(head[4:8], "little")
    if fmt == "bmp":  # bytes 2-6 hold the file size (some writers leave 0)
        return size >= int.from_bytes(head[2:6], "little")
    return True
