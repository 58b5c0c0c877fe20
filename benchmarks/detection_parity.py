"""Detection parity: the engine's detection epoch against a plain loop in the style of torchvision's references.

    python benchmarks/detection_parity.py                 # 5 alternated pairs
    python benchmarks/detection_parity.py --repeats 3 --threads 1 --train-size 96

(a) torchvision's references/detection loop, written plainly: `loss_dict = model(images, targets)`, the sum,
    backward, step; then evaluation with torchmetrics' MeanAveragePrecision (faster_coco_eval) over the val
    set, computed once. No logging.
(b) nf_trainer's `run` (what `python main.py task=detection` runs, here in-process): the task's steps, per-step
    loss parts logged, the pictures (at most ~2% of the time), checkpoints, early-stopping checks, MLflow.
Same model (tiny_detector), data (dataset=shapes), transforms, batch size, epochs and optimizer.
Throughput = training images / seconds of the epoch loop (train + evaluate), setup excluded on both sides.
Target B/A >= 0.95.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from common import Timer, alternate, compose_job, machine, parser, run_timed, set_threads, summary

TARGET = 0.95


def job_config(out: Path, tag: str, args):
    return compose_job(["task=detection", f"dataset.train_size={args.train_size}", f"dataset.val_size={args.val_size}",
                        f"trainer.max_epochs={args.epochs}", "trainer.early_stopping.enabled=false",
                        "mlflow.log_model=false", "trainer.device=cpu", f"paths.output_root={out}",
                        f"mlflow.run_name=detection-{tag}"], out / "runs" / tag)


def references_loop(out: Path, args) -> float:
    """(a): the loop torchvision's detection references run, objects from the same config nodes as (b)."""
    import torch
    from torch.utils.data import DataLoader
    from torchmetrics.detection import MeanAveragePrecision

    from nf_trainer import create_instance
    from nf_trainer.core.device import seed_everything
    from nf_trainer.model.build import build_model, data_facts
    from nf_trainer.transforms import build_transforms

    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # as the task sets it: no COCO tables in the log
    cfg = job_config(out, "references", args)
    seed_everything(cfg.seed, False)
    train_tf, eval_tf = build_transforms(cfg.transforms)
    data = create_instance(cfg.dataset, train_transform=train_tf, eval_transform=eval_tf)
    (val,) = data.eval.values()
    collate = lambda batch: tuple(zip(*batch))  # noqa: E731  (references/detection/utils.collate_fn)
    train_loader = DataLoader(data.train, batch_size=cfg.loader.batch_size, shuffle=True, collate_fn=collate)
    val_loader = DataLoader(val, batch_size=cfg.loader.batch_size, collate_fn=collate)
    model = build_model(cfg.model, {**data_facts(data), "num_classes": data.num_classes + 1})
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    metric = MeanAveragePrecision(backend="faster_coco_eval", class_metrics=True)

    def for_model(target):
        return {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"] + 1}

    with Timer() as timer:
        for _ in range(cfg.trainer.max_epochs):
            model.train()
            for images, targets in train_loader:
                loss_dict = model([i.as_subclass(torch.Tensor) for i in images], [for_model(t) for t in targets])
                loss = sum(loss_dict.values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            metric.reset()
            with torch.inference_mode():
                for images, targets in val_loader:
                    metric.update(model([i.as_subclass(torch.Tensor) for i in images]), [for_model(t) for t in targets])
            metric.compute()
    return cfg.trainer.max_epochs * len(data.train) / timer.seconds


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--train-size", type=int, default=160)
    p.add_argument("--val-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    print(machine())
    print(f"== tiny_detector on dataset=shapes: {args.train_size} train / {args.val_size} val images, {args.epochs} "
          f"epoch(s), the task's default batch size and optimizer")
    out = Path(tempfile.mkdtemp(prefix="nf_detection_parity-"))
    try:
        results = alternate(lambda: references_loop(out, args), lambda: run_timed(job_config(out, "nf_trainer", args)),
                            args.repeats, "references loop", "nf_trainer")
        summary("detection parity", *results, target=TARGET, what="throughput ratio B/A (nf_trainer / references loop)")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
