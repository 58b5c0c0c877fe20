"""A brand-new local store is created by one process at a time: commands started together all finish and
record their runs; a store an earlier crash left half-made is made again when it holds no runs, and refused in
one line (untouched) when it does; the commands that only read a store wait for one that is being made."""
from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from nf_trainer.tracking.local_store import open_client
from tests.conftest import MAIN, ROOT, client, run_here, runs, store_uri

DB_TROUBLE = ("duplicate column", "already exists", "OperationalError", "database is locked", "Online migration",
              "Traceback")
PARENT = "mlflow.parentRunId"

# Creates a store and dies (os._exit, as a SIGKILL would end it) right after MLflow's first schema change: the
# store's first tables exist, the migration that alters them has begun and its version was never written.
CRASH_WHILE_CREATING = """
import os, sys
import sqlalchemy
from sqlalchemy import event
from mlflow import MlflowClient

@event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
def crash(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("ALTER TABLE"):
        os._exit(9)

MlflowClient(sys.argv[1]).search_experiments()
"""


def start(*args: str, out) -> subprocess.Popen:
    log = open(out.parent / f"{len(list(out.parent.glob('*.log')))}.log", "w")
    return subprocess.Popen([sys.executable, str(MAIN), *args, "trainer.progress_bar=false", f"paths.output_root={out}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(5))
def test_commands_started_together_on_a_brand_new_store_all_finish_and_record_every_run(bare_out, attempt):
    """Two runs and two sweeps of two jobs, all started at once on a store that does not exist yet. Without the
    lock this broke the store in every attempt: a sweep opens it a second or two after its start, as the other
    sweep does."""
    out = bare_out
    sweeps = [("0.01", "0.02"), ("0.03", "0.04")]
    procs = [start("debug=fast", f"seed={seed}", out=out) for seed in (1, 2)]
    procs += [start("-m", "debug=fast", f"optimizer.lr={','.join(rates)}", out=out) for rates in sweeps]
    codes = [proc.wait(600) for proc in procs]
    output = "".join(log.read_text() for log in sorted(out.parent.glob("*.log")))
    assert codes == [0, 0, 0, 0], output[-5000:]
    assert not [needle for needle in DB_TROUBLE if needle in output], output[-5000:]
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    recorded = runs(out)
    assert len(recorded) == 8 and all(r.info.status == "FINISHED" for r in recorded)
    parents = [r for r in recorded if r.data.tags.get("nf.sweep_key")]
    singles = [r for r in recorded if r not in parents and PARENT not in r.data.tags]
    assert sorted(r.data.params["seed"] for r in singles) == ["1", "2"]
    assert sorted(tuple(sorted(r.data.params["optimizer.lr"] for r in recorded if r.data.tags.get(PARENT) == p.info.run_id))
                  for p in parents) == sweeps


def half_made_store(out) -> None:
    """A new store whose creating process crashed in the middle of MLflow's migrations."""
    crashed = subprocess.run([sys.executable, "-c", CRASH_WHILE_CREATING, store_uri(out)], capture_output=True, text=True,
                             timeout=300)
    assert crashed.returncode == 9, crashed.stderr[-3000:]
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("select * from alembic_version").fetchall() == []  # no migration was recorded


@pytest.mark.slow
def test_a_store_left_half_made_by_a_crash_without_runs_is_made_again_and_the_old_file_kept(bare_out):
    out = bare_out
    half_made_store(out)
    alone = subprocess.run([sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({store_uri(out)!r})"
                            ".search_experiments()"], capture_output=True, text=True, timeout=300)
    assert alone.returncode == 1 and "duplicate column name" in alone.stderr  # MLflow alone: broken for good
    run_here("debug=fast", "mlflow.tracker=inline", out=out)  # inline: the store is opened in this job's own log
    (run,) = runs(out)
    assert run.info.status == "FINISHED"
    (kept,) = out.glob("mlflow.db.broken-*")
    job_log = (Path(run.data.tags["output_dir"]) / "main.log").read_text()
    assert "was left half-made by an earlier crash" in job_log and kept.name in job_log


def store_with_a_run_and_an_older_schema_version(out) -> bytes:
    """A store with one run whose schema version says a migration is still to come: the state an upgrade cut
    short leaves (its tables changed, its version row not yet)."""
    c = client(out)
    c.create_run(c.create_experiment("nf_trainer"))
    with sqlite3.connect(out / "mlflow.db") as db:
        db.execute("update alembic_version set version_num = '451aebb31d03'")  # MLflow's first migration
    return (out / "mlflow.db").read_bytes()


@pytest.mark.slow
def test_a_half_migrated_store_with_runs_is_refused_in_one_line_and_left_as_it_was(out):
    before = store_with_a_run_and_an_older_schema_version(out)
    result = subprocess.run([sys.executable, str(MAIN), "debug=fast", f"paths.output_root={out}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"MLflow store {out / 'mlflow.db'} holds 1 runs and models but cannot be opened: "), line
    assert "nothing in it was changed" in line and f"mlflow db upgrade sqlite:///{out / 'mlflow.db'}" in line
    assert (out / "mlflow.db").read_bytes() == before and not list(out.glob("mlflow.db.broken-*"))


def wait_for_log(caplog, text: str, thread: threading.Thread, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        assert thread.is_alive() and time.monotonic() < deadline, f"no '{text}' in the log"
        time.sleep(0.01)


def reading_commands(out):
    """The commands that only read a store, each as a function of no arguments, run in this process."""
    from nf_trainer.cli import ui
    from nf_trainer.cli.rerun import rerun_arguments
    from nf_trainer.cli.runs_table import main as runs_table
    from tests.test_tracking_server import free_port

    c = client(out)
    run_id = c.create_run(c.create_experiment("nf_trainer")).info.run_id
    overrides = [f"paths.output_root={out}"]
    return {"runs table": lambda: runs_table(["list", *overrides]),
            "ui": lambda: ui.serve(ui.parse_args(["--port", str(free_port()), *overrides])),
            "rerun=": lambda: rerun_arguments(run_id, overrides)}


@pytest.mark.parametrize("command", ["runs table", "ui", "rerun="])
def test_a_command_that_reads_the_store_waits_while_another_process_creates_it(out, caplog, command):
    run = reading_commands(out)[command]
    outcome = {}

    def body():
        try:
            outcome["value"] = run()
        except BaseException as exc:  # rerun= of a run without logged files ends in one line: it got past the store
            outcome["error"] = exc

    lock = FileLock(str(out / "mlflow.db.lock"))  # as the process creating the store holds it
    lock.acquire()
    caplog.set_level(logging.WARNING, "nf_trainer")
    thread = threading.Thread(target=body)
    try:
        thread.start()
        wait_for_log(caplog, "waiting for another process that opens the MLflow store", thread)
        assert not outcome  # still waiting
    finally:
        lock.release()
    thread.join(120)
    assert not thread.is_alive()
    if command == "rerun=":
        assert "has no hydra/overrides.yaml" in str(outcome["error"])
    else:
        assert "error" not in outcome, outcome


def test_a_store_is_opened_whole_even_with_a_stale_copy_alembic_left(out):
    """`_alembic_tmp_runs` beside `runs` (left by a rebuild cut short): dropped, the table and its runs kept."""
    c = client(out)
    run_id = c.create_run(c.create_experiment("nf_trainer")).info.run_id
    with sqlite3.connect(out / "mlflow.db") as db:
        db.execute("create table _alembic_tmp_runs as select * from runs where 0")
    assert open_client(store_uri(out)).get_run(run_id).info.run_id == run_id
    with sqlite3.connect(out / "mlflow.db") as db:
        names = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
    assert "runs" in names and "_alembic_tmp_runs" not in names
