"""dataset=shapes: generated images in which only the shape of an object tells its class.

Colour, size (as area), rotation and position are drawn from one distribution for every class, on crops of
real photographs and terrain (matplotlib's sample data) or procedural noise, with distractors that are no
class (ellipses, hollow outlines) and background-only images: a model must learn shape to score.

Each sample is rendered when it is asked for, from a random stream seeded by (seed, split, index): the same
sample in any worker and order, nothing held for the whole set, train and val from disjoint streams.
The renderer gives a `Scene` (the image, each kept instance's visible mask, its class, the remnants of
instances dropped as too occluded); the target is a function of the task, so other tasks add theirs here.
"""
from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import asdict, dataclass

import matplotlib
import numpy as np
import torch
from matplotlib.colors import LightSource
from matplotlib.path import Path as PolygonPath
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.dataset.splits import DataSplits, probe_shape

VERSION = 2  # part of the digest: bump when the same parameters render other images
SPLITS = {"train": 0, "val": 1}  # the split's place in the seed: disjoint random streams
PLACEMENT_TRIES = 10


def _regular(n: int, phase: float = math.pi / 2, inner: float | None = None) -> np.ndarray:
    """The vertices of a regular n-gon (a star when `inner` is the inner radius) on the unit circle."""
    corners = n * (2 if inner else 1)
    angles = phase + 2 * math.pi * np.arange(corners) / corners
    radii = np.where(np.arange(corners) % 2, inner or 1.0, 1.0)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


POLYGONS = {
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float),
    "triangle": _regular(3),
    "pentagon": _regular(5),
    "hexagon": _regular(6),
    "star": _regular(5, inner=0.45),
    "cross": np.array([[-1, -3], [1, -3], [1, -1], [3, -1], [3, 1], [1, 1], [1, 3], [-1, 3], [-1, 1], [-3, 1], [-3, -1],
                       [-1, -1]], dtype=float),
}
SHAPES = ("circle", *POLYGONS)  # what `classes` may name
DISTRACTORS = ("ellipse", "outline")  # no class: background for every task
BACKGROUNDS = ("photo", "terrain", "noise")
TASKS = ("detection", "multilabel", "segmentation")


def _unit_area(vertices: np.ndarray) -> np.ndarray:
    """The polygon scaled to area 1 (shoelace), so every shape of one `size` covers the same number of pixels."""
    x, y = vertices.T
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return vertices / math.sqrt(area)


UNIT_POLYGONS = {name: PolygonPath(_unit_area(v)) for name, v in POLYGONS.items()}


@dataclass(frozen=True)
class ShapesSpec:
    """What decides every image: the same spec, split and index always render the same sample."""
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    distractors: tuple[str, ...] = ("ellipse", "outline")
    backgrounds: tuple[str, ...] = BACKGROUNDS
    image_size: int = 64
    seed: int = 0
    max_objects: int = 3  # class instances per image: 1..max_objects (0 in background-only images)
    max_distractors: int = 1  # 0..max_distractors per image
    size: tuple[float, float] = (0.2, 0.45)  # an object's size (the side of a square of its area) / image side
    background_only: float = 0.1  # the share of images without any class instance
    max_overlap: float = 0.15  # an object is placed (10 tries) to cover at most this share of its area of those before
    min_visible: float = 0.6  # an instance less visible than this share of its area (occluded, cut) is dropped
    noise: float = 0.03  # std of the Gaussian pixel noise, in 0..1
    min_contrast: float = 0.25  # least RGB distance (0..sqrt 3) between an object's colour and the background under it
    shuffle_labels: bool = False  # a control: train labels drawn at random, not from the shape (val keeps the truth)


@dataclass
class Scene:
    """One rendered image and its instances, before any task's target."""
    image: np.ndarray  # (H, W, 3) uint8 RGB
    masks: np.ndarray  # (N, H, W) bool: the visible pixels of each kept instance, in drawing order
    labels: np.ndarray  # (N,) int64: class indices into spec.classes
    dropped: np.ndarray  # (H, W) bool: visible pixels of instances dropped as too occluded (void for segmentation)
    num_classes: int = 0  # len(spec.classes): the length of a multi-hot target


def render(spec: ShapesSpec, split: str, index: int) -> Scene:
    rng = np.random.default_rng([spec.seed, SPLITS[split], index])
    side = spec.image_size
    image = _background(rng, spec.backgrounds[rng.integers(len(spec.backgrounds))], side)
    n_objects = 0 if rng.random() < spec.background_only else int(rng.integers(1, spec.max_objects + 1))
    n_distractors = int(rng.integers(0, spec.max_distractors + 1)) if spec.distractors else 0
    kinds = [("class", int(rng.integers(len(spec.classes)))) for _ in range(n_objects)]
    kinds += [("distractor", int(rng.integers(len(spec.distractors)))) for _ in range(n_distractors)]
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]  # z-order: distractors may cover objects and be covered
    ys, xs = np.mgrid[0:side, 0:side] + 0.5  # pixel centres
    drawn, labels, areas, covered = [], [], [], np.zeros((side, side), bool)
    for kind, which in kinds:
        size = rng.uniform(*spec.size) * side
        for _ in range(PLACEMENT_TRIES):  # a place where it covers little of what is drawn (else the last one tried)
            centre = rng.uniform(0.5 * size, side - 0.5 * size, size=2)
            angle = rng.uniform(0, 2 * math.pi)
            if kind == "class":
                mask = _shape_mask(spec.classes[which], xs, ys, centre, size, angle)
            else:
                mask = _distractor_mask(spec.distractors[which], spec.classes, rng, xs, ys, centre, size, angle)
            if (mask & covered).sum() <= spec.max_overlap * mask.sum():
                break
        covered |= mask
        colour = _colour(rng, image, mask, spec.min_contrast)
        image[mask] = colour
        drawn.append(mask)
        labels.append(which if kind == "class" else -1)
        areas.append(size * size)
    visible = _visible(drawn)
    image = np.clip(image + spec.noise * rng.standard_normal(image.shape, dtype=np.float32), 0, 1)
    keep = [i for i, label in enumerate(labels) if label >= 0 and visible[i].sum() >= spec.min_visible * areas[i]]
    if spec.shuffle_labels and split == "train":  # a stream of its own: the images stay those of the true run
        random = np.random.default_rng([spec.seed, SPLITS[split], index, 1]).integers(len(spec.classes), size=len(labels))
        labels = [int(r) if label >= 0 else label for r, label in zip(random, labels)]
    dropped = np.zeros((side, side), bool)
    for i, label in enumerate(labels):
        if label >= 0 and i not in keep:
            dropped |= visible[i]
    return Scene(image=(image * 255).round().astype(np.uint8),
                 masks=np.stack([visible[i] for i in keep]) if keep else np.zeros((0, side, side), bool),
                 labels=np.array([labels[i] for i in keep], dtype=np.int64), dropped=dropped,
                 num_classes=len(spec.classes))


def _frame(xs, ys, centre, size, angle):
    """Pixel centres in the object's frame: centred, rotated, in units of its size."""
    dx, dy = xs - centre[0], ys - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    return (c * dx + s * dy) / size, (-s * dx + c * dy) / size


def _shape_mask(name: str, xs, ys, centre, size, angle, aspect: float = 1.0) -> np.ndarray:
    u, v = _frame(xs, ys, centre, size, angle)
    if name == "circle":  # an ellipse of area 1 with axes ratio `aspect` (1: a circle)
        return (u * u * aspect + v * v / aspect) <= 1 / math.pi
    points = np.stack([u.ravel(), v.ravel()], 1)
    return UNIT_POLYGONS[name].contains_points(points).reshape(u.shape)


def _distractor_mask(name: str, classes, rng, xs, ys, centre, size, angle) -> np.ndarray:
    if name == "ellipse":  # elongated enough not to pass for a circle
        return _shape_mask("circle", xs, ys, centre, size, angle, aspect=rng.uniform(0.3, 0.55))
    # outline: a class shape, hollow; its line 15-25 % of its size
    shape = classes[rng.integers(len(classes))]
    inner = size * (1 - 2 * rng.uniform(0.15, 0.25))
    return _shape_mask(shape, xs, ys, centre, size, angle) & ~_shape_mask(shape, xs, ys, centre, inner, angle)


def _visible(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each mask less what the masks drawn after it cover (z-order occlusion)."""
    covered = np.zeros_like(masks[0]) if masks else None
    visible = [None] * len(masks)
    for i in range(len(masks) - 1, -1, -1):
        visible[i] = masks[i] & ~covered
        covered = covered | masks[i]
    return visible


def _colour(rng, image, mask, min_contrast: float) -> np.ndarray:
    """A uniform RGB colour, drawn again (a few times) while it is too close to the background it covers."""
    under = image[mask].mean(0) if mask.any() else image.reshape(-1, 3).mean(0)
    for _ in range(20):
        colour = rng.random(3)
        if np.linalg.norm(colour - under) >= min_contrast:
            break
    return colour


def _background(rng, kind: str, side: int) -> np.ndarray:
    """(side, side, 3) float in 0..1: a random crop of a photo or of shaded terrain, or smooth noise; tinted and
    flattened at random so objects stand out at every contrast."""
    if kind == "noise":
        cells = int(rng.integers(2, 9))
        smooth = _resize(rng.random((cells, cells, 3), dtype=np.float32), side)
        texture = 0.7 * smooth + 0.3 * rng.random((side, side, 3), dtype=np.float32)
    else:
        source = _photo() if kind == "photo" else _terrain()
        height, width = source.shape[:2]
        low = min(side, height, width)  # a crop of at least the image's side (where the source has it), at most half
        crop = int(rng.integers(low, max(low, min(height, width) // 2) + 1))
        top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        texture = _resize(source[top:top + crop, left:left + crop], side)[:, :: rng.choice([-1, 1])]
        if kind == "terrain":
            texture = texture * rng.uniform(0.3, 1.0, 3)  # a random tint of the grey shading
    mean = texture.mean((0, 1))
    contrast = rng.uniform(0.4, 1.0)
    return np.clip(mean + (texture - mean) * contrast, 0, 1).astype(np.float32)


def _resize(array: np.ndarray, side: int) -> np.ndarray:
    """(h, w, c) in 0..1 -> (side, side, c), with Pillow's bilinear filter per channel."""
    channels = [np.asarray(Image.fromarray(array[..., c].astype(np.float32)).resize((side, side), Image.BILINEAR))
                for c in range(array.shape[2])]
    return np.stack(channels, 2)


def _sample_data(name: str) -> str:
    return f"{matplotlib.get_data_path()}/sample_data/{name}"


@functools.cache
def _photo() -> np.ndarray:
    """Grace Hopper's portrait (512x600 RGB), which matplotlib ships, in 0..1."""
    with Image.open(_sample_data("grace_hopper.jpg")) as photo:
        return np.asarray(photo.convert("RGB"), dtype=np.float32) / 255


@functools.cache
def _terrain() -> np.ndarray:
    """A hill-shaded elevation model (344x403) of the Jacksboro fault that matplotlib ships, in 0..1, one channel."""
    elevation = np.load(_sample_data("jacksboro_fault_dem.npz"))["elevation"].astype(np.float32)
    return LightSource(azdeg=315, altdeg=45).hillshade(elevation, vert_exag=0.05)[..., None].astype(np.float32)


def detection_target(scene: Scene) -> tuple[tv_tensors.Image, dict]:
    """torchvision's detection sample: boxes (XYXY, absolute pixels) of the visible masks, labels 0..K-1."""
    height, width = scene.image.shape[:2]
    boxes = masks_to_boxes(torch.from_numpy(scene.masks)) if len(scene.masks) else torch.zeros(0, 4)
    boxes[:, 2:] += 1  # masks_to_boxes gives the last pixel's index; a box ends at that pixel's far edge
    return (tv_tensors.Image(torch.from_numpy(scene.image).permute(2, 0, 1).contiguous()),
            {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width), dtype=torch.float32),
             "labels": torch.from_numpy(scene.labels)})


def multilabel_target(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """The image (uint8, C x H x W) and the multi-hot float vector of the classes with a kept instance in it
    (all zeros for a background-only image)."""
    present = torch.zeros(int(scene.num_classes), dtype=torch.float32)
    present[torch.from_numpy(scene.labels)] = 1.0
    return torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(), present



VOID = 255  # the mask value of pixels no class is asked for (every mask format's "ignore")


def segmentation_target(scene: Scene) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """An index mask (H, W) uint8: 0 background (distractors included: they are no class, a model must learn to
    leave them out), 1..K the visible pixels of each class, VOID (255) the remnants of instances dropped as too
    occluded (a shape too little seen to tell)."""
    mask = np.zeros(scene.image.shape[:2], np.uint8)
    for visible, label in zip(scene.masks, scene.labels):
        mask[visible] = label + 1
    mask[scene.dropped] = VOID
    return (tv_tensors.Image(torch.from_numpy(scene.image).permute(2, 0, 1).contiguous()),
            tv_tensors.Mask(torch.from_numpy(mask)))


TARGETS = {"detection": detection_target, "multilabel": multilabel_target, "segmentation": segmentation_target}
LEADING_CLASSES = {"segmentation": ("background",)}  # the names of a task's indices before the shapes' (mask value 0)


class ShapesDataset(Dataset):
    """`size` samples of one split, rendered on demand; (image, target) as `task` wants it, through `transform`."""

    def __init__(self, spec: ShapesSpec, split: str, size: int, task: str = "detection", transform=None,
                 name: str = "shapes"):
        self.spec, self.split, self.size, self.task, self.transform, self.name = spec, split, size, task, transform, name
        self.source = f"generated: nf_trainer.dataset.shapes ({split}, seed {spec.seed})"

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name} ({self.split}) has {self.size} samples, not index {index}")
        return render(self.spec, self.split, index)

    def __getitem__(self, index: int):
        sample = TARGETS[self.task](self.scene(index))
        return self.transform(*sample) if self.transform is not None else sample

    def digest(self) -> str:
        """Changes with any parameter that changes the images."""
        key = repr((VERSION, sorted(asdict(self.spec).items()), self.split, self.size, self.task))
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def shapes(name: str = "shapes", classes=ShapesSpec.classes, distractors=ShapesSpec.distractors,
           backgrounds=ShapesSpec.backgrounds, image_size: int = 64, train_size: int = 800, val_size: int = 200,
           seed: int = 0, max_objects: int = 3, max_distractors: int = 1, size=ShapesSpec.size,
           background_only: float = 0.1, max_overlap: float = 0.15, min_visible: float = 0.6, noise: float = 0.03,
           min_contrast: float = 0.25,
           shuffle_labels: bool = False, task: str = "detection", train_transform=None, eval_transform=None) -> DataSplits:
    spec = ShapesSpec(classes=tuple(classes), distractors=tuple(distractors or ()), backgrounds=tuple(backgrounds),
                      image_size=int(image_size), seed=int(seed), max_objects=int(max_objects),
                      max_distractors=int(max_distractors), size=(float(size[0]), float(size[1])),
                      background_only=float(background_only), max_overlap=float(max_overlap),
                      min_visible=float(min_visible), noise=float(noise),
                      min_contrast=float(min_contrast), shuffle_labels=bool(shuffle_labels))
    _check(spec, task, train_size, val_size)
    train = ShapesDataset(spec, "train", int(train_size), task, train_transform, name)
    val = ShapesDataset(spec, "val", int(val_size), task, eval_transform, name)
    channels, side = probe_shape(val, name)
    classes = [*LEADING_CLASSES.get(task, ()), *spec.classes]
    return DataSplits(train=train, eval={name: val}, classes=classes, in_channels=channels, image_size=side)


def _check(spec: ShapesSpec, task: str, train_size: int, val_size: int) -> None:
    def unknown(key: str, given, known) -> None:
        wrong = [g for g in given if g not in known]
        if wrong:
            raise NfTrainerError(f"dataset.{key}: unknown {', '.join(map(repr, wrong))}; choose from {', '.join(known)}")

    unknown("classes", spec.classes, SHAPES)
    unknown("distractors", spec.distractors, DISTRACTORS)
    unknown("backgrounds", spec.backgrounds, BACKGROUNDS)
    unknown("task", [task], TASKS)
    if len(set(spec.classes)) != len(spec.classes) or not spec.classes:
        raise NfTrainerError(f"dataset.classes must name distinct shapes, got {list(spec.classes)}")
    if not spec.backgrounds:
        raise NfTrainerError(f"dataset.backgrounds must name at least one of {', '.join(BACKGROUNDS)}")
    if not 0 < spec.size[0] <= spec.size[1] <= 1:
        raise NfTrainerError(f"dataset.size must be [low, high] with 0 < low <= high <= 1, got {list(spec.size)}")
    if spec.image_size < 16 or spec.max_objects < 1 or min(train_size, val_size) < 1:
        raise NfTrainerError("dataset=shapes needs image_size >= 16, max_objects >= 1, train_size and val_size >= 1")
