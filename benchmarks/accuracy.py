"""Accuracy on an image folder: nf_trainer against a plain torchvision ImageFolder loop, over several seeds.

    python benchmarks/accuracy.py                       # 5 seeds each, 5 epochs, one thread
    python benchmarks/accuracy.py --seeds 3 --epochs 3  # shorter

The folder is generated: 28x28 grayscale PNGs made from scikit-learn's 8x8 digits (upscaled to 20x20, placed
up to 2 px off the centre of 28x28, Gaussian pixel noise of sigma 12), as DIR/train/<class>/ + DIR/val/<class>/;
the val images come from other digits than the train ones.
(a) the plain loop: torchvision `ImageFolder` (PIL, `convert("L")`), the same per-sample transforms as
    `transforms=digits` (ToImage, ToDtype, RandomAffine(10, translate 0.1), Normalize(0.5, 0.5)), SimpleCNN,
    AdamW(lr 3e-3, weight decay 0.01), StepLR(5, 0.5), batch 64, cross-entropy, shuffled;
(b) nf_trainer: `python main.py dataset=image_folder dataset.root=DIR dataset.mode=L transforms.image_size=28
    trainer.max_epochs=E seed=S` (in this process, MLflow in a temp store).
Both report the best val accuracy over the epochs; printed: each seed, then mean ± std (sample) of each side
and Welch's t statistic of the difference (|t| < 2: no difference this study can see).
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from common import Timer, compose_job, machine, parser, set_threads

# variants of each digit: 10,059 train and 1,080 val images, the size of the folder the issue was seen on (at
# 1437 train images, 5 epochs leave both sides near chance: nothing to compare); 10 runs take ~40 min on a core
PER_TRAIN_DIGIT, PER_VAL_DIGIT = 7, 3


def make_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(index, test_size=0.2, stratify=digits.target, random_state=0)
    rng = np.random.default_rng(0)
    for split, chosen, variants in (("train", train_idx, PER_TRAIN_DIGIT), ("val", val_idx, PER_VAL_DIGIT)):
        for i in chosen:
            small = Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).resize((20, 20), Image.BILINEAR)
            for v in range(variants):
                canvas = np.zeros((28, 28), dtype=np.float32)
                dy, dx = rng.integers(2, 7, size=2)
                canvas[dy:dy + 20, dx:dx + 20] = np.asarray(small, dtype=np.float32)
                canvas += rng.normal(0, 12, canvas.shape)
                path = root / split / str(digits.target[i]) / f"{i:04d}-{v}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), mode="L").save(path)
    return root


def plain_loop(folder: Path, seed: int, epochs: int) -> float:
    """(a): the loop a researcher writes with torchvision's ImageFolder."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader
    from torchmetrics.classification import MulticlassAccuracy
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from nf_trainer.model.simple_cnn import SimpleCNN

    torch.manual_seed(seed)
    def gray(path):
        with Image.open(path) as im:
            return im.convert("L")

    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    normalize = v2.Normalize([0.5], [0.5])
    train_set = ImageFolder(str(folder / "train"), loader=gray,
                            transform=v2.Compose([*to_float, v2.RandomAffine(10, translate=(0.1, 0.1)), normalize]))
    val_set = ImageFolder(str(folder / "val"), loader=gray, transform=v2.Compose([*to_float, normalize]))
    train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=64)
    model = SimpleCNN(num_classes=len(train_set.classes), in_channels=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.999), weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    accuracy = MulticlassAccuracy(len(train_set.classes), average="micro")
    best = 0.0
    for _ in range(epochs):
        model.train()
        for images, targets in train_loader:
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        accuracy.reset()
        with torch.inference_mode():
            for images, targets in val_loader:
                accuracy.update(model(images), targets)
        best = max(best, accuracy.compute().item())
    return best


def nf_trainer_run(folder: Path, seed: int, epochs: int, out: Path) -> float:
    """(b): the job main.py runs; its objective is the best val accuracy."""
    from nf_trainer.sweep.job import run_hydra_job

    cfg = compose_job(["dataset=image_folder", f"dataset.root={folder}", "dataset.mode=L",
                       "transforms.image_size=28", f"trainer.max_epochs={epochs}", f"seed={seed}",
                       "objective.metric=accuracy", "trainer.progress_bar=false", "mlflow.log_model=false",
                       f"paths.output_root={out}", f"mlflow.run_name=accuracy-seed{seed}"], out / "runs" / f"seed{seed}")
    return run_hydra_job(cfg)


def describe(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=None)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args()
    set_threads(args.threads or 1)
    print(machine())
    work = Path(tempfile.mkdtemp(prefix="nf_accuracy-"))
    try:
        folder = make_folder(work / "data")
        print(f"folder: {sum(1 for _ in (folder / 'train').rglob('*.png'))} train, "
              f"{sum(1 for _ in (folder / 'val').rglob('*.png'))} val images (28x28, L)", flush=True)
        plain, tool = [], []
        for seed in range(args.seeds):
            with Timer() as ta:
                plain.append(plain_loop(folder, seed, args.epochs))
            with Timer() as tb:
                tool.append(nf_trainer_run(folder, seed, args.epochs, work / "outputs"))
            print(f"seed {seed}: plain loop {plain[-1]:.4f} ({ta.seconds:.0f} s), nf_trainer {tool[-1]:.4f} "
                  f"({tb.seconds:.0f} s)", flush=True)
        welch = (statistics.mean(tool) - statistics.mean(plain)) / (
            (statistics.variance(tool) / len(tool) + statistics.variance(plain) / len(plain)) ** 0.5 or float("nan"))
        print(f"best val accuracy over {args.seeds} seeds, {args.epochs} epochs: plain loop {describe(plain)}, "
              f"nf_trainer {describe(tool)}; Welch t = {welch:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
