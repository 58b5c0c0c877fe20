"""Batched per-sample augmentation (nf_trainer/transforms/batched.py) and the in-memory batches
(nf_trainer/dataset/tensor_batches.py): the same v2 semantics as per-sample calls, exact for given parameters
and equal in distribution over many samples; seeded, and exact on resume."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from nf_trainer.dataset.loaders import build_data
from nf_trainer.dataset.splits import TensorImageDataset
from nf_trainer.dataset.tensor_batches import TensorBatches
from nf_trainer.transforms import build_pipeline
from nf_trainer.transforms.batched import BatchedPipeline, affine, inverse_affine_matrices
from tests.conftest import compose_cfg

N = 4000  # samples per distribution check: a share's standard error is below 0.008


def per_sample(transform, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.stack([transform(image) for image in images])


def test_the_batched_affine_is_v2s_affine_for_the_same_parameters():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 9, 12), dtype=torch.uint8, generator=g)
    angle = torch.tensor([0.0, 10.0, -7.5, 33.0, 90.0, -4.0], dtype=torch.float64)
    tx = torch.tensor([0.0, 1, -2, 0, 3, 1], dtype=torch.float64)
    ty = torch.tensor([0.0, -1, 2, 1, 0, 2], dtype=torch.float64)
    scale = torch.tensor([1.0, 0.9, 1.2, 1.0, 1.1, 0.8], dtype=torch.float64)
    shear_x = torch.tensor([0.0, 5, 0, -8, 0, 3], dtype=torch.float64)
    shear_y = torch.tensor([0.0, 0, 4, 0, 0, -2], dtype=torch.float64)
    for image_set, interpolation in ((images, "nearest"), (images.float() / 255, "bilinear")):
        mode = v2.InterpolationMode(interpolation)
        batched = affine(image_set, inverse_affine_matrices(angle, tx, ty, scale, shear_x, shear_y), mode)
        for i in range(6):
            expected = F.affine(image_set[i], angle=float(angle[i]), translate=[int(tx[i]), int(ty[i])],
                                scale=float(scale[i]), shear=[float(shear_x[i]), float(shear_y[i])], interpolation=mode)
            torch.testing.assert_close(batched[i], expected, atol=1e-5 if interpolation == "bilinear" else 0, rtol=0)


def shares(images: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per output: changed at all, and the mean absolute change."""
    diff = (out.float() - images.float()).abs().flatten(1)
    return torch.stack([(diff.amax(1) > 0).float(), diff.mean(1)], 1)


@pytest.mark.parametrize("transform", [
    v2.RandomAffine(10, translate=[0.1, 0.1]),
    v2.RandomAffine(20, translate=[0.2, 0.1], scale=[0.8, 1.2], shear=[-10, 10, -5, 5]),
    v2.RandomHorizontalFlip(),
    v2.RandomVerticalFlip(p=0.3),
    v2.RandomErasing(p=0.25),
    v2.RandomErasing(p=0.8, value="random", scale=[0.1, 0.5]),
], ids=lambda t: type(t).__name__)
def test_batched_steps_match_per_sample_v2_in_distribution(transform):
    base = torch.linspace(0, 1, 8 * 8).view(1, 1, 8, 8)  # distinct pixel values: every move shows
    images = base.expand(N, 1, 8, 8).contiguous()
    reference = shares(images, per_sample(transform, images))
    batched = shares(images, BatchedPipeline([transform])(images, seed=1))
    for column, tolerance in ((0, 0.03), (1, 0.05)):
        ref, got = reference[:, column], batched[:, column]
        assert abs(ref.mean() - got.mean()) <= tolerance * max(ref.mean(), 1e-3) + 0.01, (column, ref.mean(), got.mean())
        assert abs(ref.std() - got.std()) <= 0.1 * ref.std() + 0.01


def test_random_crop_offsets_are_uniform_like_v2s():
    """The top-left pixel of a crop out of a 4-padded arange image names the offset: the same histogram."""
    index = torch.arange(1, 8 * 8 + 1, dtype=torch.float32).view(1, 1, 8, 8).expand(N, 1, 8, 8).contiguous()
    crop = v2.RandomCrop(8, padding=4)
    ref, got = per_sample(crop, index), BatchedPipeline([crop])(index, seed=2)
    offset = lambda out: torch.stack([(out[:, 0] > 0).float().argmax(1).amax(1), (out[:, 0] > 0).float().argmax(2).amax(1)], 1)
    for axis in (0, 1):
        a = torch.bincount(offset(ref)[:, axis], minlength=9).float() / N
        b = torch.bincount(offset(got)[:, axis], minlength=9).float() / N
        assert (a - b).abs().max() < 0.03, (a, b)
    kept = got[got > 0]
    assert torch.equal(torch.unique(kept), torch.unique(kept.round()))  # pixels moved whole, none invented


def test_a_batch_depends_only_on_its_seed_and_leaves_torchs_random_state_alone():
    pipeline = BatchedPipeline(build_pipeline(compose_cfg("transforms=cifar", "transforms/augment=trivialaugment",
                                                          "transforms/erasing=random_erasing").transforms.train))
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    state = torch.get_rng_state()
    first, again, other = pipeline(images, 5), pipeline(images, 5), pipeline(images, 6)
    assert torch.equal(torch.get_rng_state(), state)  # the per-sample TrivialAugment ran on a forked RNG
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == (16, 3, 32, 32) and first.dtype == torch.float32
    samples_differ = [not torch.equal(first[0], first[i]) for i in range(1, 16)]
    assert all(samples_differ)


def digits_data(*overrides: str):
    return build_data(compose_cfg(*overrides), torch.device("cpu"))


def test_in_memory_sets_get_tensor_batches_and_eval_batches_equal_the_per_sample_loaders():
    batched, plain = digits_data(), digits_data("loader.batched_transforms=false")
    assert isinstance(batched.loaders["train"], TensorBatches) and isinstance(batched.loaders["digits"], TensorBatches)
    assert not isinstance(plain.loaders["train"], TensorBatches)
    for (x, y), (xp, yp) in zip(batched.loaders["digits"], plain.loaders["digits"], strict=True):
        assert torch.equal(x, xp) and torch.equal(y, yp)  # eval: nothing random, the same values
    batched.generator.manual_seed(3), plain.generator.manual_seed(3)
    (_, y), (_, yp) = next(iter(batched.loaders["train"])), next(iter(plain.loaders["train"]))
    assert torch.equal(y, yp)  # the same shuffle from the same generator state
    assert len(batched.loaders["train"]) == len(plain.loaders["train"])


def epoch_batches(loader: TensorBatches, generator: torch.Generator, seed: int, skip: int = 0) -> list:
    generator.manual_seed(seed)
    batches = iter(loader)
    for _ in range(skip):  # what the loop does after a mid-epoch resume
        next(batches)
    torch.manual_seed(1234)  # whatever the global state is at that moment: it does not enter the batches
    return list(batches)


def test_a_resumed_epoch_gets_the_same_batches_as_an_unbroken_one():
    images = torch.rand(300, 1, 8, 8)
    generator = torch.Generator()
    train = build_pipeline(compose_cfg().transforms.train)
    loader = TensorBatches(TensorImageDataset(images, torch.arange(300) % 10, train), 32, torch.device("cpu"),
                           train.transforms, shuffle=True, generator=generator)
    whole, resumed = epoch_batches(loader, generator, 7), epoch_batches(loader, generator, 7, skip=4)
    assert len(whole) == 10 and len(resumed) == 6
    for (x, y), (xr, yr) in zip(whole[4:], resumed, strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    next_epoch = epoch_batches(loader, generator, 8)
    assert not torch.equal(whole[0][0], next_epoch[0][0])  # another epoch, another shuffle and augmentation
