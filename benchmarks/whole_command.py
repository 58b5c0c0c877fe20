"""The whole `python main.py` (default job, existing store): its wall time against its training, its log_model
time, and its wall time against the Lightning-written peer (benchmarks/lightning_peer.py).

    python benchmarks/whole_command.py                      # A: main.py at --baseline (default: main), B: this tree
    python benchmarks/whole_command.py --case lightning     # A: the Lightning peer, B: this tree

Every run is a fresh process, timed from spawn to exit; training is the first epoch's start to the last epoch's
end (from main.log), log_model the job's call of tracker.log_model (export included), timed inside the job by a
wrapper. A and B alternate. Targets: wall / training <= 2, log_model <= 1.5 s, B wall / Lightning wall <= 0.5.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, parser
from data import training_seconds

# main.py as `python main.py` runs it, with the job's tracker.log_model timed (this tree's ChildProcessTracker
# exports in log_model; an older one forwards it through _call)
RUNNER = """
import runpy, sys, time
sys.path.insert(0, sys.argv[1])
from nf_trainer.tracking import child

def timed(call):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            print(f"NF_LOG_MODEL {time.perf_counter() - start:.3f}", flush=True)
    return wrapper

cls = child.ChildProcessTracker
if "log_model" in vars(cls):
    cls.log_model = timed(cls.log_model)
else:
    forward = cls._call
    cls._call = lambda self, method, args, kwargs: (timed(forward) if method == "log_model" else forward)(
        self, method, args, kwargs)
sys.argv = [sys.argv[1] + "/main.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"PYTHONUNBUFFERED": "1"}


def nf_run(tree: Path, out: Path) -> dict:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUNNER, str(tree), f"paths.output_root={out}",
                             "trainer.progress_bar=false"], cwd=tree, env=env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"main.py in {tree} failed:\n{result.stderr[-3000:]}")
    log = sorted(out.glob("runs/*/*/main.log"))[-1].read_text()
    shutil.rmtree(out / "runs", ignore_errors=True)
    training, _, accuracy = training_seconds(log)
    found = re.findall(r"NF_LOG_MODEL ([\d.]+)", result.stdout)
    return {"wall": wall, "training": training, "log_model": float(found[-1]) if found else float("nan"),
            "accuracy": accuracy}


def lightning_run(out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lightning_peer.py"), str(out)], env=env(),
                            capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "the Lightning peer failed")
    accuracy = float(re.search(r"best val accuracy ([\d.]+)", result.stdout).group(1))
    training = float(re.search(r"fit seconds ([\d.]+)", result.stdout).group(1))
    return {"wall": wall, "training": training, "accuracy": accuracy}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (spread {min(values):.3f}-{max(values):.3f}, n={len(values)})"


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=4)
    p.add_argument("--case", choices=["ratio", "lightning"], default="ratio")
    p.add_argument("--baseline", default="main", help="ratio: the git revision A runs (a temporary worktree)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nf_whole-"))
    try:
        b_tree, b_out = ROOT, tmp / "b"
        if args.case == "ratio":
            a_tree, a_out = tmp / "baseline", tmp / "a"
            subprocess.run(["git", "worktree", "add", "--detach", str(a_tree), args.baseline], cwd=ROOT, check=True,
                           capture_output=True)
            run_a = lambda: nf_run(a_tree, a_out)  # noqa: E731
        else:
            run_a = lambda: lightning_run(tmp / "lightning")  # noqa: E731
        run_b = lambda: nf_run(b_tree, b_out)  # noqa: E731
        print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; warm-up (creates the stores)", flush=True)
        run_a(), run_b()
        a_runs, b_runs = [], []
        for i in range(args.repeats):
            for side in ((run_a, a_runs), (run_b, b_runs)) if i % 2 == 0 else ((run_b, b_runs), (run_a, a_runs)):
                side[1].append(side[0]())
            a, b = a_runs[-1], b_runs[-1]
            print(f"pair {i + 1}: A wall {a['wall']:.2f} s, training {a['training']:.2f} s, log_model "
                  f"{a.get('log_model', float('nan')):.2f} s, acc {a['accuracy']:.4f} | B wall {b['wall']:.2f} s, "
                  f"training {b['training']:.2f} s, log_model {b['log_model']:.2f} s, acc {b['accuracy']:.4f} "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
        for name, runs in (("A", a_runs), ("B", b_runs)):
            print(f"{name}: wall / training = {spread([r['wall'] / r['training'] for r in runs])}; best val accuracy "
                  f"{spread([r['accuracy'] for r in runs])}"
                  + (f"; log_model s = {spread([r['log_model'] for r in runs])}" if "log_model" in runs[0] else ""))
        print(f"whole command: B wall / training = {spread([r['wall'] / r['training'] for r in b_runs])} (target <= 2)")
        print(f"log_model: B = {spread([r['log_model'] for r in b_runs])} s (target <= 1.5)")
        print(f"B wall / A wall = {spread([b['wall'] / a['wall'] for a, b in zip(a_runs, b_runs)])}"
              + (" (target <= 0.5 against the Lightning peer)" if args.case == "lightning" else ""))
    finally:
        if args.case == "ratio":
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "baseline")], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
