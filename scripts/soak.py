"""Soak test: many short jobs in one process (a sequential multirun) must leave nothing behind.

    python scripts/soak.py                      # 50 debug=fast jobs in a temp output root
    python scripts/soak.py --jobs 6 --out DIR   # the small version the test suite runs

After every job a Hydra callback records, in this same process: open file descriptors, resident memory,
threads, listening sockets, whether an MLflow run is active, and how many runs the store holds as RUNNING.
It prints a JSON report (also written to OUT/soak.json) and exits 1 if a check fails:
  - every job's run FINISHED, no run RUNNING after any job, no active MLflow run;
  - open files do not grow after the first jobs (warm-up: imports, the store's connection pool);
  - resident memory grows by less than --max-growth-mb from the end of warm-up to the last job;
  - nothing listens on a socket.
"""
from __future__ import annotations

import argparse
import json
import runpy
import sys
import tempfile
import threading
from pathlib import Path

from hydra.experimental.callback import Callback

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 2  # jobs after which the process is considered warm


class ResourceProbe(Callback):
    """Hydra callback (`hydra.callbacks`): one JSON line per finished job in `report`."""

    def __init__(self, report: str, tracking_uri: str):
        self.report, self.tracking_uri = Path(report), tracking_uri

    def on_job_end(self, config, job_return, **kwargs) -> None:
        import mlflow
        import psutil

        me = psutil.Process()
        client = mlflow.MlflowClient(self.tracking_uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = client.search_runs(experiments, "attributes.status = 'RUNNING'") if experiments else []
        running = [r for r in running if "mlflow.parentRunId" in r.data.tags]  # the sweep's parent runs until its end
        record = {
            "job": config.hydra.job.num,
            "status": job_return.status.name,
            "open_files": me.num_fds(),
            "rss_mb": round(me.memory_info().rss / 2**20, 1),
            "threads": threading.active_count(),
            "child_processes": len(me.children(recursive=True)),  # the job's tracker process has left
            "listening": [f"{c.laddr.ip}:{c.laddr.port}" for c in me.net_connections("all") if c.status == "LISTEN"],
            "active_mlflow_run": mlflow.active_run() is not None,
            "running_runs": len(running),
        }
        with self.report.open("a") as f:
            f.write(json.dumps(record) + "\n")


def verdict(records: list[dict], statuses: list[str], jobs: int, max_growth_mb: float) -> dict:
    warm, last = records[WARMUP - 1], records[-1]
    checks = {
        "all jobs ran": len(records) == jobs and all(r["status"] == "COMPLETED" for r in records),
        "every run FINISHED": len(statuses) == jobs and all(s == "FINISHED" for s in statuses),
        "no run left RUNNING": all(r["running_runs"] == 0 for r in records),
        "no active MLflow run": not any(r["active_mlflow_run"] for r in records),
        "open files do not grow": max(r["open_files"] for r in records[WARMUP - 1:]) <= warm["open_files"],
        "memory growth bounded": last["rss_mb"] - warm["rss_mb"] < max_growth_mb,
        "nothing listens": not any(r["listening"] for r in records),
        "no process left behind": not any(r["child_processes"] for r in records),
    }
    return {
        "jobs": jobs,
        "checks": checks,
        "open_files": {"after_warmup": warm["open_files"], "max_after_warmup": max(r["open_files"] for r in records[WARMUP - 1:]),
                       "last": last["open_files"]},
        "rss_mb": {"after_warmup": warm["rss_mb"], "last": last["rss_mb"], "growth": round(last["rss_mb"] - warm["rss_mb"], 1),
                   "max_growth_allowed": max_growth_mb},
        "threads": {"after_warmup": warm["threads"], "last": last["threads"]},
        "ok": all(checks.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="output root (default: a temp folder)")
    parser.add_argument("--max-growth-mb", type=float, default=100.0)
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="nf_soak_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report, uri = out / "soak.jsonl", f"sqlite:///{out}/mlflow.db"
    report.unlink(missing_ok=True)

    sys.path.insert(0, str(ROOT))
    sys.argv = [str(ROOT / "main.py"), "-m", f"seed=range(0,{args.jobs})", "debug=fast", "trainer.progress_bar=false",
                f"paths.output_root={out}", "+hydra.callbacks.soak_probe._target_=scripts.soak.ResourceProbe",
                f"+hydra.callbacks.soak_probe.report={report}", f"+hydra.callbacks.soak_probe.tracking_uri={uri}"]
    try:  # the real entry point, in this process: Hydra's basic launcher runs the jobs one after the other
        runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            print(f"the multirun failed (exit {exc.code})", file=sys.stderr)

    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("nf_trainer")
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    # the jobs' runs, then the sweep's parent run, which must have ended FINISHED too
    statuses = [r.info.status for r in found if "mlflow.parentRunId" in r.data.tags]
    statuses += [] if all(r.info.status == "FINISHED" for r in found) else ["parent not FINISHED"]
    records = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    enough = len(records) >= WARMUP
    result = verdict(records, statuses, args.jobs, args.max_growth_mb) if enough else {"ok": False, "jobs": len(records)}
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
