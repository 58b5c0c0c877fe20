"""Transforms for images with masks that a config cannot spell as torchvision's classes alone."""
from __future__ import annotations

from torchvision import tv_tensors
from torchvision.transforms import v2

VOID = 255  # the mask value of pixels no class is asked for


def random_resize_crop(size: int, scale: tuple[float, float] = (0.5, 2.0)) -> v2.Compose:
    """torchvision's segmentation reference: the short side resized to a random `scale` x `size`, then a random
    size x size crop; where the image is smaller, it is padded with 0 and its mask with 255 (void)."""
    low, high = int(size * scale[0]), int(size * scale[1])
    return v2.Compose([v2.RandomResize(low, high + 1),
                       v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: VOID})])
