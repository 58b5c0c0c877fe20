"""mAP on the same predictions: torchmetrics' MeanAveragePrecision on faster_coco_eval (what metrics=detection uses)
against pycocotools (torchmetrics' default backend), the ratio of their times and whether they agree.

    python benchmarks/map_backends.py                        # 500 images, 10 true boxes each, 5 pairs
    python benchmarks/map_backends.py --images 2000 --repeats 3

Predictions are the true boxes jittered, with wrong classes and false positives mixed in, scores random: one
fixed set (seed 0) that both backends measure (update with every image, compute once, class_metrics=True, as an
evaluation does). pycocotools is not a dependency of nf_trainer: `pip install pycocotools` to run this.
"""
from __future__ import annotations

import importlib.util

from common import Timer, alternate, machine, parser, set_threads, summary


def predictions(images: int, boxes: int, classes: int):
    import torch

    g = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for _ in range(images):
        xy = torch.rand(boxes, 2, generator=g) * 400
        wh = 10 + torch.rand(boxes, 2, generator=g) * 90
        truth = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(classes, (boxes,), generator=g)
        found = truth + torch.randn(boxes, 4, generator=g) * 6  # jittered: IoUs from ~0.5 to ~0.95
        wrong = torch.rand(boxes, generator=g) < 0.2
        found_labels = torch.where(wrong, torch.randint(classes, (boxes,), generator=g), labels)
        extra = torch.rand(boxes // 2, 2, generator=g) * 400
        found = torch.cat([found, torch.cat([extra, extra + 30], 1)])
        found_labels = torch.cat([found_labels, torch.randint(classes, (boxes // 2,), generator=g)])
        preds.append({"boxes": found, "scores": torch.rand(len(found), generator=g), "labels": found_labels})
        targets.append({"boxes": truth, "labels": labels})
    return preds, targets


def measure(backend: str, preds, targets, results: dict) -> float:
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(backend=backend, class_metrics=True)
    with Timer() as timer:
        for p, t in zip(preds, targets):
            metric.update([p], [t])
        results[backend] = metric.compute()
    return len(preds) / timer.seconds  # images evaluated per second (update and compute)


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=5)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--boxes", type=int, default=10)
    p.add_argument("--classes", type=int, default=20)
    args = p.parse_args()
    if importlib.util.find_spec("pycocotools") is None:
        raise SystemExit("pycocotools is not installed (it is not a dependency of nf_trainer): pip install pycocotools")
    set_threads(args.threads)
    print(machine())
    print(f"== {args.images} images, {args.boxes} true boxes each, {args.classes} classes")
    preds, targets = predictions(args.images, args.boxes, args.classes)
    results: dict = {}
    timed = alternate(lambda: measure("pycocotools", preds, targets, results),
                      lambda: measure("faster_coco_eval", preds, targets, results), args.repeats,
                      "pycocotools", "faster_coco_eval")
    summary("mAP backends", *timed, target=1.0, what="speed ratio B/A (faster_coco_eval / pycocotools)")
    for key in ("map", "map_50", "map_75", "mar_100"):
        a, b = results["pycocotools"][key].item(), results["faster_coco_eval"][key].item()
        print(f"{key}: pycocotools {a:.6f}  faster_coco_eval {b:.6f}  difference {abs(a - b):.2e}")
    per_class = (results["pycocotools"]["map_per_class"] - results["faster_coco_eval"]["map_per_class"]).abs().max()
    print(f"per-class AP: largest difference {per_class.item():.2e}")


if __name__ == "__main__":
    main()
