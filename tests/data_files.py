"""Real image files made from the digits set, for the data tests: PNG/JPEG/BMP/WebP, mixed modes, bad files."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

# (extension, PIL mode, PIL format): cycled over the images of each class
KINDS = [(".png", "L", "PNG"), (".PNG", "RGB", "PNG"), (".jpg", "RGB", "JPEG"), (".png", "P", "PNG"),
         (".png", "RGBA", "PNG"), (".JPEG", "L", "JPEG"), (".bmp", "RGB", "BMP"), (".webp", "RGB", "WEBP")]


def digit_images(per_class: int, offset: int = 0):
    """(class name, 8x8 uint8 array) for `per_class` images of each digit, skipping the first `offset`."""
    data = load_digits()
    pixels = np.clip(data.images * 16, 0, 255).astype(np.uint8)
    for label in range(10):
        for index in np.flatnonzero(data.target == label)[offset:offset + per_class]:
            yield str(label), pixels[index]


def write_image(path: Path, pixels: np.ndarray, mode: str, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, fmt)


def make_image_folder(root: Path, per_class: int = 20, offset: int = 0, bad: bool = True) -> Path:
    """root/<digit>/[nested/]<n><ext>; with `bad`, one corrupt JPEG and one zero-byte PNG as well."""
    counts: dict[str, int] = {}
    for label, pixels in digit_images(per_class, offset):
        n = counts[label] = counts.get(label, 0) + 1
        ext, mode, fmt = KINDS[n % len(KINDS)]
        write_image(root / label / ("nested" if n % 3 == 0 else "") / f"{n}{ext}", pixels, mode, fmt)
    if bad:
        (root / "3" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # a JPEG header, then junk
        (root / "5" / "empty.png").write_bytes(b"")
    return root


def write_csv(path: Path, rows, columns=("path", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path
