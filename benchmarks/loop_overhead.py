"""The engine's overhead, measured on the same built objects: parity.py's two loops, a few epochs at a time.

    python benchmarks/loop_overhead.py --threads 1               # digits, simple_cnn, 60 pairs of 2 epochs
    python benchmarks/loop_overhead.py --threads 1 --repeats 100

parity.py alternates whole runs, ten seconds of setup apart, and on a shared VM the same work runs up to 15%
faster or slower from one run to the next. Here one job (what `python main.py` builds, with its MLflow child)
holds the objects, and each pair times, in alternating order and back to back:
(a) EPOCHS hand-written epochs of parity.py: train steps, the scheduler, evaluation with the same torchmetrics;
(b) `trainer.loop.fit` for EPOCHS epochs: the same, plus train metrics, step and epoch logging to MLflow, the
    best-model watchers and a checkpoint per epoch (fit returns once the last one is on disk).
A 50 ms pause after each side lets the MLflow child finish (b)'s last write, so it never lands on (a)'s time.
Ratio = (a)'s time / (b)'s (the throughput of b relative to a), the median over the pairs.
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import machine, parser, set_threads, summary
from parity import hand_epoch, job_config

EPOCHS = 2  # per side and pair: a checkpoint written while the next epoch trains, as in any run


def measuring_fit(pairs: int, times: dict[str, list[float]]):
    """A stand-in for the train job's `fit`: times (a) and (b) on the job's parts, then lets the job finish."""
    import copy
    import dataclasses

    import torch

    from nf_trainer.trainer import loop
    from nf_trainer.trainer.state import LoopState

    def fit(parts, settings, state, tracker, *rest):
        (set_name, val_loader), = parts.eval_loaders.items()
        metrics = copy.deepcopy(parts.eval_metrics[set_name].metrics)  # (a)'s own collection of the same metric entries
        short = dataclasses.replace(settings, max_epochs=EPOCHS)

        def hand_epochs():
            for _ in range(EPOCHS):
                hand_epoch(parts.model, parts.optimizer, parts.scheduler.epoch_ended, parts.task.loss_fn, parts.train_loader,
                           val_loader, metrics, settings.device, torch.channels_last, parts.speed.dtype)

        sides = {"hand-written": hand_epochs, "nf_trainer": lambda: loop.fit(parts, short, LoopState(), tracker)}
        for i in range(pairs + 1):  # the first pair warms up
            for name in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                started = time.perf_counter()
                sides[name]()
                if i:
                    times[name].append(time.perf_counter() - started)
                time.sleep(0.05)
        return loop.fit(parts, settings, state, tracker, *rest)
    return fit


def main() -> None:
    args = parser(__doc__.splitlines()[0], repeats=60).parse_args()
    set_threads(args.threads)
    print(machine())
    from nf_trainer.jobs import train as train_job
    from nf_trainer.sweep.job import run_hydra_job

    times: dict[str, list[float]] = {"hand-written": [], "nf_trainer": []}
    out = Path(tempfile.mkdtemp(prefix="nf_loop_overhead-"))
    cfg = job_config("simple_cnn", out, "nf_trainer", "cpu")
    cfg.trainer.max_epochs = EPOCHS
    fit, train_job.fit = train_job.fit, measuring_fit(args.repeats, times)
    try:
        run_hydra_job(cfg)
    finally:
        train_job.fit = fit
        shutil.rmtree(out, ignore_errors=True)
    a, b = times["hand-written"], times["nf_trainer"]
    print(f"{EPOCHS} epochs: hand-written {statistics.median(a) * 1e3:.1f} ms, nf_trainer {statistics.median(b) * 1e3:.1f} ms")
    summary("loop overhead", [1 / t for t in a], [1 / t for t in b], target=0.97,
            what="throughput ratio B/A (nf_trainer's fit / hand-written epochs, same objects)")


if __name__ == "__main__":
    main()
