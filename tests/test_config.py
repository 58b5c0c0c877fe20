"""The real conf/ composes for every group option; core keys are typed; --help stays light."""
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from nf_trainer.config import register_configs
from tests.conftest import MAIN, ROOT, run_probed

CONF = ROOT / "conf"
GROUPS = ["optimizer", "scheduler", "loss", "model", "dataset", "transforms", "metrics", "trainer", "mlflow", "debug"]


def compose_cfg(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


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


def test_debug_presets():
    fast = compose_cfg("debug=fast")
    assert fast.trainer.max_epochs == 1 and fast.trainer.limit_train_batches == 2 and fast.trainer.limit_eval_batches == 2
    overfit = compose_cfg("debug=overfit")
    assert overfit.trainer.max_epochs > 10 and overfit.trainer.limit_train_batches <= 5 and not overfit.loader.shuffle


@pytest.mark.parametrize("override,needle", [
    ("trainer.max_epochs=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
    ("trainer.epochs=3", "Key 'epochs' not in 'TrainerConf'"),
    ("optimizer=adamm", "Could not find 'optimizer/adamm'"),
])
def test_bad_overrides_fail_at_composition(override, needle):
    with pytest.raises(Exception) as err:
        compose_cfg(override)
    assert needle in f"{err.value} {err.value.__cause__}"


def test_help_lists_groups_without_importing_torch_or_mlflow(tmp_path):
    for flag in (["--help"], ["--cfg", "job"]):
        result = run_probed(*flag, tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "HEAVY: []" in result.stdout
    help_text = subprocess.run([sys.executable, str(MAIN), "--help"], capture_output=True, text=True, timeout=60).stdout
    for line in ("optimizer: adam, adamw, rmsprop, sgd", "scheduler: cosine, multistep, none, step",
                 "model: convnext_tiny, efficientnet_b0, efficientnet_b1", "debug: fast, overfit",
                 "dataset: cifar10, cifar100, csv, digits, fashion_mnist, image_folder, mnist, multi",
                 "transforms: cifar, digits, imagenet", "transforms/augment: autoaugment, randaugment, trivialaugment"):
        assert line in help_text
