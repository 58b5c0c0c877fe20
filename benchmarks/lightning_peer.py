"""The default job (`python main.py`) as a Lightning user writes it: a LightningModule, torchmetrics, MLFlowLogger
on sqlite, ModelCheckpoint, EarlyStopping; the same model (SimpleCNN), data (the digits, the same split),
augmentation (the default job's RandomAffine, per sample as a DataLoader applies it), optimizer (AdamW,
lr 3e-3, StepLR) and 20 epochs.

    python benchmarks/lightning_peer.py OUT_DIR      # prints 'best val accuracy X' and 'fit seconds Y'

Needs `lightning` (pip install lightning, not a project dependency); without it, it says so and exits 2.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(out: Path) -> None:
    try:
        import lightning as L
    except ImportError:
        sys.exit("lightning is not installed: pip install lightning (in your virtualenv) to run the peer")
    import torch
    import torchmetrics
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger
    from torch.utils.data import DataLoader

    from nf_trainer import create_instance
    from nf_trainer.cli.compose import project_config
    from nf_trainer.model.simple_cnn import SimpleCNN
    from nf_trainer.transforms import build_transforms

    cfg = project_config([f"paths.output_root={out}"])  # the default job's data, transforms and optimizer
    L.seed_everything(cfg.seed)
    train_tf, eval_tf = build_transforms(cfg.transforms)
    data = create_instance(cfg.dataset, train_transform=train_tf, eval_transform=eval_tf)
    (val_set,) = data.eval.values()
    batch = cfg.loader.batch_size
    train_loader = DataLoader(data.train, batch, shuffle=True)  # the sets apply their own per-sample transforms
    val_loader = DataLoader(val_set, batch)
    classes = len(data.classes)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = SimpleCNN(classes, 1)
            self.train_acc = torchmetrics.classification.MulticlassAccuracy(classes)
            self.val_acc = torchmetrics.classification.MulticlassAccuracy(classes)

        def training_step(self, b, _):
            x, y = b
            logits = self.model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            self.train_acc(logits, y)
            self.log_dict({"train/loss": loss, "train/accuracy": self.train_acc}, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, b, _):
            x, y = b
            logits = self.model(x)
            self.val_acc(logits, y)
            self.log_dict({"val/loss": torch.nn.functional.cross_entropy(logits, y), "val/accuracy": self.val_acc})

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
            return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, cfg.scheduler.step_size, cfg.scheduler.gamma)]

    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=f"sqlite:///{out}/mlflow.db", log_model=True)
    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", monitor="val/loss", save_last=True)
    trainer = L.Trainer(max_epochs=cfg.trainer.max_epochs, logger=logger, accelerator="cpu", enable_progress_bar=False,
                        callbacks=[checkpoint, EarlyStopping("val/loss", patience=cfg.trainer.early_stopping.patience)],
                        enable_model_summary=False)
    module = Module()
    start = time.perf_counter()
    trainer.fit(module, train_loader, val_loader)
    fit = time.perf_counter() - start
    accuracies = [m.value for m in logger.experiment.get_metric_history(logger.run_id, "val/accuracy")]
    print(f"best val accuracy {max(accuracies):.4f}")
    print(f"fit seconds {fit:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
