"""transforms=detection: box-aware v2 pipelines that move boxes with the image, end with sanitized boxes, and
leave normalizing to the detector."""
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from nf_trainer.dataset.shapes import ShapesSpec, detection_target, render
from nf_trainer.transforms import build_transforms
from tests.conftest import compose_cfg


def pipelines():
    cfg = compose_cfg("transforms=detection")
    assert list(cfg.transforms._tasks_) == ["detection"]
    return build_transforms(cfg.transforms)


def with_masks(index: int):
    """A shapes sample whose target also carries each instance's visible mask: the truth to move with the image."""
    scene = render(ShapesSpec(), "train", index)
    image, target = detection_target(scene)
    return image, {**target, "masks": tv_tensors.Mask(torch.from_numpy(scene.masks))}


def extent(mask: torch.Tensor) -> list[int]:
    ys, xs = np.nonzero(mask.numpy())
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_pipelines_end_as_torchvisions_detectors_expect():
    train, eval_ = pipelines()
    assert isinstance(train.transforms[-1], v2.SanitizeBoundingBoxes)
    assert not any(isinstance(t, v2.Normalize) for t in [*train.transforms, *eval_.transforms])  # the model normalizes
    image, target = with_masks(0)
    out_image, out = eval_(image, target)
    assert out_image.dtype == torch.float32 and 0 <= out_image.min() <= out_image.max() <= 1
    assert torch.equal(out["boxes"], target["boxes"]) and torch.equal(out["labels"], target["labels"])


def test_train_pipeline_moves_boxes_with_the_image_and_sanitizes_them():
    train, _ = pipelines()
    moved = 0
    for index in range(40):
        image, target = with_masks(index)
        degenerate = tv_tensors.wrap(torch.cat([target["boxes"], torch.tensor([[10.0, 10.0, 10.0, 30.0]])]),
                                     like=target["boxes"])  # zero width: must go, with its label and mask
        target = {"boxes": degenerate, "labels": torch.cat([target["labels"], torch.tensor([0])]),
                  "masks": tv_tensors.Mask(torch.cat([target["masks"], torch.zeros(1, 64, 64, dtype=torch.bool)]))}
        torch.manual_seed(index)
        out_image, out = train(image, target)
        boxes, height, width = out["boxes"], *out_image.shape[-2:]
        assert out_image.dtype == torch.float32 and boxes.canvas_size == (height, width)
        assert len(boxes) == len(out["labels"]) == len(out["masks"]) == len(target["labels"]) - 1
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all() and (boxes >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        for box, mask in zip(boxes.tolist(), out["masks"]):
            x1, y1, x2, y2 = extent(mask)  # the instance's pixels, moved by the same transform
            assert box[0] <= x1 + 1 and box[1] <= y1 + 1 and box[2] >= x2 - 1 and box[3] >= y2 - 1, index
            if (height, width) == (64, 64):  # not cropped or zoomed: the box is the mask's extent
                assert box == [x1, y1, x2, y2], index
        moved += int(not torch.equal(boxes, target["boxes"][:-1]))
    assert moved >= 10  # flips (and crops) happened, and the boxes followed
