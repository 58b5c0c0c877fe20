"""What every job records about itself on its MLflow run: params, tags, a name, its config files, its log."""
from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nf_trainer.jobs.summary import short_number
from nf_trainer.tracking.git import git_info
from nf_trainer.tracking.interface import Tracker
from nf_trainer.tracking.secrets import flatten

# overrides a training run's default name leaves out: the model and optimizer head the name anyway, and
# where things go (paths, the store) or how they are shown (progress bar) is not what varies between runs
RUN_NAME_SKIP = ("model=", "optimizer=", "optimizer.lr=", "mlflow", "paths", "hydra", "resume", "trainer.progress_bar",
                 "rerun")


def output_dir() -> Path:
    """The job's own folder, which Hydra made (outputs/runs/<date>/<time>, or a sweep job's)."""
    return Path(HydraConfig.get().runtime.output_dir)


def overrides() -> list[str]:
    """The job's command-line overrides."""
    return list(HydraConfig.get().overrides.task)


def run_params(cfg: DictConfig, **more: object) -> dict[str, str]:
    """The whole resolved config, flattened to dotted keys (`optimizer.lr`), and facts the job adds."""
    return flatten(OmegaConf.to_container(cfg, resolve=True)) | {key: str(value) for key, value in more.items()}


def run_tags(cfg: DictConfig, out_dir: Path, extra_tags: dict[str, str], **specific: object) -> dict[str, str]:
    """Tags every run has (mode, overrides, output dir, git), the job's own, `mlflow.tags`, and the sweep's
    (`extra_tags`: the config hash, the parent run)."""
    return {"mode": cfg.mode, "overrides": " ".join(overrides()) or "(none)", "output_dir": str(out_dir), **git_info(),
            **{key: str(value) for key, value in specific.items()},
            **{str(k): str(v) for k, v in cfg.mlflow.tags.items()}, **extra_tags}


def default_run_name(cfg: DictConfig) -> str:
    """A training run is named after what varies: simple_cnn-adam-lr0.001, plus any other overridden values."""
    choices = HydraConfig.get().runtime.choices
    parts = [choices.get("model", "model"), choices.get("optimizer", "opt")]
    lr = cfg.optimizer.get("lr")
    if lr is not None:
        parts.append(f"lr{short_number(str(lr))}")
    for override in overrides():
        if not override.lstrip("+~").startswith(RUN_NAME_SKIP):
            key, _, value = override.lstrip("+~").partition("=")
            value = value.strip("'\"")  # the quotes Hydra's grammar needs around a {...} or a space
            parts.append(value if key in choices else f"{key.rsplit('.', 1)[-1]}{short_number(value)}")
    return "-".join(parts)


def record_config(cfg: DictConfig, tracker: Tracker, out_dir: Path) -> None:
    """Hydra's config files and the resolved config, as the run's `hydra/` artifacts (what `rerun=` reads)."""
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tracker.log_artifact(out_dir / ".hydra", "hydra")
    tracker.log_artifact(out_dir / "config_resolved.yaml", "hydra")


def record_log(tracker: Tracker, out_dir: Path) -> None:
    """The job's log file (Hydra's `<job name>.log`), as it stands at the end of the run."""
    tracker.log_artifact(out_dir / f"{HydraConfig.get().job.name}.log")
