"""Startup: `--help` latency, time to the first training step, a whole smoke test, and the import floor, side by side.

    python benchmarks/startup.py

- help:        `python main.py --help` (must not import torch or mlflow);
- floor:       `python -c "import torch, torchvision, mlflow, hydra"`, the bare imports any job needs, until
               they are done (a marker line; the process's exit is not counted, as for the first step);
- first step:  `python main.py` (default job, existing MLflow store) until the model's first training forward
               pass starts (a global forward pre-hook on modules with weights prints a marker and ends the
               process there; the data transforms, also modules, do not count);
- debug=fast:  `python main.py debug=fast`, the smoke test, from spawn to the process's exit.
Targets: first step - floor <= 1 s; debug=fast - floor <= 5 s. Each is a fresh process, timed from spawn;
repeats alternate.
The job's imports beyond the floor are listed from `python -X importtime`, largest first.
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

MAIN = ROOT / "main.py"
MARKER = "NF_STARTUP_MARK"
IMPORTS = "import torch, torchvision, mlflow, hydra"
FLOOR = f"{IMPORTS}; print('{MARKER}', flush=True)"
# Runs main.py as `python main.py ...` would, with a hook that fires on the first training forward pass.
FIRST_STEP = f"""
import os, runpy, sys
import torch

def first_step(module, args):
    # a module with weights (transforms v2 are modules too, without any), training, with autograd on
    if module.training and torch.is_grad_enabled() and next(module.parameters(), None) is not None:
        print("{MARKER}", flush=True)
        os._exit(0)

torch.nn.modules.module.register_module_forward_pre_hook(first_step)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "0"}


def timed(cmd: list[str], until: str | None = None) -> float:
    """Seconds from spawn to exit (or to the first output line containing `until`)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if until and until in line:
            elapsed = time.perf_counter() - start
            proc.wait()
            return elapsed
    proc.wait()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or until:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{''.join(lines[-20:])}")
    return elapsed


def imports_beyond_floor(job_args: list[str], top: int = 10) -> list[tuple[float, str]]:
    """Top-level modules the job imports that the floor does not, by cumulative import time (seconds)."""
    def cumulative(cmd):
        err = subprocess.run([sys.executable, "-X", "importtime", *cmd], cwd=ROOT, capture_output=True, text=True,
                             env=env()).stderr
        times = {}
        for line in err.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
            if m:
                times[m.group(3)] = (int(m.group(1)) / 1e6, len(m.group(2)))
        return times

    floor = cumulative(["-c", IMPORTS])
    job = cumulative(["-c", FIRST_STEP, str(MAIN), *job_args])
    # outermost imports that only the job does (their children are counted inside them)
    extra = [(t, name) for name, (t, depth) in job.items() if name not in floor and depth == 1]
    return sorted(extra, reverse=True)[:top]


def main() -> None:
    p = parser(__doc__.splitlines()[0], repeats=5)
    args = p.parse_args()
    out = Path(tempfile.mkdtemp(prefix="nf_startup-"))
    job = [f"paths.output_root={out}", "trainer.progress_bar=false"]
    py = sys.executable
    try:
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; store sqlite:///{out}/mlflow.db")
        timed([py, str(MAIN), *job, "debug=fast"])  # creates the store (once) and warms the file cache
        timed([py, "-c", FLOOR], until=MARKER)
        helps, floors, firsts, fasts = [], [], [], []
        for i in range(args.repeats):
            helps.append(timed([py, str(MAIN), "--help"]))
            floors.append(timed([py, "-c", FLOOR], until=MARKER))
            firsts.append(timed([py, "-c", FIRST_STEP, str(MAIN), *job], until=MARKER))
            fasts.append(timed([py, str(MAIN), *job, "debug=fast"]))
            print(f"repeat {i + 1}/{args.repeats}: --help {helps[-1]:.2f} s, import floor {floors[-1]:.2f} s, "
                  f"first step {firsts[-1]:.2f} s, debug=fast {fasts[-1]:.2f} s  (load {os.getloadavg()[0]:.2f})",
                  flush=True)
        print("imports of the job beyond the floor (cumulative s, one process):")
        for seconds, name in imports_beyond_floor(job):
            print(f"  {seconds:6.2f}  {name}")
        help_s, floor, first, fast = (statistics.median(v) for v in (helps, floors, firsts, fasts))
        gaps = [f - fl for f, fl in zip(firsts, floors)]
        gap = statistics.median(gaps)
        print(f"  medians: --help {help_s:.2f} s, import floor {floor:.2f} s, first step {first:.2f} s, "
              f"debug=fast {fast:.2f} s")
        fast_gap = statistics.median([f - fl for f, fl in zip(fasts, floors)])
        print(f"smoke test: debug=fast - import floor = {fast_gap:.2f} s (median of {len(fasts)} alternated repeats; "
              f"target <= 5.0 s) {'PASS' if fast_gap <= 5.0 else 'FAIL'}")
        verdict = "PASS" if gap <= 1.0 else "FAIL"
        print(f"startup: first step - import floor = {gap:.2f} s (median of {len(gaps)} alternated repeats; "
              f"target <= 1.0 s); --help {help_s:.2f} s; ratio first step / floor = {first / floor:.2f} {verdict}")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
