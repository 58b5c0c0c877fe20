"""A local sqlite store is created (its tables, MLflow's migrations) by one process at a time.

MLflow creates a brand-new sqlite store's tables in whichever process opens it first, without a lock:
two commands started at once on a new store both run its migrations, and the store is left broken for good
(`table _alembic_tmp_metrics already exists`, `Online migration expected to match one row`). Every command
here opens its store through `open_client`, which holds a lock beside the file (`mlflow.db.lock`) while
MLflow opens it, so the second process waits and then finds the tables made.

A store that an earlier crash (or such a race, before this lock) left half-made is, when it holds no runs
and no models, made again in place (the old file is kept beside it as `mlflow.db.broken-<time>`); one that
holds runs is refused in one line that says how to recover, and nothing in it is touched.
"""
from __future__ import annotations

import contextlib
import logging
import re
import shutil
import sqlite3
import time
from pathlib import Path

from nf_trainer.core.errors import NfTrainerError

log = logging.getLogger("nf_trainer")

# what a half-made schema makes MLflow's opening (SQLAlchemy, alembic) raise
HALF_MADE = re.compile(r"already exists|duplicate column|no such (table|column)|Online migration|out-of-date database schema")
STALE_COPY = "_alembic_tmp_"  # alembic's copy of a table it rebuilds; left behind when that was cut short


def store_path(tracking_uri: str) -> Path | None:
    """The file of a local sqlite store, or None (a server, another database)."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def open_client(tracking_uri: str):
    """An MlflowClient on the store, which is usable when this returns: a new local store has its tables."""
    from mlflow import MlflowClient

    # its "Creating initial MLflow database tables..." lines: the job says what that first-run chore is
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    path = store_path(tracking_uri)
    if path is None:
        return MlflowClient(tracking_uri)
    with store_lock(path):
        try:
            client = MlflowClient(tracking_uri)
            client.search_experiments(max_results=1)  # opens the store: a new one gets its tables here
        except Exception as exc:  # SQLAlchemy's, alembic's and MLflow's errors alike
            if not HALF_MADE.search(str(exc)):
                raise
            make_again(path, exc)
            client = MlflowClient(tracking_uri)
            client.search_experiments(max_results=1)
        drop_stale_copies(path)
    return client


@contextlib.contextmanager
def store_lock(path: Path):
    """The lock beside the store file, held: a process that holds it already is waited for, and said so."""
    from filelock import FileLock, Timeout  # a dependency of torch, declared in pyproject.toml

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.with_name(path.name + ".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("waiting for another process that opens the MLflow store %s (a new store gets its tables once)", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def recorded(path: Path) -> int:
    """How many runs and models the store holds (in a table alembic was copying, too)."""
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
        names = [t for t in tables if t.removeprefix(STALE_COPY) in ("runs", "registered_models", "logged_models")]
        return sum(db.execute(f'select count(*) from "{table}"').fetchone()[0] for table in names)


def make_again(path: Path, exc: Exception) -> None:
    """A half-made store without runs is made again (its old file kept beside it); one with runs is refused."""
    reason = " ".join(str(exc).split("\n[SQL:")[0].split())[:200]
    try:
        kept = recorded(path)
    except sqlite3.Error as error:
        raise NfTrainerError(f"{path} is not a usable MLflow store ({error}); point mlflow.tracking_uri or "
                             "paths.output_root at another one") from None
    if kept:
        raise NfTrainerError(
            f"MLflow store {path} holds {kept} runs and models but cannot be opened: {reason} (an earlier crash "
            f"or MLflow upgrade left its tables half-migrated); nothing in it was changed: copy it, then run "
            f"`mlflow db upgrade sqlite:///{path}`, or move it away to start a new store") from None
    backup = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(path, backup)
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master where type='table' and name != 'sqlite_sequence'")]
        for table in tables:
            db.execute(f'drop table "{table}"')
    log.warning("MLflow store %s was left half-made by an earlier crash (%s) and held no runs: its tables are made "
                "again (the old file is kept as %s)", path, reason, backup.name)


def drop_stale_copies(path: Path) -> None:
    """`_alembic_tmp_<table>` beside its `<table>`: a copy alembic left when a rebuild was cut short, which the
    next MLflow upgrade would trip over ('table _alembic_tmp_runs already exists'). The table is whole."""
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
        for copy in (t for t in tables if t.startswith(STALE_COPY) and t.removeprefix(STALE_COPY) in tables):
            db.execute(f'drop table "{copy}"')
