"""dataset=shapes: deterministic per (seed, split, index), the class is the shape alone, boxes are the visible
masks' extents, background-only images occur, and the option builds from conf/ in the detection contract."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.core.instantiate import create_instance
from nf_trainer.dataset.shapes import ShapesSpec, render, shapes
from nf_trainer.transforms import build_transforms
from tests.conftest import compose_cfg

SPEC = ShapesSpec()


def same_sample(a, b) -> bool:
    (image_a, target_a), (image_b, target_b) = a, b
    return (torch.equal(image_a, image_b) and torch.equal(target_a["boxes"], target_b["boxes"])
            and torch.equal(target_a["labels"], target_b["labels"]))


def test_a_sample_depends_on_seed_split_and_index_only():
    first, second = shapes(val_size=50), shapes(val_size=50)
    order = [first.train[i] for i in (7, 3, 7)]  # any order, any object
    assert same_sample(order[0], order[2]) and same_sample(order[0], second.train[7])
    assert same_sample(first.eval["shapes"][7], second.eval["shapes"][7])
    assert not torch.equal(first.train[7][0], first.eval["shapes"][7][0])  # train and val: other streams
    assert not torch.equal(first.train[7][0], shapes(seed=1).train[7][0])
    assert first.train.digest() == second.train.digest() != shapes(seed=1).train.digest()
    assert first.train.digest() != first.eval["shapes"].digest()
    # two loader workers render the same samples as this process
    loader = DataLoader(first.eval["shapes"], batch_size=5, num_workers=2, collate_fn=lambda batch: batch)
    for i, sample in enumerate(s for batch in loader for s in batch):
        assert same_sample(sample, first.eval["shapes"][i])


def test_samples_are_torchvisions_detection_samples():
    data = shapes(val_size=20)
    image, target = data.train[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert boxes.canvas_size == (64, 64) and boxes.dtype == torch.float32 and boxes.shape[1] == 4
    assert target["labels"].dtype == torch.int64 and len(target["labels"]) == len(boxes)
    assert data.classes == ["circle", "square", "triangle"] and data.in_channels == 3 and data.image_size == 64
    assert len(data.train) == 800 and len(data.eval["shapes"]) == 20 and data.train.name == "shapes"
    assert "generated" in data.train.source


def test_boxes_are_the_extents_of_disjoint_visible_masks():
    val = shapes(val_size=60).eval["shapes"]
    for index in range(60):
        scene = render(SPEC, "val", index)
        _, target = val[index]
        assert target["labels"].tolist() == scene.labels.tolist()
        assert scene.masks.sum(0).max() <= 1  # z-order: a pixel shows one instance at most
        for mask, box in zip(scene.masks, target["boxes"].tolist()):
            ys, xs = np.nonzero(mask)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            # the mask is where the object was painted: one colour under the pixel noise
            assert scene.image[mask].std(0).max() < 12


def test_background_only_images_occur_at_the_configured_share():
    counts = [len(render(SPEC, "val", i).labels) for i in range(300)]
    assert 0.05 <= counts.count(0) / len(counts) <= 0.16
    assert max(counts) <= SPEC.max_objects
    assert sum(len(render(ShapesSpec(background_only=1.0), "val", i).labels) for i in range(20)) == 0


def test_colour_and_size_tell_nothing_about_the_class():
    """Per class, the mean colour and the visible area of the instances have the same distribution."""
    colours, areas = {c: [] for c in range(3)}, {c: [] for c in range(3)}
    for index in range(400):
        scene = render(SPEC, "train", index)
        for mask, label in zip(scene.masks, scene.labels):
            colours[int(label)].append(scene.image[mask].mean(0) / 255)
            areas[int(label)].append(mask.sum())
    everyone = np.concatenate([np.stack(c) for c in colours.values()])
    mean_area = np.mean([a for per_class in areas.values() for a in per_class])
    for label in range(3):
        assert len(colours[label]) > 120
        # colour: uniform per channel (std ~0.29), ~200 instances a class: 0.07 is over 3 standard errors
        assert np.abs(np.stack(colours[label]).mean(0) - everyone.mean(0)).max() < 0.07, label
        assert abs(np.mean(areas[label]) / mean_area - 1) < 0.15, label


def test_shuffled_labels_keep_the_images_and_boxes_of_the_true_run():
    true, control = shapes(val_size=30), shapes(val_size=30, shuffle_labels=True)
    changed = 0
    for index in range(60):
        (image, target), (image_c, target_c) = true.train[index], control.train[index]
        assert torch.equal(image, image_c) and torch.equal(target["boxes"], target_c["boxes"])
        changed += int(not torch.equal(target["labels"], target_c["labels"]))
    assert changed > 20
    assert all(same_sample(true.eval["shapes"][i], control.eval["shapes"][i]) for i in range(30))  # val: the truth


def test_dataset_option_builds_from_conf_with_its_transforms():
    cfg = compose_cfg("task=detection", "dataset=shapes", "transforms=detection", "dataset.train_size=40", "dataset.val_size=10",
                      "dataset.image_size=48", "dataset.classes=[star,cross]")
    assert list(cfg.dataset._tasks_) == ["detection", "multilabel", "segmentation"] and cfg.dataset.task == "detection"
    train_transform, eval_transform = build_transforms(cfg.transforms)
    data = create_instance(cfg.dataset, train_transform=train_transform, eval_transform=eval_transform)
    assert data.classes == ["star", "cross"] and data.image_size == 48 and len(data.train) == 40
    image, target = data.eval["shapes"][0]
    assert image.dtype == torch.float32 and image.shape == (3, 48, 48) and 0 <= image.min() <= image.max() <= 1
    assert set(target["labels"].tolist()) <= {0, 1}


@pytest.mark.parametrize("overrides,needle", [
    ({"classes": ["circle", "hexagon", "blob"]}, "dataset.classes: unknown 'blob'; choose from circle, square"),
    ({"distractors": ["cloud"]}, "dataset.distractors: unknown 'cloud'; choose from ellipse, outline"),
    ({"task": "keypoints"}, "dataset.task: unknown 'keypoints'; choose from detection, multilabel, segmentation"),
    ({"size": [0.5, 0.2]}, "dataset.size must be [low, high] with 0 < low <= high <= 1"),
])
def test_bad_settings_are_one_line_errors(overrides, needle):
    with pytest.raises(NfTrainerError) as err:
        shapes(**overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)
