"""Training through PyTorch Lightning: progress bar, checkpoints and multi-device strategies
come from Lightning's Trainer; torchbridge adds a classification LightningModule and defaults."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from torchbridge.callbacks import ActivationStatistics, NanSentinel


class Classifier(L.LightningModule):
    """Wraps any nn.Module that maps inputs to class logits; trains it in place."""

    def __init__(self, model: nn.Module, lr: float = 3e-3, weight_decay: float = 1e-4):
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, prog_bar=stage != "test", on_step=on_step, on_epoch=True)
        self.log(f"{stage}_acc", accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        epochs = max(1, self.trainer.max_epochs or 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


@dataclass
class TrainResult:
    test_accuracy: float
    val_accuracy: float
    best_checkpoint: str | None
    epochs: int
    trainer: L.Trainer

    def as_dict(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.test_accuracy,
            "val_accuracy": self.val_accuracy,
            "best_checkpoint": self.best_checkpoint,
            "epochs": self.epochs,
        }


def train(
    model: nn.Module,
    datamodule: L.LightningDataModule | None = None,
    max_epochs: int = 5,
    lr: float = 3e-3,
    root_dir: str | Path = "runs/train",
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    callbacks: list | None = None,
    progress_bar: bool = True,
    seed: int = 0,
    detect_anomalies: bool = False,
    activation_stats: int = 0,
    **trainer_kwargs,
) -> TrainResult:
    """Train `model` in place on `datamodule` (default: the digits) and report test accuracy.

    The best epoch by validation accuracy is checkpointed under `root_dir` and restored into
    `model` before testing. `accelerator`, `devices` and `strategy` go to Lightning's Trainer
    unchanged (e.g. devices=2, strategy="ddp" on a multi-GPU machine). The model is returned to the
    CPU in eval mode, ready for export.
    detect_anomalies: stop with NonFiniteError at the first NaN/Inf in a forward or backward,
      naming the layer and step (torchbridge.callbacks.NanSentinel).
    activation_stats: every N training steps, log each leaf layer's output mean, std, max |x| and
      zero fraction (torchbridge.callbacks.ActivationStatistics); 0 disables.
    """
    from torchbridge.data import DigitsDataModule

    datamodule = datamodule if datamodule is not None else DigitsDataModule()
    L.seed_everything(seed, verbose=False)
    # Lightning keeps the modes modules arrive in: a model in eval mode (as loaded for export, or
    # returned by an earlier train) would otherwise train with frozen BatchNorm statistics.
    model.train()
    module = Classifier(model, lr=lr)
    checkpoint = ModelCheckpoint(monitor="val_acc", mode="max", filename="best-{epoch}-{val_acc:.4f}")
    callbacks = list(callbacks or [])
    if detect_anomalies:
        callbacks.append(NanSentinel())
    if activation_stats:
        callbacks.append(ActivationStatistics(every_n_steps=activation_stats))
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        default_root_dir=str(root_dir),
        logger=CSVLogger(str(root_dir), name="logs"),
        callbacks=[checkpoint, *callbacks],
        enable_progress_bar=progress_bar,
        log_every_n_steps=5,
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        # The digits live in memory: DataLoader workers would only add start-up time.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=datamodule)
        val_accuracy = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
        best = checkpoint.best_model_path or None
        results = trainer.test(module, datamodule=datamodule, ckpt_path="best" if best else None, verbose=progress_bar)
    model.cpu().eval()
    return TrainResult(
        test_accuracy=float(results[0]["test_acc"]),
        val_accuracy=val_accuracy,
        best_checkpoint=best,
        epochs=trainer.current_epoch,
        trainer=trainer,
    )


def evaluate(model: nn.Module, datamodule: L.LightningDataModule | None = None, split: str = "test") -> float:
    """Accuracy of `model` (any callable returning logits) on a split, without Lightning."""
    from torchbridge.data import DigitsDataModule

    datamodule = datamodule if datamodule is not None else DigitsDataModule()
    images, labels = datamodule.dataset(split).tensors
    with torch.inference_mode():
        predictions = model(images).argmax(dim=1)
    return float((predictions == labels).float().mean())


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a Lightning checkpoint (.ckpt from `train`) or a plain state dict into `model`."""
    from torchbridge.errors import TorchbridgeError

    path = Path(path)
    if not path.is_file():
        raise TorchbridgeError(
            f"{path}: no such weights file (expected a .ckpt from torchbridge train or a state dict)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise TorchbridgeError(f"{path}: cannot read weights ({error})") from error
    if isinstance(state, dict) and "state_dict" in state:  # Lightning checkpoint of Classifier
        state = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    if not isinstance(state, dict):
        raise TorchbridgeError(f"{path}: expected a state dict or a Lightning checkpoint, got {type(state).__name__}")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise TorchbridgeError(f"{path}: weights do not fit {type(model).__name__}: {error}") from error
    return model.eval()
