"""What pruning saves in an Optuna study: the same 16-trial TPE study on digits, with the median pruner (B) and
without pruning (A); targets: B trains at most 60% of A's epochs, and its best value is within 0.01 of A's.

    python benchmarks/search.py                      # one pair, sampler seed 0 (about 10 min on 2 cores)
    python benchmarks/search.py --repeats 3          # seeds 0, 1, 2: the median ratio and the spread
    python benchmarks/search.py --pruner hyperband   # another pruner for B

Each study is `python main.py hparams_search=optuna` (the preset's space: optimizer, log lr, log weight decay;
objective val f1, maximized) with trainer.max_epochs=6, early stopping off, in a fresh output root; the order
A, B alternates between repeats. Epochs used: the epochs each trial reported to the study, summed.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, Timer, parser

TRIALS, EPOCHS = 16, 6


def study(pruner: str, seed: int, out: Path, *overrides: str) -> tuple[int, float, float]:
    """(epochs used, best value, seconds) of one study."""
    import optuna

    cmd = [sys.executable, str(ROOT / "main.py"), "hparams_search=optuna", f"hydra.sweeper.n_trials={TRIALS}",
           f"hydra/sweeper/pruner={pruner}", f"hydra.sweeper.sampler.seed={seed}", f"trainer.max_epochs={EPOCHS}",
           "trainer.early_stopping.enabled=false", "trainer.progress_bar=false", "mlflow.log_model=false", "export=[]",
           "mlflow.log_checkpoints=none", f"paths.output_root={out}", *overrides]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with Timer() as timer:
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    storage = f"sqlite:///{out}/optuna.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    found = optuna.load_study(study_name=summary.study_name, storage=storage)
    return sum(len(t.intermediate_values) for t in found.trials), found.best_value, timer.seconds


def main() -> None:
    p = parser(__doc__.split("\n\n")[0], repeats=1)
    p.add_argument("--pruner", default="median", help="B's pruner (hydra/sweeper/pruner=...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for B only, e.g. hydra.sweeper.pruner.n_warmup_steps=1 (repeatable)")
    p.add_argument("--seeds", type=int, nargs="*", help="sampler seeds (default: 0 .. repeats-1)")
    args = p.parse_args()
    ratios, gaps = [], []
    for seed in args.seeds or range(args.repeats):
        sides = {}
        order = [("A", "none"), ("B", args.pruner)]
        for label, pruner in order if seed % 2 == 0 else order[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                sides[label] = study(pruner, seed, Path(tmp), *(args.set if label == "B" else []))
            epochs, best, seconds = sides[label]
            print(f"seed {seed} {label} (pruner {pruner}): {epochs} epochs, best val f1 {best:.4f}, {seconds:.0f} s", flush=True)
        ratios.append(sides["B"][0] / sides["A"][0])
        gaps.append(sides["A"][1] - sides["B"][1])
        print(f"seed {seed}: epochs B/A {ratios[-1]:.3f}, best value A - B {gaps[-1]:+.4f}, "
              f"wall B/A {sides['B'][2] / sides['A'][2]:.3f}", flush=True)
    spread = f" (min {min(ratios):.3f}, max {max(ratios):.3f})" if len(ratios) > 1 else ""
    print(f"epochs used, pruned / unpruned: median {statistics.median(ratios):.3f}{spread}; target <= 0.6: "
          f"{'met' if statistics.median(ratios) <= 0.6 else 'NOT met'}")
    print(f"best value, unpruned - pruned: median {statistics.median(gaps):+.4f} (min {min(gaps):+.4f}, "
          f"max {max(gaps):+.4f}); target within 0.01: {'met' if abs(statistics.median(gaps)) <= 0.01 else 'NOT met'}")


if __name__ == "__main__":
    main()
