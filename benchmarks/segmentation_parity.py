"""Segmentation parity: an epoch of nf_trainer's engine on task=segmentation against a plain PyTorch loop.

    python benchmarks/segmentation_parity.py                  # 5 alternated pairs after a warm-up pair
    python benchmarks/segmentation_parity.py --repeats 3 --train-size 200

(a) a hand-written loop: the same tiny UNet (model=tiny_unet), dataset=shapes' masks with the same transforms
    and loader, per-pixel cross-entropy (ignore_index 255), the same optimizer and one-cycle schedule, then an
    evaluation with the same confusion matrix turned into mIoU, no logging;
(b) nf_trainer's `run` (what `python main.py task=segmentation` runs, in-process) with MLflow logging,
    checkpoints, the overlays at each evaluation and early-stopping checks.
Throughput = training images / seconds of the epoch loop (train + evaluate), setup excluded on both sides.
Target B/A >= 0.95 (issue 31).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common import Timer, alternate, compose_job, machine, parser, run_timed, set_threads, summary

TARGET = 0.95


def job_config(out: Path, tag: str, train_size: int, epochs: int):
    return compose_job(["task=segmentation", f"dataset.train_size={train_size}", f"trainer.max_epochs={epochs}",
                        "trainer.early_stopping.enabled=false", "trainer.progress_bar=false", "mlflow.log_model=false",
                        f"paths.output_root={out}", f"mlflow.run_name=segmentation-{tag}"], out / "runs" / tag)


def handwritten(out: Path, train_size: int, epochs: int) -> float:
    """(a): the loop a researcher writes by hand; objects come from the same config nodes as (b)."""
    import torch
    from torch.utils.data import DataLoader, default_collate

    from nf_trainer import create_instance
    from nf_trainer.core.device import seed_everything
    from nf_trainer.model.build import build_model, data_facts
    from nf_trainer.model.finetune import build_optimizer
    from nf_trainer.tasks.segmentation import confusion_values
    from nf_trainer.trainer import speed
    from nf_trainer.trainer.metrics import build_collection
    from nf_trainer.trainer.schedule import build_schedule
    from nf_trainer.transforms import build_transforms

    cfg = job_config(out, "handwritten", train_size, epochs)
    seed_everything(cfg.seed, False)
    train_tf, eval_tf = build_transforms(cfg.transforms)
    data = create_instance(cfg.dataset, train_transform=train_tf, eval_transform=eval_tf)
    (val_set,) = data.eval.values()

    def collate(samples):
        images, masks = default_collate(samples)
        return images.as_subclass(torch.Tensor), masks.as_subclass(torch.Tensor).long()

    train_loader = DataLoader(data.train, batch_size=cfg.loader.batch_size, shuffle=True, collate_fn=collate)
    val_loader = DataLoader(val_set, batch_size=cfg.loader.eval_batch_size, collate_fn=collate)
    model = build_model(cfg.model, data_facts(data)).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optimizer, model, **speed.optimizer_kwargs(cfg.optimizer, torch.device("cpu"),
                                                                                cfg.trainer.fused_optimizer))
    scheduler = build_schedule(cfg.scheduler, optimizer, len(train_loader), cfg.trainer.max_epochs).scheduler  # per step
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
    metrics = build_collection(cfg.metrics, {"num_classes": data.num_classes}, torch.device("cpu"))

    with Timer() as timer:
        for _ in range(cfg.trainer.max_epochs):
            model.train()
            for images, masks in train_loader:
                loss = loss_fn(model(images.contiguous(memory_format=torch.channels_last)), masks)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            model.eval()
            metrics.reset()
            with torch.inference_mode():
                for images, masks in val_loader:
                    metrics.update(model(images.contiguous(memory_format=torch.channels_last)).argmax(dim=1), masks)
            confusion_values(metrics.compute()["confusion"], data.classes)
    return cfg.trainer.max_epochs * len(data.train) / timer.seconds


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--train-size", type=int, default=400, help="dataset.train_size (images of an epoch)")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    print(machine())
    out = Path(tempfile.mkdtemp(prefix="nf_segparity-"))
    try:
        print(f"== task=segmentation (tiny_unet, dataset=shapes, {args.train_size} train images), {args.epochs} epoch(s)")
        results = alternate(lambda: handwritten(out, args.train_size, args.epochs),
                            lambda: run_timed(job_config(out, "nf_trainer", args.train_size, args.epochs)),
                            args.repeats, "hand-written", "nf_trainer")
        summary("segmentation parity", *results, target=TARGET, what="throughput ratio B/A (nf_trainer / hand-written)")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
