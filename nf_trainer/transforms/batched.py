"""A v2 pipeline run on whole batches (N, C, H, W) on the training device, random parameters drawn per sample.

    pipeline = BatchedPipeline(build_pipeline(cfg.transforms.train))   # the same v2 objects the presets build
    images = pipeline(batch, seed)                                     # the batch's parameters follow from seed

Each v2 step keeps its meaning: `RandomAffine`, `RandomCrop`, `RandomHorizontalFlip`/`RandomVerticalFlip`
and `RandomErasing` draw their parameters for every sample at once, from the same distributions as v2's
`make_params`, and apply them with one batched kernel (the same inverse matrix, grid and `grid_sample` call
as v2's affine). Steps without random parameters (Resize, CenterCrop, ToDtype, Normalize, ...) run on the
whole batch as they are. Any other step (RandAugment, TrivialAugment, ...) runs per sample, on the device,
with torch's RNG forked and seeded from the batch's seed, so the global random state is left as it was.

Hand-written rather than kornia.augmentation: kornia 0.9's RandomAffine took 0.82 ms per 64x1x8x8 batch against
0.17 ms here (one CPU thread), and it neither rounds translations nor samples v2's grid (docs/performance.md).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.functional import grid_sample, pad
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

# Steps whose output does not depend on random numbers: they are applied to the whole batch as they are.
DETERMINISTIC = (v2.Resize, v2.CenterCrop, v2.ToDtype, v2.Normalize, v2.Grayscale, v2.ToPureTensor,
                 v2.ConvertImageDtype, v2.Identity)


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    device = generator.device
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64) * (high - low) + low


def randint(n: int, high: torch.Tensor | int, generator: torch.Generator) -> torch.Tensor:
    """Per sample an integer in [0, high) (high per sample or one for all), as torch.randint would draw it."""
    return (torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64) * high).long()


def affine_params(t: v2.RandomAffine, n: int, height: int, width: int, generator: torch.Generator):
    """(angle, tx, ty, scale, shear_x, shear_y) per sample, distributed as v2.RandomAffine.make_params draws them."""
    angle = uniform(n, *t.degrees, generator)
    zeros = torch.zeros(n, dtype=torch.float64, device=generator.device)
    tx = ty = zeros
    if t.translate is not None:  # v2 rounds translations to whole pixels
        tx = uniform(n, -t.translate[0] * width, t.translate[0] * width, generator).round()
        ty = uniform(n, -t.translate[1] * height, t.translate[1] * height, generator).round()
    scale = uniform(n, *t.scale, generator) if t.scale is not None else zeros + 1
    shear_x = shear_y = zeros
    if t.shear is not None:
        shear_x = uniform(n, t.shear[0], t.shear[1], generator)
        if len(t.shear) == 4:
            shear_y = uniform(n, t.shear[2], t.shear[3], generator)
    return angle, tx, ty, scale, shear_x, shear_y


def inverse_affine_matrices(angle, tx, ty, scale, shear_x, shear_y, center=(0.0, 0.0)) -> torch.Tensor:
    """(N, 2, 3): torchvision's `_get_inverse_affine_matrix` for every sample at once (degrees in, pixels)."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    cx, cy = center
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m0, m1, m3, m4 = d / scale, -b / scale, -c / scale, a / scale
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def affine(images: torch.Tensor, matrices: torch.Tensor, interpolation=InterpolationMode.NEAREST, fill=None):
    """v2.functional.affine_image with one inverse matrix per image: the same grid, the same grid_sample."""
    n, channels, height, width = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    theta = matrices.to(dtype)
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=images.device, dtype=dtype)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=images.device, dtype=dtype)
    t = theta[:, :, :, None, None]  # torchvision's _affine_grid: pixel offsets from the centre through theta, normalized
    gx = (t[:, 0, 0] * xs + t[:, 0, 1] * ys[:, None] + t[:, 0, 2]) / (0.5 * width)
    gy = (t[:, 1, 0] * xs + t[:, 1, 1] * ys[:, None] + t[:, 1, 2]) / (0.5 * height)
    grid = torch.stack([gx, gy], dim=-1)
    float_images = images if images.dtype == dtype else images.to(dtype)
    if fill is not None and not any(list(fill) if isinstance(fill, (list, tuple)) else [fill]):
        fill = None  # a zero fill is what grid_sample's zero padding gives: no mask channel needed
    if fill is not None:
        float_images = torch.cat([float_images, torch.ones_like(float_images[:, :1])], dim=1)
    mode = InterpolationMode(interpolation).value
    out = grid_sample(float_images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if fill is not None:
        out, mask = out[:, :-1], out[:, -1:].expand(-1, channels, -1, -1)
        values = torch.tensor(fill if isinstance(fill, (list, tuple)) else [float(fill)], dtype=dtype,
                              device=images.device).view(1, -1, 1, 1).expand_as(out)
        out = torch.where(mask < 0.5, values, out) if mode == "nearest" else (out - values) * mask + values
    return out if images.dtype == dtype else out.round().to(images.dtype)


def random_affine(t: v2.RandomAffine, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, _, height, width = images.shape
    center = (0.0, 0.0) if t.center is None else (t.center[0] - width * 0.5, t.center[1] - height * 0.5)
    matrices = inverse_affine_matrices(*affine_params(t, n, height, width, generator), center=center)
    return affine(images, matrices, t.interpolation, _fill_value(t.fill))


def random_crop(t: v2.RandomCrop, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """v2.RandomCrop: pad (padding, pad_if_needed), then a crop of t.size at a random offset per sample."""
    if t.padding is not None:
        left, right, top, bottom = _pad_sides(t.padding)
        images = _pad(images, (left, right, top, bottom), t)
    crop_h, crop_w = t.size
    if t.pad_if_needed:
        extra_w, extra_h = max(0, crop_w - images.shape[-1]), max(0, crop_h - images.shape[-2])
        if extra_w or extra_h:
            images = _pad(images, (extra_w, extra_w, extra_h, extra_h), t)
    n, _, height, width = images.shape
    top = randint(n, height - crop_h + 1, generator)
    left = randint(n, width - crop_w + 1, generator)
    rows = (top[:, None] + torch.arange(crop_h, device=images.device))[:, :, None]  # (N, h, 1)
    cols = (left[:, None] + torch.arange(crop_w, device=images.device))[:, None, :]  # (N, 1, w)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _pad_sides(padding) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) from v2's padding (int, [all], [left/right, top/bottom] or [l, t, r, b])."""
    padding = [padding] if isinstance(padding, int) else list(padding)
    if len(padding) == 1:
        return padding[0], padding[0], padding[0], padding[0]
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return padding[0], padding[2], padding[1], padding[3]


def _pad(images: torch.Tensor, sides, t) -> torch.Tensor:
    mode = t.padding_mode
    if mode == "constant":
        return pad(images, sides, mode="constant", value=float(_fill_value(t.fill) or 0))
    float_images = images if images.is_floating_point() else images.float()
    out = pad(float_images, sides, mode="replicate" if mode == "edge" else mode)
    return out if images.is_floating_point() else out.to(images.dtype)


def _fill_value(fill):
    """v2's fill argument (a number, a list, or a dict per input type) for image tensors."""
    if isinstance(fill, dict):
        fill = fill.get(torch.Tensor, fill.get("others"))
    return fill


def random_flip(t, images: torch.Tensor, generator: torch.Generator, dim: int) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < t.p
    return torch.where(flip[:, None, None, None], images.flip(dim), images)


def random_erasing(t: v2.RandomErasing, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """v2.RandomErasing per sample: with probability p, a box of random area (scale) and aspect (ratio), up to
    ten tries to fit, set to `value` (0, a per-channel value, or normal noise for 'random')."""
    n, channels, height, width = images.shape
    area, tries = height * width, 10
    erase = torch.rand(n, generator=generator, device=generator.device) < t.p
    log_ratio = torch.log(torch.tensor(t.ratio, dtype=torch.float64))
    target_area = area * uniform(n * tries, t.scale[0], t.scale[1], generator).view(n, tries)
    aspect = torch.exp(uniform(n * tries, float(log_ratio[0]), float(log_ratio[1]), generator)).view(n, tries)
    h = torch.sqrt(target_area * aspect).round().long()
    w = torch.sqrt(target_area / aspect).round().long()
    fits = (h < height) & (w < width)
    first = torch.argmax(fits.int(), dim=1)  # v2 keeps the first try that fits
    found = fits.any(dim=1)
    h, w = h.gather(1, first[:, None])[:, 0], w.gather(1, first[:, None])[:, 0]
    top = randint(n, (height - h + 1).clamp(min=1), generator)
    left = randint(n, (width - w + 1).clamp(min=1), generator)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    inside = ((rows[None, :] >= top[:, None]) & (rows[None, :] < (top + h)[:, None]))[:, :, None] & \
             ((cols[None, :] >= left[:, None]) & (cols[None, :] < (left + w)[:, None]))[:, None, :]
    mask = (inside & (erase & found)[:, None, None])[:, None]  # (N, 1, H, W)
    if t.value is None:  # value='random': standard normal noise
        values = torch.randn(images.shape, generator=generator, device=generator.device).to(images.dtype)
    else:
        values = torch.tensor(t.value, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        values = values.expand(n, channels if values.shape[1] == 1 else -1, height, width)
    return torch.where(mask, values, images)


BATCHED: dict[type, Callable] = {
    v2.RandomAffine: random_affine,
    v2.RandomCrop: random_crop,
    v2.RandomHorizontalFlip: lambda t, x, g: random_flip(t, x, g, -1),
    v2.RandomVerticalFlip: lambda t, x, g: random_flip(t, x, g, -2),
    v2.RandomErasing: random_erasing,
}


class BatchedPipeline:
    """The steps of a v2.Compose (or a list of v2 transforms) applied to whole batches.

    `pipeline(images, seed)`: the random parameters of a batch depend only on `seed` (a generator on the
    images' device is seeded with it), never on torch's global random state, which stays untouched."""

    def __init__(self, pipeline):
        self.steps = list(getattr(pipeline, "transforms", pipeline) or [])
        self.generators: dict[torch.device, torch.Generator] = {}

    @property
    def is_random(self) -> bool:
        return not all(isinstance(s, DETERMINISTIC) or is_deterministic(s) for s in self.steps)

    def __call__(self, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
        if images.device not in self.generators:
            self.generators[images.device] = torch.Generator(images.device)
        generator = self.generators[images.device].manual_seed(seed)
        for index, step in enumerate(self.steps):
            if type(step) in BATCHED:
                images = BATCHED[type(step)](step, images, generator)
            elif isinstance(step, DETERMINISTIC) or is_deterministic(step):
                images = step(images)
            else:  # no batched version: per sample, torch's RNG forked, seeded from (seed, step), put back after
                devices = [images.device] if images.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices, device_type=images.device.type):
                    torch.manual_seed((seed * 31 + index) % 2**63)
                    images = torch.stack([step(image) for image in images])
        return images


def is_deterministic(step) -> bool:
    """A Compose of deterministic steps (e.g. nf_trainer.transforms.resize_center_crop)."""
    return isinstance(step, v2.Compose) and all(isinstance(s, DETERMINISTIC) or is_deterministic(s)
                                                for s in step.transforms)
