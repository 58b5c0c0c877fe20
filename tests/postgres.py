"""A real PostgreSQL server on loopback for the tests that need a team database (the MLflow team server, a
shared Optuna study). .ci/run installs Debian's postgresql; where it is missing, `database` yields None and
those tests fall back or skip."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd: str) -> list[str]:
    # PostgreSQL refuses to run as root: run its tools as the 'postgres' user Debian's package creates.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


def installed() -> Path | None:
    """PostgreSQL's bin folder, when both the server and psycopg (the `team` extra, in `.[dev]`) are here."""
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None
    return None if initdb is None else Path(initdb).resolve().parent


@contextlib.contextmanager
def database(name: str) -> Iterator[str | None]:
    """A fresh server with one database `name`: its URL postgresql://postgres@127.0.0.1:<port>/<name>, or None
    where PostgreSQL is not installed. Stopped and removed afterwards."""
    bindir = installed()
    if bindir is None:
        yield None
        return
    home = Path(tempfile.mkdtemp(prefix="nf_pg_"))
    home.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    data, port = home / "data", free_port()
    subprocess.run(as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"),
                   check=True, capture_output=True)
    subprocess.run(as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "pg.log"), "-o",
                               f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"), check=True, capture_output=True)
    try:
        subprocess.run(as_postgres(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name),
                       check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/{name}"
    finally:
        subprocess.run(as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"), capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
