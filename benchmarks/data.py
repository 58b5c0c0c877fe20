"""Input path benchmarks: per-worker decoding, the loader against the decode-only ceiling, the default job
against an older revision, the decoded cache, and (on CUDA) the loader feeding a resnet50 training loop.

    python benchmarks/data.py [--case pil]         # one worker: decode_image + v2 on uint8 vs PIL + v1 (JPEG -> 224 crop)
    python benchmarks/data.py --case loader        # the CPU loader's img/s per worker / the decode-only ceiling
    python benchmarks/data.py --case default-job   # `python main.py` training time, this tree / --baseline (git revision)
    python benchmarks/data.py --case cache         # epoch time with dataset.cache=memory / without, 10,000 28x28 PNGs
    python benchmarks/data.py --to-gpu             # needs CUDA: resnet50 bf16 fed from JPEGs / on a batch already there

pil: both read the same generated JPEGs (ImageNet-like, 500x375, quality 90) and produce the same training
view, a normalized float (3, 224, 224) tensor: (A) `Image.open(path).convert("RGB")` then transforms v1
(RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize); (B) `torchvision.io.decode_image` to uint8,
then v2 (RandomResizedCrop, RandomHorizontalFlip, ToDtype, Normalize). One thread. Target B/A >= 1.3.

loader: (A) the ceiling: `torchvision.io.decode_jpeg` (libjpeg-turbo) alone on the files' bytes, in memory, one
thread; (B) the train loader that `dataset=image_folder transforms=imagenet` builds, one worker
(`loader.num_workers=1`, which runs one torch thread), batches of 64: read, decode, crop, flip, normalize,
collate; timed on the second pass of a persistent worker (its start is a cost per epoch, not per image).
Target B/A >= 0.8. `--override loader.normalize_on_device=true` (the CUDA default) measures the worker
that stops at uint8 crops; B then includes the batched ToDtype/Normalize in the main process.

default-job: (A) `python main.py` of the --baseline revision (unpacked with `git archive`), (B) of this tree,
each in a fresh process and output root; the time from the first epoch's start to the last epoch's end, read
from the job log; the ratio is B/A (target <= 0.35), and every run's best val accuracy is printed (>= 0.97).

cache: 10,000 generated 28x28 grayscale PNGs in 10 classes, `dataset=image_folder dataset.mode=L
transforms=digits transforms.image_size=28`, one epoch: (A) `dataset.cache=none`, (B) `dataset.cache=memory`
(decoded before the epoch starts). Epoch-time ratio B/A, target <= 0.3. `--override model.width=8` (both
sides) shrinks the model, whose own steps bound the cached epoch.

--to-gpu: resnet50, 224 px, bf16 autocast, channels_last, fused AdamW, batch 64: (A) train steps on one
synthetic batch already on the GPU, (B) the same steps fed by the train loader of a JPEG folder
(`loader.decode=gpu`: the workers read bytes, nvJPEG decodes the batch, the augmentation runs on the GPU).
Images/s ratio B/A, target >= 0.8. Refuses in one line without CUDA.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common import ROOT, Timer, alternate, machine, parser, set_threads, summary

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


def loader_pass(folder: Path, workers: int, *overrides: str) -> float:
    """Images/s of the train loader of an image folder (the job's own build_data) in steady state: its second pass,
    with persistent workers, so a worker's start (a fixed cost per epoch, not per image) is not counted."""
    import torch
    from common import compose_job

    from nf_trainer.dataset.loaders import build_data

    cfg = compose_job(["dataset=image_folder", f"dataset.root={folder}", "dataset.val_fraction=0.1",
                       "transforms=imagenet", "loader.batch_size=64", f"loader.num_workers={workers}",
                       f"loader.persistent_workers={workers > 0}", f"paths.output_root={folder.parent}/out", *overrides],
                      folder.parent / "out")
    device = torch.device("cuda" if torch.cuda.is_available() and "loader.decode=gpu" in overrides else "cpu")
    loader = build_data(cfg, device).loaders["train"]
    for _ in loader:
        pass
    seen = 0
    with Timer() as timer:
        for images, _ in loader:
            seen += images.shape[0]
    return seen / timer.seconds


def decode_ceiling(paths: list[Path]) -> float:
    """libjpeg-turbo through torchvision.io.decode_jpeg alone, one thread, on bytes already in memory."""
    import torch
    from torchvision.io import decode_jpeg

    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    with Timer() as timer:
        for encoded in data:
            decode_jpeg(encoded)
    return len(data) / timer.seconds


def training_seconds(log_text: str) -> tuple[float, int, float]:
    """(first epoch's start to the last epoch's end, epochs, best val accuracy) from a job's main.log."""
    import re
    from datetime import datetime

    pattern = re.compile(r"^\[([\d-]+ [\d:,]+)\]\[nf_trainer\]\[INFO\] - epoch (\d+)/\d+ .*\((\d+\.\d)s\)$", re.M)
    epochs = [(datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp(), float(d)) for t, _, d in pattern.findall(log_text)]
    accuracy = max(float(v) for v in re.findall(r"val/\w+/accuracy ([\d.]+)", log_text))
    return epochs[-1][0] - (epochs[0][0] - epochs[0][1]), len(epochs), accuracy


def default_job(tree: Path, out: Path, label: str, threads: int | None) -> float:
    import os
    import subprocess
    import sys

    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if threads:  # torch's threads in the job (on shared cores, two threads busy-wait each other)
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run([sys.executable, "main.py", f"paths.output_root={out}", "mlflow.log_model=false"], cwd=tree,
                   env=env, check=True, capture_output=True)
    log = sorted(out.glob("runs/*/*/main.log"))[-1].read_text()
    seconds, epochs, accuracy = training_seconds(log)
    print(f"    {label}: {seconds:.2f} s for {epochs} epochs, best val accuracy {accuracy:.4f}", flush=True)
    shutil.rmtree(out / "runs", ignore_errors=True)
    return seconds


def make_pngs(folder: Path, count: int) -> None:
    """28x28 grayscale PNGs in 10 classes: a class's blurred pattern under noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 256, (10, 7, 7), dtype=np.uint8)
    for i in range(count):
        label = i % 10
        base = np.asarray(Image.fromarray(patterns[label]).resize((28, 28), Image.BILINEAR), dtype=np.int16)
        pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        path = folder / str(label) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)


def epoch_throughput(folder: Path, cache: str, *overrides: str) -> float:
    from common import compose_job, run_timed

    out = folder.parent / f"out-{cache}"
    cfg = compose_job(["dataset=image_folder", f"dataset.root={folder}", "dataset.mode=L", "transforms=digits",
                       "transforms.image_size=28", f"dataset.cache={cache}", "trainer.max_epochs=1",
                       "trainer.progress_bar=false", "mlflow.log_model=false", f"paths.output_root={out}", *overrides],
                      out / "run")
    return run_timed(cfg)


def gpu_loop(folder: Path | None, workers: int, steps: int) -> float:
    """Images/s of resnet50 bf16 train steps: on one synthetic batch on the GPU (folder None), or fed by the loader."""
    import itertools

    import torch
    import torchvision

    device = torch.device("cuda")
    model = torchvision.models.resnet50(num_classes=2).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    if folder is None:
        batch = (torch.randn(64, 3, 224, 224, device=device), torch.randint(2, (64,), device=device))
        batches = itertools.repeat(batch)
    else:
        from common import compose_job

        from nf_trainer.dataset.loaders import build_data

        cfg = compose_job(["dataset=image_folder", f"dataset.root={folder}", "dataset.val_fraction=0.1",
                           "transforms=imagenet", "loader.batch_size=64", f"loader.num_workers={workers}",
                           "loader.persistent_workers=true", "loader.decode=gpu", "loader.drop_last=true",
                           f"paths.output_root={folder.parent}/out"], folder.parent / "out")
        loader = build_data(cfg, device).loaders["train"]
        batches = itertools.chain.from_iterable(itertools.repeat(loader))

    def step(images, targets):
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        with torch.autocast("cuda", torch.bfloat16):
            loss = loss_fn(model(images), targets.to(device, non_blocking=True))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    batches = iter(batches)
    for _ in range(5):
        step(*next(batches))
    torch.cuda.synchronize()
    with Timer() as timer:
        for _ in range(steps):
            step(*next(batches))
        torch.cuda.synchronize()
    return steps * 64 / timer.seconds


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=None)
    p.add_argument("--case", choices=["pil", "loader", "default-job", "cache"], default="pil")
    p.add_argument("--images", type=int, default=None, help="JPEGs (pil, loader, --to-gpu) or PNGs (cache) generated")
    p.add_argument("--to-gpu", action="store_true", help="resnet50 on a CUDA GPU fed from JPEGs / from a batch on the GPU")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers for --to-gpu")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="loader: a config override for the loader (B); cache: for both runs")
    p.add_argument("--baseline", default="1cf632f", help="default-job: the git revision to compare with")
    args = p.parse_args()
    import torch

    if args.to_gpu and not torch.cuda.is_available():
        raise SystemExit("data.py --to-gpu: no CUDA GPU on this machine")
    folder = Path(tempfile.mkdtemp(prefix="nf_data-"))
    try:
        if args.to_gpu:
            make_jpegs(folder / "images", args.images or 2000)
            print(f"{machine()}; {torch.cuda.get_device_name()}; {args.workers} workers, batch 64, resnet50 bf16")
            results = alternate(lambda: gpu_loop(None, args.workers, 60), lambda: gpu_loop(folder / "images", args.workers, 60),
                                args.repeats or 3, "batch on the GPU", "fed from JPEGs")
            summary("data-to-gpu", *results, target=0.8, what="images/s ratio B/A (JPEG folder / synthetic on GPU)")
        elif args.case == "pil":
            torch.set_num_threads(args.threads or 1)  # one DataLoader worker
            print(machine())
            paths = make_jpegs(folder, args.images or 200)
            kb = sum(p.stat().st_size for p in paths) / len(paths) / 1000
            print(f"{len(paths)} JPEGs, 500x375, {kb:.0f} kB on average; output (3, 224, 224) float32, normalized")
            pil, tensor = pil_pipeline(), tensor_pipeline()
            results = alternate(lambda: throughput(pil, paths), lambda: throughput(tensor, paths), args.repeats or 7,
                                "PIL + v1", "decode_image + v2 uint8")
            summary("data", *results, target=1.3, what="images/s ratio B/A (nf_trainer / PIL) per worker")
        elif args.case == "loader":
            torch.set_num_threads(1)  # the ceiling on one thread, as the worker runs
            paths = make_jpegs(folder / "images", args.images or 640)
            print(f"{machine()}; {len(paths)} JPEGs 500x375; one loader worker, batch 64, transforms=imagenet", *args.override)
            results = alternate(lambda: decode_ceiling(paths),
                                lambda: loader_pass(folder / "images", 1, "loader.decode=cpu", *args.override),
                                args.repeats or 5, "decode_jpeg alone", "loader, 1 worker")
            summary("data-loader", *results, target=0.8, what="images/s ratio B/A (loader per worker / decode ceiling)")
        elif args.case == "default-job":
            import subprocess

            baseline = folder / "baseline"
            baseline.mkdir()
            archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
            print(f"{machine()}; python main.py: A = {args.baseline}, B = this tree (training time, lower is better)")
            results = alternate(lambda: default_job(baseline, folder / "out-a", "A", args.threads),
                                lambda: default_job(ROOT, folder / "out-b", "B", args.threads), args.repeats or 5, args.baseline,
                                "this tree", unit="s")
            summary("default-job", *results, target=0.35, what="training time ratio B/A (this tree / baseline)", at_most=True)
        else:
            set_threads(args.threads)
            make_pngs(folder / "pngs", args.images or 10_000)
            print(f"{machine()}; {args.images or 10_000} PNGs 28x28 L; one epoch, transforms=digits image_size=28",
                  *args.override)
            results = alternate(lambda: 1000 / epoch_throughput(folder / "pngs", "none", *args.override),
                                lambda: 1000 / epoch_throughput(folder / "pngs", "memory", *args.override),
                                args.repeats or 3, "cache=none", "cache=memory", unit="s per 1000 images")
            summary("data-cache", *results, target=0.3, what="epoch time ratio B/A (cache=memory / none)", at_most=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
