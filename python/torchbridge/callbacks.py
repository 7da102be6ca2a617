"""Lightning callbacks built on the hooks: NanSentinel stops training at the first NaN/Inf, naming
the layer and step; ActivationStatistics logs each layer's output statistics. Kept apart from
hooks.py so that the hooks (and the runtime) import without Lightning."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from torchbridge.errors import TorchbridgeError
from torchbridge.hooks import AnomalySentinel, hooked, select_modules, tensors_of


def _wrapped_model(pl_module: nn.Module) -> nn.Module:
    """The user's model inside a LightningModule (torchbridge's Classifier keeps it as .model),
    so that reports name 'features.0', not 'model.features.0'."""
    inner = getattr(pl_module, "model", None)
    return inner if isinstance(inner, nn.Module) else pl_module


class NanSentinel(L.Callback):
    """`detect_anomalies` for the whole fit: training stops with NonFiniteError at the first
    NaN/Inf in a forward or backward, naming the module and the global step."""

    def __init__(self, backward: bool = True):
        self.backward = backward
        self.sentinel: AnomalySentinel | None = None
        self._stack = contextlib.ExitStack()

    def setup(self, trainer, pl_module, stage):
        if stage == "fit" and self.sentinel is None:
            self.sentinel = AnomalySentinel(_wrapped_model(pl_module), backward=self.backward)
            self._stack.enter_context(self.sentinel.active())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.sentinel is not None:
            self.sentinel.step = trainer.global_step

    def teardown(self, trainer, pl_module, stage):
        self._stack.close()
        self.sentinel = None

    def on_exception(self, trainer, pl_module, exception):
        self._stack.close()


@dataclass
class ActivationRecord:
    step: int
    layer: str
    mean: float
    std: float
    max_abs: float
    zero_fraction: float  # share of exact zeros: dead ReLUs show up here


class ActivationStatistics(L.Callback):
    """Every `every_n_steps` training steps, record mean, std, max |x| and the fraction of zeros
    of each chosen layer's output (default: every leaf) and send them to the trainer's loggers
    as activations/<layer>/<statistic>. `history` keeps them for inspection after training.
    Hooks are attached only for the sampled batches."""

    def __init__(
        self,
        every_n_steps: int = 50,
        names: str | Sequence[str] | None = None,
        types: type | tuple[type, ...] | None = None,
    ):
        if every_n_steps < 1:
            raise TorchbridgeError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.names, self.types = names, types
        self.history: list[ActivationRecord] = []
        self._pending: list[ActivationRecord] = []
        self._stack = contextlib.ExitStack()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step % self.every_n_steps:
            return
        step = trainer.global_step
        modules = select_modules(_wrapped_model(pl_module), self.names, self.types)

        def post(name, module, args, kwargs, output):
            tensors = [t for t in tensors_of(output) if t.is_floating_point()]
            if not tensors:
                return
            with torch.no_grad():
                values = tensors[0].detach().float()
                self._pending.append(
                    ActivationRecord(
                        step=step,
                        layer=name,
                        mean=float(values.mean()),
                        std=float(values.std()) if values.numel() > 1 else 0.0,
                        max_abs=float(values.abs().max()) if values.numel() else 0.0,
                        zero_fraction=float((values == 0).float().mean()) if values.numel() else 0.0,
                    )
                )

        self._stack.enter_context(hooked(modules, post=post))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._stack.close()
        if not self._pending:
            return
        metrics = {}
        for record in self._pending:
            for statistic in ("mean", "std", "max_abs", "zero_fraction"):
                metrics[f"activations/{record.layer}/{statistic}"] = getattr(record, statistic)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self._pending[0].step)
        self.history.extend(self._pending)
        self._pending = []

    def on_exception(self, trainer, pl_module, exception):
        self._stack.close()

    def teardown(self, trainer, pl_module, stage):
        self._stack.close()


