"""A small soak: 6 debug=fast jobs of one sequential multirun, in one process, leave nothing behind.
(`python scripts/soak.py` runs the full 50.)"""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, runs


@pytest.mark.slow
def test_sequential_jobs_leave_no_open_run_no_open_files_and_listen_nowhere(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--jobs", "6", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "soak.json").read_text())
    assert result.returncode == 0 and report["ok"], (report, result.stderr[-3000:])
    assert all(report["checks"].values()) and len(report["checks"]) == 8

    found = runs(tmp_path)  # the sweep's parent run and its 6 children
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(found) == 7 and len(children) == 6 and {r.info.status for r in found} == {"FINISHED"}
    records = [json.loads(line) for line in (tmp_path / "soak.jsonl").read_text().splitlines()]
    assert [r["job"] for r in records] == list(range(6))
    assert max(r["open_files"] for r in records[1:]) <= records[1]["open_files"]  # no growth once warm
    assert all(r["listening"] == [] for r in records)  # a training job opens no listening socket at all
    assert all(r["child_processes"] == 0 for r in records)  # each job's tracker process has left
    assert records[-1]["rss_mb"] - records[1]["rss_mb"] < 100
