"""A checkpoint is data, never code: a pickle that would run something is refused before it can."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from nf_trainer.core.errors import NfTrainerError
from nf_trainer.trainer.checkpoint import load_checkpoint
from tests.conftest import ROOT, fails_in_one_line


class RunsCode:
    """Unpickling this calls os.system: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    """A torch.save'd file that looks like a checkpoint but runs `touch marker` when fully unpickled."""
    marker, path = tmp_path / "pwned", tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": {}, "epoch": 1, "global_step": 1, "rng": {}, "payload": RunsCode(marker)}, path)
    return path, marker


def test_a_malicious_checkpoint_is_refused_and_never_runs(malicious):
    path, marker = malicious
    with pytest.raises(NfTrainerError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"refusing to load '{path}': it is not a plain checkpoint and would run code (Trying to "
                              f"load unsupported GLOBAL posix.system whose module posix is blocked.)")
    assert not marker.exists()


def test_resuming_from_a_malicious_checkpoint_fails_in_one_line(malicious, bare_out):
    path, marker = malicious
    assert fails_in_one_line("debug=fast", f"resume={path}", out=bare_out).startswith(f"refusing to load '{path}'")
    assert not marker.exists()
    assert not (bare_out / "mlflow.db").exists()  # refused before any MLflow run was opened


def test_a_foreign_pickle_is_not_taken_for_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)  # a bare state_dict: safe, but not ours
    with pytest.raises(NfTrainerError, match=r"is not an nf_trainer checkpoint \(no model, optimizer, epoch"):
        load_checkpoint(path)


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for source in (ROOT / "nf_trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((source.name, flags.get("weights_only")))
    assert calls and all(flag == "True" for _, flag in calls), calls
