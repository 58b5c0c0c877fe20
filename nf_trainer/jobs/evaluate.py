"""`python main.py mode=eval ckpt=PATH`: a new MLflow run for a trained checkpoint.

It is tagged with the training run it came from (`source_run_id`), logs the same metric names as training
(`val/<set>/<metric>`, `val/avg/<metric>`, at the checkpoint's epoch) and the same reports, and returns the
configured objective, like a training run.
"""
from __future__ import annotations

import logging

from omegaconf import DictConfig

from nf_trainer.core.device import resolve_device
from nf_trainer.core.metric_keys import known_keys, resolve_key, resolve_mode
from nf_trainer.dataset.loaders import build_loaders, read_splits
from nf_trainer.jobs.from_checkpoint import (
    check_classes,
    checkpoint_model,
    checkpoint_task,
    open_checkpoint,
    start_checkpoint_run,
)
from nf_trainer.jobs.reports import report_eval_sets
from nf_trainer.jobs.run_record import output_dir, record_config, record_log
from nf_trainer.tracking.interface import Tracker
from nf_trainer.tracking.outcome import tracked_outcome
from nf_trainer.trainer.evaluation import evaluate_sets

log = logging.getLogger("nf_trainer")


def evaluate(cfg: DictConfig, tracker: Tracker, extra_tags: dict[str, str]) -> float:
    source = open_checkpoint(cfg)
    cfg, out_dir = source.cfg, output_dir()
    device = resolve_device(cfg.trainer.device)
    task = checkpoint_task(source, device, loss=True)
    splits = read_splits(cfg, device)
    check_classes(source, splits.classes, "the dataset")
    task.check_data(splits)  # as training does (and what the loss takes from the data: multi-label's pos_weight)
    data = build_loaders(cfg, splits, device, task.collate)
    model = checkpoint_model(source, task, device)
    eval_sets = list(splits.eval)
    metrics = {name: task.build_metrics(cfg.metrics, device) for name in eval_sets}
    objective_key = resolve_key(cfg.objective.metric, eval_sets, known_keys(eval_sets, task.metric_names(cfg.metrics)))

    start_checkpoint_run(source, tracker, out_dir, extra_tags)
    with tracked_outcome(tracker, out_dir):
        record_config(cfg, tracker, out_dir)
        values = evaluate_sets(task, model, data.eval_loaders, metrics, device, cfg.trainer.limit_eval_batches)
        tracker.log_metrics(values, step=source.ckpt["epoch"])
        log.info("  ".join(f"{key} {value:.4g}" for key, value in values.items()))
        report_eval_sets(task, model, data.eval_loaders, device, cfg.trainer.limit_eval_batches, out_dir, tracker)
        objective = tracker.log_objective(objective_key, resolve_mode(objective_key, cfg.objective.mode)).value
        record_log(tracker, out_dir)
    return objective
