"""Input path: images/s of one DataLoader worker on JPEG files, nf_trainer's pipeline vs a PIL baseline.

    python benchmarks/data.py

Both read the same generated JPEGs (ImageNet-like, 500x375, quality 90) and produce the same training
view, a normalized float (3, 224, 224) tensor:
(A) PIL: `Image.open(path).convert("RGB")` (torchvision's default ImageFolder loader), then
    transforms v1 on the PIL image: RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize;
(B) nf_trainer: `torchvision.io.decode_image` to a uint8 tensor, then transforms v2 on uint8:
    RandomResizedCrop, RandomHorizontalFlip, ToDtype(float32, scale=True), Normalize.
One thread, like a DataLoader worker (workers run torch.set_num_threads(1)). Target B/A >= 1.3.

    python benchmarks/data.py --to-gpu [--workers 8]      # on a CUDA machine

The whole loader path into the GPU, as `dataset=image_folder transforms=imagenet` builds it
(nf_trainer.dataset.loaders.build_data, pinned memory): (A) float32 batches normalized by the workers, then copied;
(B) `loader.normalize_on_device` (the CUDA default): uint8 batches copied, ToDtype/Normalize on the GPU.
Prints images/s delivered to the GPU and the ratio B/A (no target: it depends on the CPU/GPU balance).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common import Timer, alternate, machine, parser, summary

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_jpegs(folder: Path, count: int, size=(500, 375)) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields with edges and grain (compresses like photos, ~60-100 kB)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.int16)
        grain = rng.normal(0, 12, base.shape).astype(np.int16)
        image = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
        path = folder / f"class{i % 2}" / f"{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
        paths.append(path)
    return paths


def pil_pipeline():
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def load(path):
        with open(path, "rb") as f:
            return tf(Image.open(f).convert("RGB"))
    return load


def tensor_pipeline():
    """nf_trainer's reader (nf_trainer.dataset.images.load_image where the project has it) + v2 on uint8."""
    import torch
    from torchvision.transforms import v2

    try:
        from nf_trainer.dataset.images import load_image
    except ImportError:  # before the image-folder datasets landed: the same decode, inline
        from torchvision.io import ImageReadMode, decode_image, read_file

        def load_image(path, mode="RGB"):
            return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)

    tf = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    return lambda path: tf(load_image(path, "RGB"))


def throughput(load, paths) -> float:
    with Timer() as timer:
        for path in paths:
            out = load(path)
    assert out.shape == (3, 224, 224)
    return len(paths) / timer.seconds


def to_gpu(folder: Path, workers: int, on_device: bool) -> float:
    """Images/s of one pass over the train loader, batches on the GPU and normalized (waits for the GPU)."""
    import torch
    from common import compose_job

    from nf_trainer.dataset.loaders import build_data

    cfg = compose_job(["dataset=image_folder", f"dataset.root={folder / 'images'}", "dataset.val_fraction=0.1",
                       "transforms=imagenet", "loader.batch_size=64", f"loader.num_workers={workers}",
                       f"loader.normalize_on_device={on_device}", f"paths.output_root={folder}/out"], folder / "out")
    device = torch.device("cuda")
    loaders = build_data(cfg, device).loaders
    seen = 0
    with Timer() as timer:
        for images, _ in loaders["train"]:
            images = images.to(device, non_blocking=True)  # (A) copies here; (B) arrives on the GPU
            seen += images.shape[0]
        torch.cuda.synchronize()
    assert images.dtype == torch.float32 and images.is_cuda
    return seen / timer.seconds


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=7)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--to-gpu", action="store_true", help="time the loader path into a CUDA GPU instead")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers for --to-gpu")
    args = p.parse_args()
    import torch

    if args.to_gpu:
        if not torch.cuda.is_available():
            raise SystemExit("data.py --to-gpu: no CUDA GPU on this machine")
        folder = Path(tempfile.mkdtemp(prefix="nf_data-"))
        try:
            make_jpegs(folder / "images", args.images)
            print(f"{machine()}; {torch.cuda.get_device_name()}; {args.images} JPEGs, {args.workers} workers, batch 64")
            results = alternate(lambda: to_gpu(folder, args.workers, False), lambda: to_gpu(folder, args.workers, True),
                                args.repeats, "host normalize", "uint8 + GPU normalize")
            summary("data-to-gpu", *results, target=0.0, what="images/s into the GPU, ratio B/A")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return

    torch.set_num_threads(args.threads or 1)  # one DataLoader worker
    print(machine())
    folder = Path(tempfile.mkdtemp(prefix="nf_data-"))
    try:
        paths = make_jpegs(folder, args.images)
        kb = sum(p.stat().st_size for p in paths) / len(paths) / 1000
        print(f"{len(paths)} JPEGs, 500x375, {kb:.0f} kB on average; output (3, 224, 224) float32, normalized")
        pil, tensor = pil_pipeline(), tensor_pipeline()
        results = alternate(lambda: throughput(pil, paths), lambda: throughput(tensor, paths), args.repeats,
                            "PIL + v1", "decode_image + v2 uint8")
        summary("data", *results, target=1.3, what="images/s ratio B/A (nf_trainer / PIL) per worker")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
