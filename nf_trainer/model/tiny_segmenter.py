"""model=tiny_unet: a small UNet for small images on a CPU (dataset=shapes' 64 px in minutes).

Four levels (full, 1/2, 1/4, 1/8 resolution), two 3x3 conv + BatchNorm + ReLU blocks each, max-pool down,
bilinear up with the encoder's features concatenated, one block per decoder level, a 1x1 class head. Its
receptive field (about 100 px at 64 px) spans a whole shape: a pixel inside a triangle looks like one inside a
square until the model sees the corners. A 2-level UNet (receptive field ~20 px) left the triangle at IoU 0
after 5 minutes (shared/notes/research-tasks.md); the figures of this one are in docs/segmentation.md.
Plain logits (N, num_classes, H, W) at the input's size, any size divisible by 8 or not.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def block(channels: int, width: int, convs: int = 2) -> nn.Sequential:
    layers = []
    for _ in range(convs):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers)


def encoder(in_channels: int, widths: list[int], stem_stride: int) -> tuple[nn.Sequential, nn.ModuleList]:
    """The stem and the levels of the down path (model=tiny_tagger uses it alone)."""
    stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
                         nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    down, channels = nn.ModuleList(), widths[0]
    for width in widths:
        down.append(block(channels, width))
        channels = width
    return stem, down


def encode(stem: nn.Module, down: nn.ModuleList, images: torch.Tensor) -> list[torch.Tensor]:
    """Every level's features, finest first (max-pooled by 2 between levels)."""
    features, x = [], stem(images)
    for i, level in enumerate(down):
        if i:
            x = F.max_pool2d(x, 2, ceil_mode=True)
        x = level(x)
        features.append(x)
    return features


class TinyUNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(16, 32, 64, 96), stem_stride: int = 1,
                 image_size: int | None = None):
        super().__init__()
        widths = [int(w) for w in widths]
        self.stem, self.down = encoder(in_channels, widths, stem_stride)
        self.up = nn.ModuleList(block(widths[i + 1] + widths[i], widths[i], convs=1) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips = encode(self.stem, self.down, images)
        x = skips[-1]
        for level, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = level(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits
