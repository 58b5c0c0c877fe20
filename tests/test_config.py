"""The real conf/ composes for every group option; core keys are typed, validated, and have one default;
--help stays light."""
import dataclasses
import subprocess
import sys

import pytest
import yaml

from nf_trainer.core.config import Config, validate
from nf_trainer.core.errors import NfTrainerError, one_line_errors, quiet_interrupt
from tests.conftest import MAIN, ROOT, compose_cfg, environment, run_here, run_probed

CONF = ROOT / "conf"
GROUPS = ["optimizer", "scheduler", "loss", "model", "dataset", "transforms", "metrics", "mlflow", "debug"]


@pytest.mark.parametrize("group,option", [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))])
def test_every_group_option_composes(group, option):
    cfg = compose_cfg(f"{group}={option}")
    assert cfg.trainer.max_epochs >= 1


def test_acceptance_overrides_compose():
    cfg = compose_cfg("optimizer=adam", "optimizer.lr=1e-3", "trainer.max_epochs=3", "seed=1", "model=efficientnet_b0",
                      "mlflow.tracking_uri=sqlite:////tmp/x.db", "mlflow.experiment_name=exp", "resume=/tmp/last.pt")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.trainer.max_epochs == 3 and cfg.seed == 1 and cfg.resume == "/tmp/last.pt"
    assert cfg.model.name == "efficientnet-b0"
    assert cfg.mlflow.tracking_uri == "sqlite:////tmp/x.db" and cfg.mlflow.experiment_name == "exp"


def test_default_store_is_absolute_and_under_the_project():
    cfg = compose_cfg()
    assert cfg.mlflow.tracking_uri == f"sqlite:///{ROOT}/outputs/mlflow.db"
    assert cfg.mlflow.artifact_location == f"{ROOT}/outputs/mlartifacts"


def test_each_core_default_lives_in_the_schema_only():
    """conf/ sets no core key to the value the schema already gives it (one place per default)."""
    schema = dataclasses.asdict(Config())

    def repeats(node: dict, defaults: dict, where: str):
        for key, value in node.items():
            if key in defaults and isinstance(value, dict) and isinstance(defaults[key], dict):
                yield from repeats(value, defaults[key], f"{where}{key}.")
            elif key in defaults and value == defaults[key]:
                yield f"{where}{key}"

    found = []
    for path in CONF.rglob("*.yaml"):
        node = yaml.safe_load(path.read_text()) or {}
        package = {"config.yaml": "", "team.yaml": "mlflow."}.get(path.name)
        if package is not None:
            defaults = schema if not package else schema[package.rstrip(".")]
            found += [f"{path.relative_to(ROOT)}: {key}" for key in repeats(node, defaults, package)]
    assert not found, found
    assert compose_cfg().trainer.max_epochs == Config().trainer.max_epochs == 20


def test_team_server_option_points_at_a_server_and_keeps_the_other_defaults():
    team = compose_cfg("mlflow=team", "mlflow.tracking_uri=http://127.0.0.1:5000").mlflow
    assert team.tracking_uri == "http://127.0.0.1:5000" and team.artifact_location is None
    assert team.experiment_name == "nf_trainer" and team.log_checkpoints == "best"


@pytest.mark.parametrize("override,needle", [
    ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1, got 0"),
    ("optimizer.lr=-0.1", "optimizer.lr must be >= 0, got -0.1"),
    ("loader.batch_size=0", "loader.batch_size must be >= 1, got 0"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction must be between 0 and 1 (exclusive), got 1.5"),
    ("trainer.precision=fp8", "trainer.precision must be one of auto, 32, bf16, 16, got 'fp8'"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1"),
    ("trainer.gradient_clip_val=0", "trainer.gradient_clip_val must be > 0 or null"),
    ("trainer.ema_decay=1.5", "trainer.ema_decay must be between 0 and 1"),
    ("mlflow.tracker=thread", "mlflow.tracker must be one of auto, process, inline, got 'thread'"),
    ("mode=eval", "mode=eval needs ckpt=PATH"),
    ("mode=serve", "mode must be one of train, eval, predict, export, got 'serve'"),
    ("ckpt=x.pt", "ckpt= is read by mode=eval|predict|export; to continue training use resume="),
    ("export=[tflite]", "export: unknown format 'tflite'; choose from torchscript, onnx"),
    ("scheduler.gamma=0", "scheduler.gamma must be > 0"),
    ("scheduler=multistep scheduler.milestones=[0,5]", "scheduler.milestones must be integers >= 1 (epochs), got [0, 5]"),
    ("scheduler=cosine scheduler.T_max=0", "scheduler.T_max must be an integer >= 1"),
    ("optimizer=sgd optimizer.momentum=1.5", "optimizer.momentum must be in [0, 1), got 1.5"),
    ("optimizer.betas=[0.9,1.0]", "optimizer.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    ("optimizer=rmsprop +optimizer.eps=0", "optimizer.eps must be > 0"),
])
def test_out_of_range_values_are_one_line_errors(override, needle):
    with pytest.raises(NfTrainerError) as err:
        validate(compose_cfg(*override.split()))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_debug_presets():
    fast = compose_cfg("debug=fast")
    assert fast.trainer.max_epochs == 1 and fast.trainer.limit_train_batches == 2 and fast.trainer.limit_eval_batches == 2
    overfit = compose_cfg("debug=overfit")
    assert overfit.trainer.max_epochs > 10 and overfit.trainer.limit_train_batches <= 5 and not overfit.loader.shuffle


@pytest.mark.parametrize("override,needle", [
    ("trainer.max_epochs=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("trainer.epochs=3", "trainer.epochs is not a key of trainer: did you mean trainer.max_epochs?"),
    ("optimizer=adamm", "Could not find 'optimizer/adamm'"),
])
def test_bad_overrides_fail_at_composition(override, needle):
    with pytest.raises(Exception) as err:
        compose_cfg(override)
    assert needle in f"{err.value} {err.value.__cause__}"


def test_an_uncaught_ctrl_c_is_one_line_and_other_errors_keep_their_traceback(capsys):
    seen = []
    hook = quiet_interrupt(lambda *exc: seen.append(exc[0]))
    hook(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n" and seen == []
    hook(ValueError, ValueError("x"), None)
    assert seen == [ValueError] and capsys.readouterr().err == ""


def test_a_user_config_file_that_does_not_parse_is_one_line_with_its_place(tmp_path, bare_out):
    broken = tmp_path / "my_conf" / "optimizer" / "broken.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text("_target_: torch.optim.SGD\nlr: [0.1\n")
    with environment(HYDRA_FULL_ERROR=None), pytest.raises(SystemExit) as exit_:
        with one_line_errors():  # what main.py runs the job in
            run_here("--config-dir", str(broken.parent.parent), "optimizer=broken", out=bare_out)
    message = exit_.value.code  # a string: printed on stderr, exit status 1
    assert message.startswith(f"{broken}:3:1: config file does not parse: expected ',' or ']'") and "\n" not in message
    assert "flow sequence at line 2, column 5" in message
    assert list(bare_out.iterdir()) == []  # no run folder, no MLflow store


def test_help_lists_groups_without_importing_torch_or_mlflow(tmp_path):
    for flag in (["--help"], ["--cfg", "job"]):
        result = run_probed(*flag, tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "HEAVY: []" in result.stdout
    help_text = subprocess.run([sys.executable, str(MAIN), "--help"], capture_output=True, text=True, timeout=60).stdout
    for line in ("optimizer: adam, adamw, adan, lamb, lion, rmsprop, sgd", "scheduler: cosine, multistep, none, onecycle, step",
                 "model: convnext_tiny, deeplabv3_mobilenet_v3_large, efficientnet_b0", "debug: fast, overfit",
                 "dataset: cifar10, cifar100, coco, csv, digits, fashion_mnist, image_folder, mask_folder, mnist, multi",
                 "transforms: cifar, detection, digits, imagenet", "task: classification, detection",
                 "transforms/augment: autoaugment, randaugment, trivialaugment"):
        assert line in help_text
