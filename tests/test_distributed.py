"""torchrun on CPU (gloo): two ranks train as one job: one MLflow run, one set of checkpoints; and the
submitit launcher's local subprocesses, the path SLURM jobs take."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MAIN, ROOT, metric_history, run_main, runs, with_defaults

pytestmark = pytest.mark.slow


def torchrun(*overrides, out, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(MAIN),
           *with_defaults(overrides, out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def test_torchrun_two_ranks_match_a_single_process_run(default_run, tmp_path):
    single, reference, _ = default_run  # python main.py: loader.batch_size=64, seed 42
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    torchrun("loader.batch_size=32", out=ddp)  # 2 ranks x 32 = the same global batch

    (run,) = runs(ddp)  # rank 1 logs nothing
    assert run.info.status == "FINISHED" and run.data.params["trainer.world_size"] == "2"
    assert run.data.params["data.train_size"] == "1437"
    assert [m.step for m in metric_history(ddp, run.info.run_id, "val/digits/accuracy")] == list(range(1, 21))
    run_dirs = sorted(p.parent for p in (ddp / "runs").rglob("last.pt"))
    assert run_dirs == [Path(run.data.tags["output_dir"])]  # one set of checkpoints
    assert {p.name for p in run_dirs[0].glob("*.pt")} == {"last.pt", "best-loss.pt"}

    final = lambda out, r: metric_history(out, r.info.run_id, "val/digits/accuracy")[-1].value
    # not bitwise: each rank draws its own augmentation; within 7 of the 360 val images of the single process
    assert abs(final(ddp, run) - final(single, reference)) <= 0.02


def test_submitit_local_sweep_gives_one_parent_and_two_children(out):
    """hydra/launcher=local: each job in its own subprocess through submitit, as on SLURM."""
    run_main("-m", "hydra/launcher=local", "optimizer=sgd,adam", "debug=fast", out=out)
    found = runs(out)
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 3 and parent.info.status == "FINISHED"
    assert sorted(r.data.params["optimizer._target_"] for r in children) == ["torch.optim.Adam", "torch.optim.SGD"]
    assert all(r.info.status == "FINISHED" for r in children)
    logs = list((out / "multirun").rglob("*_log.out"))
    assert len(logs) == 2, "each job ran in its own submitit subprocess"
