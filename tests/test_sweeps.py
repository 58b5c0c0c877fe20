"""Sweeps: one MLflow parent run with a nested child per job, parallel joblib sweeps on a brand-new store,
an Optuna study past a failed trial, and an interrupted sweep that resumes where it stopped."""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nf_trainer.cli.runs_table import main as runs_command
from nf_trainer.jobs.summary import short_number
from nf_trainer.sweep.store import differing_keys
from tests.conftest import MAIN, client, metric_history, run_main, runs

pytestmark = pytest.mark.slow  # every sweep here is `python main.py -m` (the launchers are what is tested)

PARENT = "mlflow.parentRunId"
DB_TROUBLE = ("duplicate column", "already exists", "OperationalError", "database is locked", "Online migration",
              "Traceback")


def split(out):
    """(the sweep's parent runs, their children) in the store under `out`."""
    found = runs(out)
    return [r for r in found if PARENT not in r.data.tags], [r for r in found if PARENT in r.data.tags]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The acceptance sweep: 2 optimizers x 2 learning rates, one epoch each."""
    out = tmp_path_factory.mktemp("grid") / "outputs"
    out.mkdir()
    result = run_main("-m", "optimizer=sgd,adam", "optimizer.lr=0.1,0.01", "trainer.max_epochs=1", out=out)
    (out.parent / "sweep.log").write_text(result.stdout + result.stderr)
    (parent,), children = split(out)
    return out, parent, children


def test_a_sweep_is_one_parent_with_a_child_per_job(grid):
    out, parent, children = grid
    assert len(children) == 4 and all(c.data.tags[PARENT] == parent.info.run_id for c in children)
    assert sorted((c.data.params["optimizer._target_"], c.data.params["optimizer.lr"]) for c in children) == [
        ("torch.optim.Adam", "0.01"), ("torch.optim.Adam", "0.1"), ("torch.optim.SGD", "0.01"), ("torch.optim.SGD", "0.1")]
    assert all(c.info.status == "FINISHED" and c.data.params["trainer.max_epochs"] == "1" for c in children)
    assert len({c.data.tags["nf.config_hash"] for c in children}) == 4
    for c in children:  # the objective: the best val loss over the epochs
        assert c.data.metrics["objective"] == min(m.value for m in metric_history(out, c.info.run_id, "val/digits/loss"))

    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep optimizer=sgd,adam optimizer.lr=0.1,0.01"
    tags = parent.data.tags
    assert tags["sweep.overrides"].startswith("optimizer=sgd,adam optimizer.lr=0.1,0.01 trainer.max_epochs=1")
    assert (tags["objective.metric"], tags["objective.mode"]) == ("loss", "min")
    best = min(children, key=lambda c: c.data.metrics["objective"])
    assert tags["best.run_id"] == best.info.run_id and float(tags["best.value"]) == best.data.metrics["objective"]
    assert parent.data.metrics["objective"] == best.data.metrics["objective"]
    assert f"optimizer.lr={best.data.params['optimizer.lr']}" in tags["best.params"].split()
    assert "trainer.max_epochs" not in tags["best.params"]  # only what varies
    assert tags["sweep.children"] == "4 finished, 0 failed or killed"
    assert not client(out).list_artifacts(parent.info.run_id)  # the children hold the artifacts


def test_a_sweep_ends_with_its_best_runs_and_the_command_that_opens_it(grid):
    out, parent, children = grid
    log = (out.parent / "sweep.log").read_text()
    block = log[log.index(f"sweep FINISHED: {parent.info.run_name} (4 finished, 0 failed or killed)"):].splitlines()
    ranked = sorted(children, key=lambda c: c.data.metrics["objective"])
    assert block[1] == "  top 4 of 4, best first:"
    header, *rows = block[2:6 + 1]
    differing = differing_keys(children)  # optimizer._target_, optimizer.lr, and the keys only one optimizer has
    assert {"optimizer._target_", "optimizer.lr"} <= set(differing) and "trainer.max_epochs" not in differing
    assert header.split()[:4] == ["name", "objective", "(loss,", "min)"] and all(k in header for k in differing)
    for row, child in zip(rows, ranked):  # name, objective to 4 significant digits, the params that differ
        assert row.split()[:3] == [child.info.run_name, f"{child.data.metrics['objective']:#.4g}",
                                   short_number(child.data.params[differing[0]])]
        assert all(short_number(child.data.params.get(k, "")) in row for k in differing)
    assert block[7] == f"  open it: python -m nf_trainer.ui --run {parent.info.run_id} paths.output_root={out}"


def test_a_failed_job_fails_the_sweep_run(out):
    """Job 0 is refused before its run starts; Hydra runs job 1, then exits with job 0's error."""
    result = run_main("-m", "optimizer.lr=-1,0.01", "debug=fast", "trainer.progress_bar=false", out=out, check=False)
    assert result.returncode == 1 and "optimizer.lr must be >= 0, got -1" in result.stderr
    (parent,), children = split(out)
    assert [(c.data.params["optimizer.lr"], c.info.status) for c in children] == [("0.01", "FINISHED")]
    assert parent.info.status == "FAILED" and parent.data.tags["best.run_id"] == children[0].info.run_id


def test_tables_and_names_show_floats_to_six_digits_and_the_rest_as_given():
    assert [short_number(v) for v in ["2.0349616224981566e-05", "0.0001", "1e-3", "0.9", "64", "torch.optim.SGD",
                                      "[0.9, 0.999]", "none", ""]] == \
        ["2.03496e-05", "0.0001", "0.001", "0.9", "64", "torch.optim.SGD", "[0.9, 0.999]", "none", ""]


def terminal(*args, out, capsys):
    """`python -m nf_trainer.runs <args>`'s output lines (the command, in this process)."""
    runs_command([*args, f"paths.output_root={out}"])
    return capsys.readouterr().out.splitlines()


def test_runs_list_and_compare_show_the_sweep_best_first_with_the_params_that_differ(grid, capsys):
    out, parent, children = grid
    ranked = sorted(children, key=lambda c: c.data.metrics["objective"])
    title, header, *rows = terminal("list", out=out, capsys=capsys)
    assert parent.info.run_id in title and "min, best first" in title
    assert header.split()[:4] == ["rank", "run", "status", "objective"]
    assert {"optimizer._target_", "optimizer.lr"} <= set(header.split())
    assert "trainer.max_epochs" not in header and "seed" not in header.split()
    assert [row.split()[1] for row in rows] == [c.info.run_id[:8] for c in ranked]

    title, header, *rows = terminal("compare", parent.info.run_id, out=out, capsys=capsys)
    assert header.split() == [c.info.run_id[:8] for c in ranked]
    names = [row.split()[0] for row in rows]
    assert {"status", "optimizer.lr", "objective", "val/digits/loss", "val/digits/f1", "train/loss"} <= set(names)
    assert "trainer.max_epochs" not in names

    # the tables show 8 characters of an id: those pick the runs too
    title, header, *rows = terminal("compare", ranked[1].info.run_id[:8], ranked[0].info.run_id[:8], out=out, capsys=capsys)
    assert header.split() == [c.info.run_id[:8] for c in ranked[:2]]


def test_joblib_sweep_on_a_brand_new_store(bare_out):
    """4 parallel jobs (loky processes), each with a DataLoader worker, on a store that does not exist yet."""
    out = bare_out
    result = run_main("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "optimizer.lr=0.001,0.002,0.003,0.004",
                      "debug=fast", "loader.num_workers=1", "trainer.progress_bar=false", out=out)
    output = result.stdout + result.stderr
    assert not [needle for needle in DB_TROUBLE if needle in output], output[-3000:]
    with sqlite3.connect(out / "mlflow.db") as db:  # the store the parallel jobs wrote to is whole
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    (parent,), children = split(out)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.launcher"] == "JoblibLauncher"
    # the store, the experiment and the parent existed before any job started: no job had to create them
    assert parent.info.start_time < min(c.info.start_time for c in children)
    assert sorted(c.data.params["optimizer.lr"] for c in children) == ["0.001", "0.002", "0.003", "0.004"]
    assert all(c.info.status == "FINISHED" and c.data.params["loader.num_workers"] == "1" for c in children)
    assert len({c.data.tags["output_dir"] for c in children}) == 4


def test_optuna_study_goes_on_past_a_failed_trial(out):
    # trial k gets label_smoothing=k: trial 2 (2.0) makes CrossEntropyLoss raise in its first step
    result = run_main("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "loss.label_smoothing=${hydra:job.num}",
                      "debug=fast", "trainer.progress_bar=false", out=out)
    (parent,), children = split(out)
    by_trial = {c.data.params["loss.label_smoothing"]: c for c in children}
    assert {k: c.info.status for k, c in by_trial.items()} == {"0": "FINISHED", "1": "FINISHED", "2": "FAILED"}
    assert "the sweeper gets the worst value, inf, and goes on" in result.stdout + result.stderr  # minimizing val loss
    # the preset's search space: optimizer choice, log-uniform lr and weight decay
    for c in children:
        assert c.data.params["optimizer._target_"] in ("torch.optim.AdamW", "torch.optim.Adam", "torch.optim.SGD")
        assert 1e-4 <= float(c.data.params["optimizer.lr"]) <= 1e-1
        assert 1e-6 <= float(c.data.params["optimizer.weight_decay"]) <= 1e-2
    finished = [by_trial["0"], by_trial["1"]]
    best = min(finished, key=lambda c: c.data.metrics["objective"])  # objective: the task's monitor, val loss, minimized
    assert best.data.metrics["objective"] == min(m.value for m in metric_history(out, best.info.run_id, "val/digits/loss"))
    (results,) = out.glob("multirun/*/*/optimization_results.yaml")
    study = yaml.safe_load(results.read_text())
    assert study["best_value"] == pytest.approx(best.data.metrics["objective"])
    assert parent.data.tags["best.run_id"] == best.info.run_id
    assert parent.info.status == "FAILED"  # a child failed
    assert parent.data.tags["sweep.children"] == "2 finished, 1 failed or killed"
    # the study, kept in outputs/optuna.db: the failed trial is FAIL (and counts toward n_trials), each run is tagged
    import optuna

    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{out}/optuna.db")
    assert summary.study_name == study["study_name"] == parent.data.tags["optuna.study"]
    trials = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{out}/optuna.db").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL"] and "nf.failed" in trials[2].user_attrs
    assert {c.data.tags["optuna.trial"]: c.data.tags["optuna.state"] for c in children} == {
        "0": "COMPLETE", "1": "COMPLETE", "2": "FAIL"}


def test_an_interrupted_sweep_reruns_only_its_missing_jobs(out):
    """SIGKILL a sequential sweep inside the first step of its third job; the same command then runs only the jobs
    that did not finish. The third job holds its step until the kill (tests/bad_parts.py, `hold_while`): the kill
    lands there however fast or slow the jobs run."""
    gate = out.parent / "hold-2"  # job 2's; jobs 0 and 1 find no file of theirs and run through
    cmd = [sys.executable, str(MAIN), "-m", "optimizer=sgd", "optimizer.lr=0.01,0.02,0.03,0.04", "debug=fast",
           "model._target_=tests.bad_parts.FaultyCNN", f"+model.hold_while={out.parent}/hold-${{hydra:job.num}}",
           "trainer.progress_bar=false", "mlflow.log_model=false", f"paths.output_root={out}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    gate.touch()
    with open(out.parent / "first.log", "w") as log:
        first = subprocess.Popen(cmd, cwd=MAIN.parent, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 600
        while not Path(f"{gate}.reached").exists():  # job 2 is inside its first step: jobs 0 and 1 have ended
            assert first.poll() is None and time.time() < deadline, (out.parent / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        (parent,), before = split(out)
        assert sorted(c.info.status for c in before) == ["FINISHED", "FINISHED", "RUNNING"]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    gate.unlink()
    killed_at = time.time() * 1000
    done_before = {c.data.tags["nf.config_hash"] for c in before if c.info.status == "FINISHED"}
    assert parent.info.status == "RUNNING" and len(done_before) == 2

    second = subprocess.run(cmd, cwd=MAIN.parent, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("already FINISHED with this config in this sweep") == len(done_before)

    (resumed,), children = split(out)
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    new = [c for c in children if c.info.start_time > killed_at]
    assert {c.data.tags["nf.config_hash"] for c in new}.isdisjoint(done_before)
    assert len(new) == 4 - len(done_before)
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.params["optimizer.lr"] for c in finished) == ["0.01", "0.02", "0.03", "0.04"]
    # the job the kill caught mid-run can never end by itself: the resumed sweep marks it KILLED
    assert [c.info.status for c in children if c not in finished] == ["KILLED"]

    assert resumed.data.tags["best.run_id"] == min(finished, key=lambda c: c.data.metrics["objective"]).info.run_id
