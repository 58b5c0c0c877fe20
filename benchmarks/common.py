"""What the benchmark scripts share: the project on sys.path, thread setup, A/B alternation, medians."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a clean clone without `pip install -e .`
    sys.path.insert(0, str(ROOT))


def parser(description: str, repeats: int | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=repeats, help="A/B pairs measured (after one warm-up pair)"
                   + ("" if repeats else "; default: per case"))
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return p


def set_threads(threads: int | None) -> int:
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine() -> str:
    import platform

    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {load:.2f}")


def alternate(a: Callable[[], float], b: Callable[[], float], repeats: int, label_a: str = "A", label_b: str = "B",
              unit: str = "img/s") -> tuple[list[float], list[float]]:
    """Run a, b, a, b, ... (one warm-up pair first, not counted); each returns a throughput."""
    print(f"warm-up: {label_a} {a():.1f} {unit}, {label_b} {b():.1f} {unit}", flush=True)
    results_a, results_b = [], []
    for i in range(repeats):
        first, second = (a, b) if i % 2 == 0 else (b, a)  # alternate the order too: no side always runs second
        x = first()
        y = second()
        ra, rb = (x, y) if i % 2 == 0 else (y, x)
        results_a.append(ra)
        results_b.append(rb)
        print(f"repeat {i + 1}/{repeats}: {label_a} {ra:.1f} {unit}, {label_b} {rb:.1f} {unit}, ratio {rb / ra:.3f}  "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)
    return results_a, results_b


def summary(name: str, results_a: list[float], results_b: list[float], target: float, what: str,
            at_most: bool = False) -> float:
    """Median of the per-pair ratios b/a (pairs ran back to back, so load drift cancels), and the verdict:
    ratio >= target, or <= target with `at_most` (times rather than throughputs)."""
    ratios = [b / a for a, b in zip(results_a, results_b)]
    ratio = statistics.median(ratios)
    print(f"  medians: A {statistics.median(results_a):.3g}, B {statistics.median(results_b):.3g}; "
          f"pair ratios {', '.join(f'{r:.3f}' for r in ratios)} (spread {min(ratios):.3f}-{max(ratios):.3f})")
    verdict = "PASS" if (ratio <= target if at_most else ratio >= target) else "FAIL"
    print(f"{name}: {what} = {ratio:.3f} (median of {len(ratios)} alternated pairs; target {'<=' if at_most else '>='} "
          f"{target}) {verdict}", flush=True)
    return ratio


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def compose_job(overrides: list[str], output_dir: Path):
    """The job config main.py would run, composed in this process, with Hydra's runtime set up the way
    `hydra.main` does it (output dir, HydraConfig, the job's log file and console logging)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log
    from omegaconf import open_dict

    from nf_trainer.core.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.name = "main"
    (output_dir / ".hydra").mkdir(exist_ok=True)
    HydraConfig.instance().set_config(cfg)
    configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_timed(cfg) -> float:
    """Run the job as main.py does (`nf_trainer.sweep.job.run_hydra_job`) and return the throughput of its epoch
    loop (`trainer.loop.fit`: train + evaluate + logging + checkpoints): training images / seconds."""
    from nf_trainer.jobs import train as train_job
    from nf_trainer.sweep.job import run_hydra_job

    fit, timed = train_job.fit, {}

    def timed_fit(parts, settings, state, tracker, *rest):
        with Timer() as timer:
            result = fit(parts, settings, state, tracker, *rest)
        timed.update(seconds=timer.seconds, images=state.epoch * len(parts.train_loader.dataset))
        return result

    train_job.fit = timed_fit  # the train job looks `fit` up in its module when it calls it
    try:
        run_hydra_job(cfg)
    finally:
        train_job.fit = fit
    return timed["images"] / timed["seconds"]
