"""model=tiny_detector: torchvision's Faster R-CNN on a 4-convolution backbone, for small images on a CPU.

One feature map at stride 4, anchors of 1/8 to 1/2 of the image side, a 5x5 RoIAlign and a 256-wide box
head: it learns dataset=shapes (64 px) in minutes on a CPU core, which the detectors built for 320-800 px
images cannot (a fasterrcnn_mobilenet_v3_large_320_fpn train step of 8 images at 128 px takes seconds here).
The first convolution runs at full resolution: at stride 8 a 13-29 px shape spans 2-4 cells, and the box head
learned to tell shapes apart far slower (benchmarks/learn_shapes.py, batch 8, val map_50 after 3 epochs: 0.33 at
stride 8, 0.50 at stride 4, which reached 0.73 after 4; a deeper stride-8 backbone or a 2x input did less).
"""
from __future__ import annotations

from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

# Proposal and RoI sampling sized for a few objects per small image: torchvision's defaults (2000 proposals, 512
# RoIs per image) made a train step of 8 64-px images 3.6 s here, RoIAlign's backward most of it; these 0.35 s.
# Half of the RoIs positive (torchvision: a quarter) gave the box head's classifier more to learn from per step.
SMALL_IMAGE_SAMPLING = {"rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 100, "rpn_pre_nms_top_n_test": 300,
                        "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32, "box_positive_fraction": 0.5}


def conv_backbone(in_channels: int, widths=(32, 64, 128, 128), strides=(1, 2, 2, 1)) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU blocks (stride 4 in all by default); `out_channels` as torchvision's detectors
    read it."""
    layers, channels = [], in_channels
    for width, stride in zip(widths, strides, strict=True):
        layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        channels = width
    backbone = nn.Sequential(*layers)
    backbone.out_channels = channels
    return backbone


FILE_SET_SIZE = 320  # the side a file set's images (of mixed sizes) are resized to, as ssdlite320 does


def tiny_detector(num_classes: int, image_size: int, in_channels: int = 3, widths=(32, 64, 128, 128),
                  strides=(1, 2, 2, 1), anchor_sizes=None, aspect_ratios=(0.5, 1.0, 2.0), roi_size: int = 5,
                  sampling_ratio: int = 2, head_width: int = 256, min_size: int | None = None,
                  max_size: int | None = None, options: dict | None = None) -> FasterRCNN:
    """`num_classes` counts the background (labels 1..K reach the model). The model resizes its inputs to
    `min_size`/`max_size` (default: `image_size`, i.e. not at all; file sets of mixed sizes report 0: then
    FILE_SET_SIZE); `anchor_sizes` (pixels at that size) default to 1/8, 1/4 and 1/2 of it.
    `options`: more FasterRCNN keywords (box_score_thresh, box_batch_size_per_image, ...), over SMALL_IMAGE_SAMPLING."""
    size = min_size or image_size or FILE_SET_SIZE
    backbone = conv_backbone(in_channels, tuple(widths), tuple(strides))
    sizes = tuple(anchor_sizes) if anchor_sizes else (size // 8, size // 4, size // 2)
    anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=(tuple(aspect_ratios),))  # one feature map
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=roi_size, sampling_ratio=sampling_ratio)
    head = TwoMLPHead(backbone.out_channels * roi_size ** 2, head_width)
    grey = {"image_mean": [0.5] * in_channels, "image_std": [0.25] * in_channels} if in_channels != 3 else {}
    return FasterRCNN(backbone, rpn_anchor_generator=anchors, box_roi_pool=roi_pool, box_head=head,
                      box_predictor=FastRCNNPredictor(head_width, num_classes), min_size=size,
                      max_size=max_size or max(size, image_size or 0), **grey, **{**SMALL_IMAGE_SAMPLING, **dict(options or {})})
