"""Learning: does model=tiny_detector learn dataset=shapes, and how much of it is shape, not just boxes?

    python benchmarks/learn_shapes.py                        # the true run, then the control with shuffled labels
    python benchmarks/learn_shapes.py --epochs 4 --threads 1 --override dataset.train_size=600

A plain loop (no nf_trainer engine): the configs `dataset=shapes model=tiny_detector transforms=detection`
composed from conf/ (plus --override), AdamW, torchvision's detection contract (labels 1..K, a loss dict in
train mode), and torchmetrics' MeanAveragePrecision (faster_coco_eval) on the val set after every epoch.
The control trains on `dataset.shuffle_labels=true` (train labels drawn at random, val labels true): it can
still learn where objects are, not which class they are, so map_50 - control map_50 is what shape taught.
`--augment zoomout,ioucrop` inserts those v2 steps before ToDtype, to measure what they cost the tiny model.
"""
from __future__ import annotations

import argparse
import time

from common import machine, set_threads

EXTRA_STEPS = {  # --augment names: box-aware v2 steps that transforms=detection leaves out by default
    "zoomout": {"_target_": "torchvision.transforms.v2.RandomZoomOut", "side_range": [1.0, 1.5], "p": 0.3},
    "ioucrop": {"_target_": "torchvision.transforms.v2.RandomIoUCrop"},
}


def build(overrides: list[str], augment: list[str]):
    from nf_trainer.cli.compose import project_config
    from nf_trainer.core.instantiate import create_instance
    from nf_trainer.model.build import build_model, data_facts
    from nf_trainer.transforms import build_pipeline, node_list

    cfg = project_config(["task=detection", "dataset=shapes", "model=tiny_detector", "transforms=detection", *overrides])
    train_nodes = node_list(cfg.transforms.train)  # empty slots (augment, erasing) dropped
    at = next(i for i, node in enumerate(train_nodes) if node["_target_"].endswith("ToDtype"))
    train_nodes[at:at] = [EXTRA_STEPS[name] for name in augment]
    data = create_instance(cfg.dataset, train_transform=build_pipeline(train_nodes),
                           eval_transform=build_pipeline(cfg.transforms.eval))
    facts = {**data_facts(data), "num_classes": data.num_classes + 1}  # background is class 0
    return cfg, data, build_model(cfg.model, facts)


def to_model(targets):
    """Labels 0..K-1 from the data -> 1..K for torchvision's detectors."""
    return [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]


def one_class(rows):
    """Every box of class 1: map_50 then measures finding objects, whatever class they get."""
    return [{**row, "labels": row["labels"].clamp(max=1)} for row in rows]


def train_and_evaluate(overrides: list[str], augment: list[str], epochs: int, batch_size: int, lr: float,
                       seed: int, optimizer_name: str = "adamw") -> list[dict]:
    import torch
    from torch.utils.data import DataLoader
    from torchmetrics.detection import MeanAveragePrecision

    torch.manual_seed(seed)
    cfg, data, model = build(overrides, augment)
    (val,) = data.eval.values()

    def collate(batch):
        return tuple(zip(*batch))

    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=generator)
    val_loader = DataLoader(val, batch_size=32, collate_fn=collate)
    optimizer = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01) if optimizer_name == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4))
    history, start, cpu_start = [], time.perf_counter(), time.process_time()
    for epoch in range(1, epochs + 1):
        model.train()
        t0, losses = time.perf_counter(), []
        for images, targets in train_loader:
            loss = sum(model(list(images), to_model(targets)).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        train_s = time.perf_counter() - t0
        model.eval()
        metric, boxes_only = MeanAveragePrecision(backend="faster_coco_eval"), MeanAveragePrecision(backend="faster_coco_eval")
        t0 = time.perf_counter()
        with torch.no_grad():
            for images, targets in val_loader:
                predictions, truth = model(list(images)), to_model(targets)
                metric.update(predictions, truth)
                boxes_only.update(*(one_class(p) for p in (predictions, truth)))
        result, located = metric.compute(), boxes_only.compute()
        row = {"epoch": epoch, "loss": sum(losses) / len(losses), "map": float(result["map"]),
               "map_50": float(result["map_50"]), "box_map_50": float(located["map_50"]), "train_s": train_s,
               "eval_s": time.perf_counter() - t0, "wall_s": time.perf_counter() - start,
               "cpu_s": time.process_time() - cpu_start}
        history.append(row)
        print(f"  epoch {epoch}: loss {row['loss']:.3f}  map {row['map']:.3f}  map_50 {row['map_50']:.3f}  "
              f"map_50 with classes ignored {row['box_map_50']:.3f}  (train {train_s:.1f} s, eval {row['eval_s']:.1f} s, "
              f"wall {row['wall_s']:.1f} s, CPU {row['cpu_s']:.1f} s)", flush=True)
    return history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="AdamW (weight decay 0.01) or SGD "
                   "(momentum 0.9, weight decay 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="torch's seed (init, shuffling); dataset.seed is an --override")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--override", action="append", default=[], help="a config override, e.g. dataset.train_size=600")
    p.add_argument("--augment", default="", help=f"extra train steps before ToDtype: {', '.join(EXTRA_STEPS)}")
    p.add_argument("--runs", default="true,shuffled", help="which runs: true, shuffled or both (true,shuffled)")
    args = p.parse_args()
    set_threads(args.threads)
    augment = [name for name in args.augment.split(",") if name]
    print(f"machine: {machine()}")
    print(f"settings: epochs {args.epochs}, batch {args.batch_size}, {args.optimizer} lr {args.lr}, seed {args.seed}, "
          f"overrides {args.override or 'none'}, extra augmentation {augment or 'none'}", flush=True)
    final = {}
    for run in args.runs.split(","):
        print(f"{run} labels:", flush=True)
        shuffled = ["dataset.shuffle_labels=true"] if run == "shuffled" else []
        final[run] = train_and_evaluate([*args.override, *shuffled], augment, args.epochs, args.batch_size, args.lr,
                                        args.seed, args.optimizer)[-1]
    for run, row in final.items():
        print(f"{run}: map {row['map']:.3f}, map_50 {row['map_50']:.3f} (classes ignored {row['box_map_50']:.3f}) after "
              f"{row['epoch']} epochs, {row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} s CPU")
    if len(final) == 2:
        print(f"map_50 margin over the control: {final['true']['map_50'] - final['shuffled']['map_50']:.3f}")


if __name__ == "__main__":
    main()
