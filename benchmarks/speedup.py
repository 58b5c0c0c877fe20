"""Speed-up: nf_trainer with its default speed settings vs a naive loop in the style of the project's original design.

    python benchmarks/speedup.py

Same model (efficientnet_b0 from efficientnet-pytorch), same 64 px images (dataset=synthetic), batch
size, optimizer (AdamW) and epochs, on CPU:
(A) naive: fp32, NCHW, the model as built (memory-efficient Swish), the optimizer's default for-loop
    update, and per step `loss.item()`, `.cpu().numpy()` and scikit-learn metric calls;
(B) `python main.py model=efficientnet_b0 dataset=synthetic transforms=none` (in-process), defaults as
    shipped: channels_last, fused AdamW, native SiLU, device-side metrics, MLflow logging, checkpoints.
Throughput = training images / seconds of the epoch loop (train + evaluate). Target B/A >= 1.5.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common import Timer, alternate, compose_job, machine, parser, run_timed, set_threads, summary

OVERRIDES = ["model=efficientnet_b0", "dataset=synthetic", "transforms=none", "dataset.image_size=64",
             "dataset.train_size=640", "dataset.val_size=128", "trainer.max_epochs=1",
             "trainer.early_stopping.enabled=false", "trainer.device=cpu"]


def naive(out: Path) -> float:
    """(A): the loop as the original design wrote it: defaults everywhere, no speed settings."""
    import numpy as np
    import torch
    from efficientnet_pytorch import EfficientNet
    from sklearn.metrics import accuracy_score, f1_score
    from torch.utils.data import DataLoader

    from nf_trainer.dataset.synthetic import synthetic

    cfg = compose_job([*OVERRIDES, f"paths.output_root={out}"], out / "runs" / "naive")
    data = synthetic(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    train_loader = DataLoader(data.train, batch_size=cfg.loader.batch_size, shuffle=True)
    val_loader = DataLoader(data.eval["synthetic"], batch_size=cfg.loader.batch_size)
    model = EfficientNet.from_name("efficientnet-b0", num_classes=data.num_classes, image_size=data.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    criterion = torch.nn.CrossEntropyLoss()

    with Timer() as timer:
        for _ in range(cfg.trainer.max_epochs):
            model.train()
            running_loss, running_acc = 0.0, []
            for images, targets in train_loader:
                outputs = model(images)
                loss = criterion(outputs, targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                running_loss += loss.item()
                preds = outputs.argmax(1).cpu().numpy()
                running_acc.append(accuracy_score(targets.cpu().numpy(), preds))
            model.eval()
            all_preds, all_targets = [], []
            with torch.no_grad():
                for images, targets in val_loader:
                    all_preds.append(model(images).argmax(1).cpu().numpy())
                    all_targets.append(targets.cpu().numpy())
            y, p = np.concatenate(all_targets), np.concatenate(all_preds)
            accuracy_score(y, p), f1_score(y, p, average="macro")
    return cfg.trainer.max_epochs * len(data.train) / timer.seconds


def nf_trainer(out: Path) -> float:
    """(B): the job main.py runs, with the defaults; its epoch loop (engine.fit) is timed."""
    return run_timed(compose_job([*OVERRIDES, f"paths.output_root={out}"], out / "runs" / "nf_trainer"))


def main() -> None:
    args = parser(__doc__.splitlines()[0], repeats=5).parse_args()
    set_threads(args.threads)
    print(machine())
    print(f"== efficientnet_b0, 64 px: {' '.join(OVERRIDES)}")
    out = Path(tempfile.mkdtemp(prefix="nf_speedup-"))
    try:
        results = alternate(lambda: naive(out), lambda: nf_trainer(out), args.repeats, "naive", "nf_trainer")
        summary("speedup efficientnet_b0 64px", *results, target=1.5, what="throughput ratio B/A (nf_trainer / naive)")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
