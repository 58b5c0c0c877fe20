"""The bad-input catalogue: each bad input gets a clear one-line message and exit code 1, and loses nothing.

All cases run against one output root that already holds an earlier, finished run; after each case that
run and its checkpoints are unchanged and no run in the store is left RUNNING. The job runs in this
process (the error it raises is what main.py prints in one line, with exit status 1); the cases that need
a process of their own (a dropped capability, a file size limit) and one config error run `python main.py`
and check its stderr and exit status themselves.

To add a case, append a `Case` to CASES.
"""
from __future__ import annotations

import ctypes
import hashlib
import resource
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import fails_in_one_line, run_here, run_main, run_probed, runs
from tests.data_files import make_image_folder

FAST = ("debug=fast", "trainer.progress_bar=false")
# No network for weight downloads: the Hugging Face Hub offline, an unreachable proxy, an empty cache
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HOME": "{tmp}/hf", "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
           "no_proxy": "", "NO_PROXY": ""}


def drop_root_file_override() -> None:
    """Root ignores permission bits; without CAP_DAC_OVERRIDE/READ_SEARCH/FOWNER a read-only folder is read-only."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):
        libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP: gone from the bounding set, hence after exec


def limit_file_size() -> None:
    """A 'disk' that takes no file over 3 MB: the MLflow store fits, a width-96 model's checkpoint does not."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))


@dataclass
class Case:
    id: str
    args: tuple[str, ...]  # '{earlier}': the earlier run's folder, '{tmp}': a scratch folder, '{out}': the root
    message: str  # expected in the last line of stderr (the line before may say which job failed)
    preexec: Callable | None = None
    setup: Callable[[Path, Path, Path], None] | None = None  # (out, earlier run folder, tmp)
    new_run_failed: bool = False  # the case gets as far as an MLflow run, which must then be FAILED
    check: Callable | None = None  # more checks on that failed run
    own_process: bool = False  # run `python main.py` (always, with a preexec)
    env: dict | None = None  # more environment for the job ('{tmp}' filled in)


def last_good_checkpoint_kept(run) -> None:
    """The NaN appeared in epoch 2: last.pt is still the end of epoch 1, with finite weights."""
    last = Path(run.data.tags["output_dir"]) / "last.pt"
    kept = torch.load(last, weights_only=True)
    assert kept["epoch"] == 1 and all(torch.isfinite(t).all() for t in kept["model"].values())
    assert f"({last} is kept)" in run.data.tags["error"]


def make_read_only(out: Path, earlier: Path, tmp: Path) -> None:
    out.chmod(0o555)


def corrupt_copy(out: Path, earlier: Path, tmp: Path) -> None:
    shutil.copytree(earlier, tmp / "copy", ignore=shutil.ignore_patterns(".hydra", "*.log", "*.yaml"))
    last = tmp / "copy" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a truncated copy


def image_folder(out: Path, earlier: Path, tmp: Path) -> None:
    make_image_folder(tmp / "images", per_class=5, bad=False)


def with_empty_class(out: Path, earlier: Path, tmp: Path) -> None:
    image_folder(out, earlier, tmp)
    (tmp / "images" / "7" / "nested").mkdir(exist_ok=True)
    for image in (tmp / "images" / "7").rglob("*.*"):
        image.unlink()


def with_corrupt_image(out: Path, earlier: Path, tmp: Path) -> None:
    image_folder(out, earlier, tmp)
    (tmp / "images" / "3" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)


def with_zero_byte_image(out: Path, earlier: Path, tmp: Path) -> None:
    image_folder(out, earlier, tmp)
    (tmp / "images" / "5" / "empty.png").write_bytes(b"")


def csv_without_path_column(out: Path, earlier: Path, tmp: Path) -> None:
    image_folder(out, earlier, tmp)
    rows = [f"{p.relative_to(tmp / 'images')},{p.relative_to(tmp / 'images').parts[0]}" for p in (tmp / "images").rglob("*.png")]
    (tmp / "images" / "all.csv").write_text("file,label\n" + "\n".join(rows) + "\n")


FOLDER = (*FAST, "dataset=image_folder", "dataset.root={tmp}/images", "dataset.on_bad_file=fail")

CASES = [
    Case("typo_key", ("trainer.max_epoch=3",),
         "trainer.max_epoch is not a key of trainer: did you mean trainer.max_epochs? (--help lists the keys)", own_process=True),
    # a group option's node (`_target_`) takes new arguments with +key=value; a typo'd one is still named
    Case("typo_option_key", ("optimizer.lrr=0.1",), "optimizer.lrr is not a key of optimizer: did you mean optimizer.lr? "
         "(to pass torch.optim.AdamW an argument it does not list, write +optimizer.lrr=0.1)"),
    # Hydra adds `+key=value` to a schema node too, where nothing would read it
    Case("added_schema_key", ("+trainer.max_epoch=3",), "trainer.max_epoch is not a key of trainer, and nothing would "
         "read it: drop +trainer.max_epoch= (--help lists the keys)"),
    Case("unknown_group_option", ("optimizer=adamm",),
         "Could not find 'optimizer/adamm'. Available options in 'optimizer': adam, adamw, adan, lamb, lion, rmsprop, sgd"),
    Case("wrong_type", ("loader.batch_size=abc",),
         "Error merging override loader.batch_size=abc. Value 'abc' of type 'str' could not be converted to Integer"),
    Case("negative_epochs", ("trainer.max_epochs=-1",), "trainer.max_epochs must be >= 1, got -1"),
    Case("negative_lr", ("optimizer.lr=-0.1",), "optimizer.lr must be >= 0, got -0.1"),
    Case("negative_step_size", ("scheduler.step_size=-3",),
         "scheduler.step_size must be an integer >= 1 (epochs between decays), got -3"),
    Case("zero_batch_size", ("loader.batch_size=0",), "loader.batch_size must be >= 1, got 0"),
    Case("val_fraction_out_of_range", ("dataset.val_fraction=1.5",),
         "dataset.val_fraction must be between 0 and 1 (exclusive), got 1.5"),
    Case("read_only_output_dir", FAST,
         "cannot write to '{out}': Permission denied; make it writable or choose another folder with paths.output_root=DIR",
         preexec=drop_root_file_override, setup=make_read_only),
    Case("label_out_of_range", (*FAST, "dataset._target_=tests.bad_parts.digits_shifted_labels"),
         "the train set has label 10, outside 0..9 for its 10 classes"),
    Case("num_classes_mismatch", (*FAST, "model.num_classes=5"),
         "model.num_classes=5 but the data has 10 classes: set model.num_classes=null"),
    Case("nan_loss", (*FAST, "trainer.max_epochs=3", "model._target_=tests.bad_parts.FaultyCNN", "+model.nan_at=[4]"),
         "non-finite training loss (NaN or Inf) at epoch 2, step 4: stopped before saving", new_run_failed=True,
         check=last_good_checkpoint_kept, own_process=True),
    Case("disk_full_while_checkpointing", (*FAST, "model.width=96"),
         "(File too large): is the disk full?", preexec=limit_file_size, new_run_failed=True),
    Case("resume_missing_checkpoint", (*FAST, "resume={tmp}/nowhere/last.pt"),
         "no checkpoint at '{tmp}/nowhere/last.pt': give resume= a .pt file or a run's output dir"),
    Case("resume_corrupt_checkpoint", (*FAST, "resume={tmp}/copy"),
         "checkpoint '{tmp}/copy/last.pt' is corrupt or truncated (PytorchStreamReader failed reading zip archive: "
         "failed finding central directory); the last good one is '{tmp}/copy/best-loss.pt' (epoch 1)",
         setup=corrupt_copy),
    Case("checkpoint_of_another_model", (*FAST, "model=efficientnet_b0", "resume={earlier}/last.pt"),
         "does not fit this model (was it trained with another model=?)"),
    Case("checkpoint_of_another_optimizer", (*FAST, "optimizer=sgd", "resume={earlier}"),
         "holds the state of another optimizer than SGD (it has no dampening, momentum, nesterov): resume with the "
         "optimizer= the run was trained with"),
    Case("unreachable_tracking_server", (*FAST, "mlflow.tracking_uri=http://127.0.0.1:9"),
         "MLflow tracking server http://127.0.0.1:9 is not reachable"),
    Case("missing_data_folder", (*FAST, "dataset=image_folder", "dataset.root={tmp}/nowhere"),
         "dataset.root={tmp}/nowhere is not a folder"),
    Case("empty_class_folder", FOLDER, "class folder(s) with no images in {tmp}/images: 7", setup=with_empty_class),
    Case("corrupt_image", FOLDER, "{tmp}/images/3/corrupt.jpg: ", setup=with_corrupt_image),
    Case("zero_byte_image", FOLDER, "{tmp}/images/5/empty.png: ", setup=with_zero_byte_image),
    Case("warmup_longer_than_the_run", (*FAST, "scheduler.warmup_epochs=2"),
         "scheduler.warmup_epochs=2 is not shorter than the run (trainer.max_epochs=1, 2 optimizer steps each): "
         "lower scheduler.warmup_epochs or raise trainer.max_epochs"),
    Case("unknown_timm_model", (*FAST, "model=timm", "model.name=resnet181"),
         "unknown timm model 'resnet181'; did you mean resnet18"),
    Case("timm_pretrained_offline", (*FAST, "model=timm", "model.name=resnet18", "model.pretrained=true"),
         "cannot download the pretrained weights of timm model 'resnet18' (", own_process=True, env=OFFLINE),
    Case("alias_without_a_registered_model", (*FAST, "mlflow.registered_model_alias=champion"),
         "mlflow.registered_model_alias needs mlflow.registered_model_name=NAME"),
    Case("csv_without_path_column", (*FAST, "dataset=csv", "dataset.train_csv={tmp}/images/all.csv"),
         "{tmp}/images/all.csv has no column 'path' (its columns: file, label)", setup=csv_without_path_column),
    # an Optuna study: refused before its MLflow run and any trial (nf_trainer/sweep/search.py:prepare)
    Case("optuna_unreachable_storage", (*FAST, "hparams_search=optuna",
                                        "hydra.sweeper.storage=postgresql+psycopg://nf:hunter2@127.0.0.1:1/optuna"),
         "the Optuna storage postgresql+psycopg://nf:***@127.0.0.1:1/optuna cannot be opened (connection failed"),
    Case("optuna_malformed_space", (*FAST, "hparams_search=optuna", "optimizer.lr=interval(0.1, 0.001)"),
         "the search space entry 'optimizer.lr=interval(0.1, 0.001)' is not a valid range: `low <= high` must hold"),
    Case("optuna_space_that_does_not_parse", (*FAST, "hparams_search=optuna", "optimizer.lr=interval(1e-4)"),
         "Error parsing override 'optimizer.lr=interval(1e-4)'. TypeError while evaluating 'interval(1e-4)'"),
    Case("optuna_direction_against_the_objective", (*FAST, "hparams_search=optuna", "hydra.sweeper.direction=maximize"),
         "objective.metric=loss is minimized but hydra.sweeper.direction=maximize: set objective.mode or the direction"),
]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.pt"))}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One output root with an earlier finished run in it."""
    out = tmp_path_factory.mktemp("catalogue") / "outputs"
    out.mkdir()
    run_here(*FAST, out=out)
    (earlier,) = runs(out)
    folder = Path(earlier.data.tags["output_dir"])
    return out, earlier, folder, digest(folder)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, store, tmp_path):
    out, earlier, folder, checkpoints = store
    fill = lambda text: text.format(earlier=folder, tmp=tmp_path, out=out)
    before = {r.info.run_id for r in runs(out)}
    if case.setup is not None:
        case.setup(out, folder, tmp_path)
    try:
        if case.own_process or case.preexec is not None:
            env = {key: fill(value) for key, value in (case.env or {}).items()}
            result = run_main(*map(fill, case.args), out=out, check=False, preexec_fn=case.preexec, env=env)
            assert result.returncode == 1, result.stderr[-3000:]
            assert "Traceback" not in result.stderr, result.stderr[-3000:]
            last_line = [line for line in result.stderr.splitlines() if line.strip()][-1]
        else:
            last_line = fails_in_one_line(*map(fill, case.args), out=out)
    finally:
        out.chmod(0o755)
    assert fill(case.message) in last_line

    # nothing earlier lost, nothing left RUNNING
    assert digest(folder) == checkpoints
    found = {r.info.run_id: r for r in runs(out)}
    assert found[earlier.info.run_id].info.status == "FINISHED"
    assert found[earlier.info.run_id].data.metrics == earlier.data.metrics
    assert all(r.info.status != "RUNNING" for r in found.values())
    new = [r for run_id, r in found.items() if run_id not in before]
    if case.new_run_failed:
        (run,) = new
        assert run.info.status == "FAILED" and fill(case.message) in run.data.tags["error"]
        if case.check is not None:
            case.check(run)
    else:
        assert new == []


@pytest.mark.parametrize("override", ["trainer.max_epochs=0", "trainer.epochs=3", "optimizer.lr=-1"])
def test_config_errors_come_before_any_heavy_import(override, tmp_path):
    result = run_probed(override, f"paths.output_root={tmp_path}", tmp_path=tmp_path)
    assert "HEAVY: []" in result.stdout and "EXIT:" in result.stderr, result.stderr[-2000:]
