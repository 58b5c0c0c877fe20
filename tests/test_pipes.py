"""Output piped into a reader that has closed the pipe (`| head`, `| less` quit early) ends quietly: no
BrokenPipeError traceback, no '--- Logging error ---'; a job trains on and its log file keeps every line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MAIN, ROOT, only_run

NF_TRAIN = Path(sys.executable).with_name("nf-train")  # the console script of this environment's install


def into_a_closed_pipe(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`command | head -0`, without the race: the reader's end of the pipe is closed before the command starts,
    so its first write already finds nobody reading."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    try:
        return subprocess.run(command, cwd=cwd, stdout=write, stderr=subprocess.PIPE, text=True, timeout=600, env=env)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [[str(MAIN), "--help"], [str(MAIN), "--cfg", "job"], [str(NF_TRAIN), "--help"],
                                  ["-m", "nf_trainer.runs", "--help"], ["-m", "nf_trainer.ui", "--help"],
                                  ["-m", "nf_trainer.prepare", "--help"]], ids=lambda args: " ".join(args[-2:]))
def test_a_command_into_a_closed_pipe_ends_quietly(args):
    command = args if args[0] == str(NF_TRAIN) else [sys.executable, *args]
    result = into_a_closed_pipe(command)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]


def test_the_runs_table_into_a_closed_pipe_ends_quietly(out):
    from tests.conftest import client

    c = client(out)
    experiment = c.create_experiment("nf_trainer")
    for _ in range(3):
        c.create_run(experiment)
    result = into_a_closed_pipe([sys.executable, "-m", "nf_trainer.runs", "list", f"paths.output_root={out}"])
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]


@pytest.mark.slow
def test_a_job_into_a_closed_pipe_trains_on_quietly_and_its_log_keeps_every_line(out):
    result = into_a_closed_pipe([sys.executable, str(MAIN), "debug=fast", f"paths.output_root={out}"])
    assert result.returncode == 0 and "Logging error" not in result.stderr and "Traceback" not in result.stderr, \
        result.stderr[-3000:]
    run = only_run(out)
    assert run.info.status == "FINISHED"
    assert f"run FINISHED: {run.info.run_name}" in (Path(run.data.tags["output_dir"]) / "main.log").read_text()
