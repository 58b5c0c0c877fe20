"""The best model after training, and `mode=eval` of any checkpoint.

After `fit`: the best checkpoint (the first of `trainer.save_best`) is loaded back; each eval set gets a
confusion matrix and a per-class report (MLflow artifacts `reports/<set>/`); the model is logged to
MLflow once and exported to the formats in `export`.

`python main.py mode=eval ckpt=PATH`: a new MLflow run, tagged with the training run it came from
(`source_run_id`), with the same metric names as training (`val/<set>/<metric>`, at the checkpoint's
epoch) and the same reports.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nf_trainer.inference import build_model, check_classes, load_for_inference, predict_logits

log = logging.getLogger("nf_trainer")


def after_fit(job, cfg: DictConfig, classes: list[str], tracker) -> None:
    from nf_trainer.export import export_model
    from nf_trainer.model_logging import log_model
    from nf_trainer.trainer.checkpoint import load_checkpoint
    from nf_trainer.trainer.distributed import barrier, unwrap

    barrier()  # under torchrun, rank 0 has written the best checkpoint: every rank loads it
    path = best_checkpoint(job.out_dir, list(job.best))
    ckpt = load_checkpoint(path)
    unwrap(job.model).load_state_dict(ckpt["model"])
    log.info("best model: %s (epoch %d)", path.name, ckpt["epoch"])
    report_eval_sets(job.model, job.eval_loaders, classes, job.device, job.limit_eval_batches, job.out_dir, tracker)

    if not job.is_main or not (cfg.mlflow.log_model or cfg.export):
        return
    loader = next(iter(job.eval_loaders.values()), job.train_loader)
    images = next(iter(loader))[0][:2]  # real images, after the eval transforms
    example = torch.cat([images, images])[:2].cpu()  # 2 of them: an example batch of 1 would freeze the batch size
    model = unwrap(job.model).cpu()
    if cfg.mlflow.log_model:
        log_model(model, example, classes, tracker, cfg.mlflow.registered_model_name)
    if cfg.export:
        tracker.log_artifact(export_model(model, example, list(cfg.export), job.out_dir / "export"), "export")


def best_checkpoint(out_dir: Path, stems: list[str]) -> Path:
    """best-<first save_best metric>.pt, else last.pt (with `trainer.save_best=[]`)."""
    for stem in stems:
        if (out_dir / f"best-{stem}.pt").is_file():
            return out_dir / f"best-{stem}.pt"
    return out_dir / "last.pt"


def report_eval_sets(model, loaders: dict, classes: list[str], device, limit_batches, out_dir: Path, tracker) -> None:
    from nf_trainer.reports import write_reports

    for name, loader in loaders.items():
        logits, targets = predict_logits(model, loader, device, limit_batches)
        folder = write_reports(targets.numpy(), logits.argmax(1).numpy(), classes, out_dir / "reports" / name, name)
        tracker.log_artifact(folder, f"reports/{name}")


def evaluate_checkpoint(cfg: DictConfig) -> float:
    """`mode=eval`: returns the first eval set's accuracy (for sweeps over checkpoints)."""
    from hydra.core.hydra_config import HydraConfig

    from nf_trainer.instantiate import create_instance
    from nf_trainer.run import build_data, build_metrics, model_inputs, resolve_device
    from nf_trainer.tracking import Tracker, flatten, git_info
    from nf_trainer.trainer import engine

    ckpt, path, cfg = load_for_inference(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.trainer.device)
    data, loaders, _ = build_data(cfg, device)
    check_classes(ckpt, data.classes, "the dataset")
    model = build_model(cfg, data, ckpt, path, device)
    loss_fn = create_instance(cfg.loss, torch.nn, **model_inputs(cfg.loss, data)).to(device)
    metrics = build_metrics(cfg.metrics, data.num_classes, device)

    tracker = Tracker(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name, cfg.mlflow.artifact_location)
    source = ckpt.get("run_id")
    source_name = _run_name(tracker, source) or (source or "unknown")[:8]
    tags = {"mode": "eval", "source_run_id": str(source), "source_checkpoint": str(path.resolve()),
            "source_epoch": str(ckpt["epoch"]), "output_dir": str(out_dir), **git_info(),
            **{str(k): str(v) for k, v in cfg.mlflow.tags.items()}}
    run_name = cfg.mlflow.run_name or f"eval-{path.stem}-{source_name}"
    run_id = tracker.start(run_name, flatten(OmegaConf.to_container(cfg, resolve=True)), tags)
    log.info("evaluating %s (epoch %d of run %s) in MLflow run %s (%s)", path, ckpt["epoch"], source, run_id, run_name)
    try:
        values = {}
        for name in data.eval:
            scores = engine.evaluate(model, loaders[name], loss_fn, metrics, device, cfg.trainer.limit_eval_batches)
            values |= {f"val/{name}/{key}": value for key, value in scores.items()}
        tracker.log_metrics(values, step=ckpt["epoch"])
        log.info("  ".join(f"{key} {value:.4g}" for key, value in values.items()))
        report_eval_sets(model, {name: loaders[name] for name in data.eval}, data.classes, device,
                         cfg.trainer.limit_eval_batches, out_dir, tracker)
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        tracker.log_artifact(out_dir / "config_resolved.yaml", "hydra")
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return values.get(f"val/{next(iter(data.eval))}/accuracy")


def _run_name(tracker, run_id: str | None) -> str | None:
    """The training run's name, when it is in this store."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return tracker.client.get_run(run_id).info.run_name
    except MlflowException:
        return None
