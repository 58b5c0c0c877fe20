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
from nf_trainer.dataset.loaders import build_data
from nf_trainer.jobs.from_checkpoint import check_classes, checkpoint_model, open_checkpoint, start_checkpoint_run
from nf_trainer.jobs.reports import report_eval_sets
from nf_trainer.jobs.run_record import output_dir, record_config, record_log
from nf_trainer.model.losses import build_loss
from nf_trainer.tracking.interface import Tracker
from nf_trainer.tracking.outcome import tracked_outcome
from nf_trainer.trainer.evaluation import evaluate_sets
from nf_trainer.trainer.metrics import build_metrics

log = logging.getLogger("nf_trainer")


def evaluate(cfg: DictConfig, tracker: Tracker, extra_tags: dict[str, str]) -> float:
    source = open_checkpoint(cfg)
    cfg, out_dir = source.cfg, output_dir()
    device = resolve_device(cfg.trainer.device)
    data = build_data(cfg, device)
    check_classes(source, data.splits.classes, "the dataset")
    model = checkpoint_model(source, device)
    loss_fn = build_loss(cfg.loss, source.facts).to(device)
    eval_sets = list(data.splits.eval)
    metrics = {name: build_metrics(cfg.metrics, data.splits.num_classes, device) for name in eval_sets}
    objective_key = resolve_key(cfg.objective.metric, eval_sets, known_keys(eval_sets, cfg.metrics))

    start_checkpoint_run(source, tracker, out_dir, extra_tags)
    with tracked_outcome(tracker, out_dir):
        record_config(cfg, tracker, out_dir)
        values = evaluate_sets(model, data.eval_loaders, loss_fn, metrics, device, cfg.trainer.limit_eval_batches)
        tracker.log_metrics(values, step=source.ckpt["epoch"])
        log.info("  ".join(f"{key} {value:.4g}" for key, value in values.items()))
        report_eval_sets(model, data.eval_loaders, data.splits.classes, device, cfg.trainer.limit_eval_batches,
                         out_dir, tracker)
        objective = tracker.log_objective(objective_key, resolve_mode(objective_key, cfg.objective.mode)).value
        record_log(tracker, out_dir)
    return objective
