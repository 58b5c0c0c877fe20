"""Parity: nf_trainer's engine costs nothing over a minimal hand-written PyTorch loop.

    python benchmarks/parity.py                    # both cases below
    python benchmarks/parity.py --case simple_cnn  # one case

(a) a hand-written loop, no logging: train steps, then evaluation with the same torchmetrics each epoch;
(b) nf_trainer's `run` (what `python main.py` runs, here in-process) with MLflow logging, the progress
    bar (drawn when stderr is a terminal), per-step loss logging, checkpoints and early-stopping checks.
Same model, data, batch size, epochs and optimizer; (a) applies by hand the speed settings (b) defaults to
(channels_last, fused optimizer, the autocast dtype, whole-batch augmentation of in-memory sets)
so the ratio measures the engine's overhead alone.
Throughput = training images / seconds of the epoch loop (train + evaluate), setup excluded on both sides.
Cases: simple_cnn on digits (target B/A >= 0.97), resnet18 on 32 px images (target >= 0.98), and
deterministic: simple_cnn on digits with `trainer.deterministic=true` for (b) only, against the plain
hand-written loop (a): what bitwise-exact resume costs, target within 1.3x (B/A >= 1/1.3 = 0.77).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from common import ROOT, Timer, alternate, compose_job, machine, parser, run_timed, set_threads, summary

CASES = {
    # name: (overrides, epochs, target, alternated pairs)
    "simple_cnn": (["model=simple_cnn", "dataset=digits"], 10, 0.97, 15),  # 10 epochs: ~3 s timed, less noise
    # an epoch of 10240 images (a fifth of CIFAR-10's): per-epoch costs (evaluation, a checkpoint) in proportion
    "resnet18": (["dataset=synthetic", "transforms=none", "dataset.image_size=32",
                  "dataset.train_size=10240", "dataset.val_size=1024"], 1, 0.98, 5),
    # (a) always runs without deterministic algorithms (handwritten seeds with deterministic=False)
    "deterministic": (["model=simple_cnn", "dataset=digits", "trainer.deterministic=true"], 4, 0.77, 9),  # 1/1.3
}


def resnet18_node():
    """The issue-4 preset when the project has one, else torchvision's resnet18 directly."""
    from omegaconf import OmegaConf

    if (ROOT / "conf" / "model" / "resnet18.yaml").exists():
        return None
    return OmegaConf.create({"_target_": "torchvision.models.resnet18", "num_classes": None})


def job_config(case: str, out: Path, tag: str, device: str):
    from omegaconf import open_dict

    overrides, epochs = CASES[case][:2]
    if case == "resnet18" and resnet18_node() is None:
        overrides = [*overrides, "model=resnet18"]
    cfg = compose_job([*overrides, f"trainer.max_epochs={epochs}", "trainer.early_stopping.enabled=false",
                       f"trainer.device={device}", f"paths.output_root={out}", f"mlflow.run_name={case}-{tag}"],
                      out / "runs" / tag)
    if case == "resnet18" and resnet18_node() is not None:
        with open_dict(cfg):
            cfg.model = resnet18_node()
    return cfg


def handwritten(case: str, out: Path, device_name: str) -> float:
    """(a): the loop a researcher writes by hand. Objects come from the same config nodes as (b)."""
    import torch
    from torch.utils.data import DataLoader

    from nf_trainer import create_instance
    from nf_trainer.core.device import resolve_device, seed_everything
    from nf_trainer.dataset.tensor_batches import batched_loader
    from nf_trainer.model.build import build_model, data_facts
    from nf_trainer.model.finetune import build_optimizer
    from nf_trainer.trainer import speed
    from nf_trainer.trainer.metrics import BatchedUpdates, build_collection
    from nf_trainer.trainer.schedule import build_schedule
    from nf_trainer.transforms import build_transforms

    cfg = job_config(case, out, "handwritten", device_name)
    seed_everything(cfg.seed, False)
    device = resolve_device(cfg.trainer.device)
    train_tf, eval_tf = build_transforms(cfg.transforms)
    data = create_instance(cfg.dataset, train_transform=train_tf, eval_transform=eval_tf)
    (val_set,) = data.eval.values()
    # in-memory sets: whole batches augmented at once, as (b) does by default (loader.batched_transforms)
    batched = cfg.loader.batched_transforms
    train_loader = (batched and batched_loader(data.train, cfg.loader.batch_size, device, [], shuffle=True,
                                               generator=torch.Generator())) or \
        DataLoader(data.train, batch_size=cfg.loader.batch_size, shuffle=True)
    val_loader = (batched and batched_loader(val_set, cfg.loader.batch_size, device, [])) or \
        DataLoader(val_set, batch_size=cfg.loader.batch_size)
    model = build_model(cfg.model, data_facts(data)).to(device)
    if hasattr(model, "set_swish"):
        model.set_swish(memory_efficient=False)
    fmt = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = build_optimizer(cfg.optimizer, model,  # the optimizer node minus nf_trainer's own `head_lr` key
                                **speed.optimizer_kwargs(cfg.optimizer, device, cfg.trainer.fused_optimizer))
    scheduler = build_schedule(cfg.scheduler, optimizer, len(train_loader), cfg.trainer.max_epochs).scheduler  # per epoch
    loss_fn = torch.nn.CrossEntropyLoss()
    metrics = BatchedUpdates(build_collection(cfg.metrics, {"num_classes": data.num_classes}, device))  # as (b)'s
    dtype = speed.autocast_dtype(cfg.trainer.precision, device)

    with Timer() as timer:
        for _ in range(cfg.trainer.max_epochs):
            hand_epoch(model, optimizer, scheduler.step, loss_fn, train_loader, val_loader, metrics, device, fmt, dtype)
    return cfg.trainer.max_epochs * len(data.train) / timer.seconds


def hand_epoch(model, optimizer, step_schedule, loss_fn, train_loader, val_loader, metrics, device, fmt, dtype) -> None:
    """One epoch of (a): train steps, the schedule's step, evaluation with the metrics, their values read."""
    import torch

    model.train()
    for images, targets in train_loader:
        images, targets = images.to(device, memory_format=fmt), targets.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step_schedule()
    model.eval()
    metrics.reset()
    with torch.inference_mode():
        for images, targets in val_loader:
            images, targets = images.to(device, memory_format=fmt), targets.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                metrics.update(model(images), targets)
    {k: v.item() for k, v in metrics.compute().items()}


def nf_trainer_run(case: str, out: Path, device_name: str) -> float:
    """(b): the job as main.py runs it; its epoch loop (trainer.loop.fit) is timed."""
    return run_timed(job_config(case, out, "nf_trainer", device_name))


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=None)
    p.add_argument("--case", choices=[*CASES, "all"], default="all")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    set_threads(args.threads)
    print(machine())
    out = Path(tempfile.mkdtemp(prefix="nf_parity-"))
    try:
        for case in CASES if args.case == "all" else [args.case]:
            print(f"== {case}: {' '.join(CASES[case][0])}, {CASES[case][1]} epochs, device {args.device}")
            results = alternate(lambda case=case: handwritten(case, out, args.device),
                                lambda case=case: nf_trainer_run(case, out, args.device),
                                args.repeats or CASES[case][3], "hand-written", "nf_trainer")
            summary(f"parity {case}", *results, target=CASES[case][2], what="throughput ratio B/A (nf_trainer / hand-written)")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
