"""Int8 quantization in PyTorch's three eager workflows, ending in models that export to
TorchScript and run in the C++ runtime.

  dynamic  Linear / LSTM / GRU weights int8, activations quantized on the fly at run time
  static   fusion, observers calibrated on real batches, per-channel int8 weights, conversion
  qat      fake-quant modules fine-tuned through Lightning (torchbridge.train), then conversion

This is the one module that imports torch.ao.quantization. Its eager API is deprecated toward
torchao, but it is what produces int8 TorchScript that LibTorch loads; a move to torchao touches
this file alone.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import warnings
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchbridge._warnings import expected_deprecations
from torchbridge.errors import QuantizationError, TorchbridgeError

with expected_deprecations():
    import torch.ao.quantization as tq
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.nn.quantized import FloatFunctional

MODES = ("dynamic", "static", "qat")
ENGINES = ("x86", "fbgemm", "qnnpack")
DYNAMIC_TYPES = (nn.Linear, nn.LSTM, nn.GRU)
# uint8 activation range per engine: x86 and fbgemm use 7 bits (torch's reduce_range=True, spelled
# as a range because reduce_range itself is deprecated) so their AVX2 kernels cannot overflow.
ACTIVATION_RANGE = {"x86": (0, 127), "fbgemm": (0, 127), "qnnpack": (0, 255)}
UNSUPPORTED_HINT = (
    "Eager quantization runs operations between int8 tensors only as modules: use "
    "torch.ao.nn.quantized.FloatFunctional for `+`, `*` and `cat`, a quantizable variant "
    "(torchbridge.models.create(name, quantizable=True)), or mode='dynamic', which keeps activations float "
    "(GRU layers, for one, have no static int8 form)."
)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Module sequences eager fusion (torch.ao.quantization.fuse_modules) merges, longest first.
FUSION_PATTERNS = (
    (_CONV, _BATCH_NORM, (nn.ReLU,)),
    (_CONV, _BATCH_NORM),
    (_CONV, (nn.ReLU,)),
    ((nn.Linear,), (nn.BatchNorm1d,)),
    ((nn.Linear,), (nn.ReLU,)),
    ((nn.BatchNorm2d, nn.BatchNorm3d), (nn.ReLU,)),
)


def select_engine(engine: str) -> str:
    """Make `engine` torch's quantized engine for this process and return it.

    LibTorch keeps one engine per process; int8 kernels and packed weights follow it, which is
    why the manifest records it and the C++ runtime selects it before loading.
    """
    if engine not in ENGINES:
        raise TorchbridgeError(f"quantized engine must be one of {', '.join(ENGINES)}, got '{engine}'")
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise TorchbridgeError(
            f"quantized engine '{engine}' is not built into this torch {torch.__version__} "
            f"(available: {', '.join(e for e in supported if e != 'none') or 'none'})"
        )
    torch.backends.quantized.engine = engine
    return engine


def default_qconfig(mode: str, engine: str) -> tq.QConfig:
    """uint8 activations in the range torch's default qconfig uses for `engine`, int8 weights per
    output channel (qnnpack's own default is per tensor)."""
    low, high = ACTIVATION_RANGE[engine]
    if mode == "qat":
        activation = tq.FusedMovingAvgObsFakeQuantize.with_args(
            observer=tq.MovingAverageMinMaxObserver, quant_min=low, quant_max=high, dtype=torch.quint8
        )
        return tq.QConfig(activation=activation, weight=tq.default_fused_per_channel_wt_fake_quant)
    activation = tq.HistogramObserver.with_args(quant_min=low, quant_max=high, dtype=torch.quint8)
    return tq.QConfig(activation=activation, weight=tq.default_per_channel_weight_observer)


def _matches(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    return type(module) in kinds  # exact types: a subclass may change forward


def _groups_in_sequence(names: list[str], modules: list[nn.Module]) -> list[list[str]]:
    """Fusion groups in one chain of modules each feeding the next, longest pattern first."""
    groups, i = [], 0
    while i < len(modules):
        for pattern in FUSION_PATTERNS:
            window = modules[i : i + len(pattern)]
            if len(window) == len(pattern) and all(_matches(m, kinds) for m, kinds in zip(window, pattern)):
                groups.append(names[i : i + len(pattern)])
                i += len(pattern)
                break
        else:
            i += 1
    return groups


def _groups_from_graph(model: nn.Module) -> list[list[str]]:
    """Fusion groups read from the module graph: chains of module calls where each call's
    only input is the previous call and its output goes to the next call alone."""
    graph = torch.fx.symbolic_trace(model).graph
    calls = [node for node in graph.nodes if node.op == "call_module"]
    call_count: dict[str, int] = {}
    for node in calls:
        call_count[node.target] = call_count.get(node.target, 0) + 1

    def fusable(node) -> bool:  # a module called twice (a shared ReLU) must not be fused away
        return node.op == "call_module" and call_count[node.target] == 1

    groups, taken = [], set()
    for start in calls:
        if start.target in taken or not fusable(start):
            continue
        chain = [start]
        while len(chain) < 3:
            users = list(chain[-1].users)
            if len(users) != 1:
                break
            nxt = users[0]
            if not fusable(nxt) or nxt.args != (chain[-1],) or nxt.kwargs:
                break
            chain.append(nxt)
        names = [node.target for node in chain]
        found = _groups_in_sequence(names, [model.get_submodule(n) for n in names])
        if found and found[0][0] == start.target:
            groups.append(found[0])
            taken.update(found[0])
    return groups


def _groups_from_sequentials(model: nn.Module) -> list[list[str]]:
    """Fusion groups among consecutive children of nn.Sequential containers."""
    groups = []
    for prefix, container in model.named_modules():
        if isinstance(container, nn.Sequential):
            names = [f"{prefix}.{n}" if prefix else n for n, _ in container.named_children()]
            groups += _groups_in_sequence(names, list(container.children()))
    return groups


def fusion_groups(model: nn.Module) -> list[list[str]]:
    """Submodule names to fuse (conv-bn-relu, conv-bn, conv-relu, linear-relu, ...), discovered
    from the module graph (torch.fx); a model fx cannot trace falls back to nn.Sequential order."""
    try:
        return _groups_from_graph(model)
    except Exception:  # data-dependent control flow and other untraceable code
        return _groups_from_sequentials(model)


def _fuse(model: nn.Module, qat: bool) -> None:
    """Fuse in place; a model that brings its own fuse_model (torchvision's quantizable models)
    knows its patterns best."""
    if callable(getattr(model, "fuse_model", None)):
        if "is_qat" in inspect.signature(model.fuse_model).parameters:
            model.fuse_model(is_qat=qat)
        else:
            model.fuse_model()
        return
    groups = fusion_groups(model)
    if groups:
        fuse = tq.fuse_modules_qat if qat else tq.fuse_modules
        fuse(model, groups, inplace=True)


def _needs_stubs(model: nn.Module) -> bool:
    """Whether the model must be wrapped in QuantStub/DeQuantStub (it places none of its own)."""
    if any(isinstance(m, tq.QuantStub) for m in model.modules()):
        return False
    required = [
        p
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if len(required) != 1:
        raise QuantizationError(
            f"{type(model).__name__}.forward takes {len(required)} inputs; static and QAT quantization wrap "
            "a one-input model in QuantStub/DeQuantStub. Place QuantStub/DeQuantStub in the model yourself."
        )
    return True


def _first_input(batch) -> torch.Tensor:
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]  # (inputs, targets) from a DataLoader
    if not isinstance(batch, torch.Tensor):
        raise TorchbridgeError(
            f"calibration batches must be tensors or (inputs, targets) pairs, got {type(batch).__name__}"
        )
    return batch


def batch_source(data) -> Iterable:
    """Input batches from a LightningDataModule (its training split, in order), a DataLoader, a
    tensor (one batch) or any iterable of batches or (inputs, targets) pairs."""
    if isinstance(data, L.LightningDataModule):
        data.setup("fit")
        loader = data.train_dataloader()
        # In order, so the same model calibrates to the same int8 model every time.
        return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False)
    if isinstance(data, torch.Tensor):
        return [data]
    if not isinstance(data, Iterable):
        raise TorchbridgeError(
            "calibration data must be a LightningDataModule, DataLoader, tensor or iterable of batches, "
            f"got {type(data).__name__}"
        )
    return data


def _first_batch(model: nn.Module, data) -> torch.Tensor:
    """The first input batch, checked on the float model so a data problem is named as one."""
    batch = next(iter(batch_source(data)), None)
    if batch is None:
        raise QuantizationError("static quantization needs at least one calibration batch; the data gave none")
    batch = _first_input(batch)
    try:
        with torch.no_grad():
            model(batch)
    except Exception as error:
        raise QuantizationError(
            f"calibration batch 0 of shape {tuple(batch.shape)} fails in the float model: {str(error).splitlines()[0]}"
        ) from error
    return batch


def _calibrate(prepared: nn.Module, data, limit: int, progress_bar: bool) -> None:
    from tqdm.auto import tqdm

    source = batch_source(data)
    total = min(limit, len(source)) if hasattr(source, "__len__") else limit
    with torch.no_grad():
        batches = tqdm(itertools.islice(source, limit), desc="calibrating", total=total, disable=not progress_bar)
        for index, batch in enumerate(batches):
            batch = _first_input(batch)
            try:
                prepared(batch)
            except Exception as error:
                raise QuantizationError(
                    f"calibration batch {index} of shape {tuple(batch.shape)} fails once observers are inserted: "
                    f"{str(error).splitlines()[0]}. {UNSUPPORTED_HINT}"
                ) from error


def _check_converted(model: nn.Module, batch: torch.Tensor, mode: str) -> None:
    """Run the int8 model once: eager conversion leaves float operations that fail on int8
    tensors (a `+` of two branches) to surface only when run."""
    try:
        with torch.no_grad():
            model(batch)
    except Exception as error:
        raise QuantizationError(
            f"the {mode}-quantized {type(model).__name__} fails on int8 tensors: {str(error).splitlines()[0]}. "
            f"{UNSUPPORTED_HINT}"
        ) from error


def _never_observed(model: nn.Module) -> list[str]:
    """Modules whose activation observer saw no data, except FloatFunctional: torchvision's
    quantizable blocks create a skip-add FloatFunctional that only residual blocks call."""
    names = []
    for name, module in model.named_modules():
        observer = getattr(module, "activation_post_process", None)
        if isinstance(observer, tq.FakeQuantizeBase):
            observer = getattr(observer, "activation_post_process", observer)
        min_val = getattr(observer, "min_val", None)
        if isinstance(module, FloatFunctional) or not isinstance(min_val, torch.Tensor):
            continue
        if min_val.numel() == 0 or bool((min_val == float("inf")).all()):
            names.append(name)
    return names


def _convert(prepared: nn.Module) -> nn.Module:
    unobserved = _never_observed(prepared)
    if unobserved:
        warnings.warn(
            f"{len(unobserved)} module(s) saw no calibration data and keep the default int8 range (scale 1): "
            f"{', '.join(unobserved[:5])}{' ...' if len(unobserved) > 5 else ''}. "
            "Calibrate with batches that reach them.",
            stacklevel=3,
        )
    with warnings.catch_warnings():
        # torch repeats the above per observer, including the FloatFunctionals excused above.
        warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
        return tq.convert(prepared, inplace=True)


class _ObserveWhileTraining(L.Callback):
    """QAT observers follow training batches only: validation and test batches must not move the
    int8 ranges (the test split would otherwise leak into the converted model)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        pl_module.apply(tq.enable_observer)

    def on_validation_start(self, trainer, pl_module) -> None:
        pl_module.apply(tq.disable_observer)

    def on_test_start(self, trainer, pl_module) -> None:
        pl_module.apply(tq.disable_observer)


def _dynamic(model: nn.Module) -> nn.Module:
    if not any(type(m) in DYNAMIC_TYPES for m in model.modules()):
        raise QuantizationError(
            f"dynamic quantization found no {', '.join(t.__name__ for t in DYNAMIC_TYPES)} in "
            f"{type(model).__name__}; use mode='static' for convolutional models"
        )
    return tq.quantize_dynamic(model, set(DYNAMIC_TYPES), dtype=torch.qint8)


def _static(model: nn.Module, data, limit: int, progress_bar: bool) -> nn.Module:
    model.eval()
    wrap = _needs_stubs(model)
    first_batch = _first_batch(model, data)
    _fuse(model, qat=False)
    model = tq.QuantWrapper(model) if wrap else model
    model.qconfig = default_qconfig("static", torch.backends.quantized.engine)
    tq.prepare(model, inplace=True)
    _calibrate(model, data, limit, progress_bar)
    converted = _convert(model)
    _check_converted(converted, first_batch, "static")
    return converted


def _qat(
    model: nn.Module, data, progress_bar: bool, freeze_batch_norm: bool, train_options: dict[str, Any]
) -> nn.Module:
    from torchbridge.train import train

    if not isinstance(data, L.LightningDataModule):
        raise TorchbridgeError(
            f"QAT fine-tunes through Lightning: data must be a LightningDataModule, got {type(data).__name__}"
        )
    model.train()
    wrap = _needs_stubs(model)
    _fuse(model, qat=True)
    model = tq.QuantWrapper(model) if wrap else model
    model.qconfig = default_qconfig("qat", torch.backends.quantized.engine)
    tq.prepare_qat(model, inplace=True)
    if freeze_batch_norm:
        # Fused conv-bn keeps the trained running statistics: a short fine-tune that re-estimates
        # them from a few noisy fake-quant batches loses more than it gains (measured on the digits).
        model.apply(freeze_bn_stats)
    callbacks = [_ObserveWhileTraining(), *train_options.pop("callbacks", [])]
    with warnings.catch_warnings():
        # The frozen batch norms are the eval-mode modules Lightning points out, on purpose.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        train(model, data, progress_bar=progress_bar, callbacks=callbacks, **train_options)
    converted = _convert(model.cpu().eval())
    _check_converted(converted, _first_input(next(iter(batch_source(data)))), "qat")
    return converted


def quantize(
    model: nn.Module,
    mode: str = "static",
    data=None,
    *,
    engine: str = "x86",
    calibration_batches: int = 16,
    epochs: int = 2,
    lr: float = 1e-4,
    root_dir: str = "runs/qat",
    freeze_batch_norm: bool = True,
    progress_bar: bool = True,
    **train_options,
) -> nn.Module:
    """An int8 copy of `model` (the original is left untouched), in eval mode on the CPU.

    mode: "dynamic" quantizes Linear/LSTM/GRU weights and needs no data; "static" fuses
      conv-bn-relu / linear-relu (discovered from the module graph, or the model's own
      fuse_model), wraps the model in QuantStub/DeQuantStub unless it has its own, calibrates
      observers on up to `calibration_batches` batches of `data` and converts; "qat" fuses, inserts
      fake-quant modules, fine-tunes for `epochs` at learning rate `lr` with torchbridge.train
      (checkpoints under `root_dir`; extra keyword arguments go there too) and converts. Batch-norm
      statistics stay frozen at their trained values unless freeze_batch_norm=False; observers
      follow training batches only, never validation or test batches.
    data: for "static", a LightningDataModule (its training split), DataLoader, tensor or
      iterable of batches; for "qat", a LightningDataModule. Default: the digits.
    engine: "x86" (default), "fbgemm" or "qnnpack"; becomes torch's quantized engine for this
      process (LibTorch keeps one), and torchbridge.export records it in the manifest.
    """
    if mode not in MODES:
        raise TorchbridgeError(f"quantization mode must be one of {', '.join(MODES)}, got '{mode}'")
    if not isinstance(model, nn.Module):
        raise TorchbridgeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if calibration_batches < 1:
        raise TorchbridgeError(f"calibration_batches must be at least 1, got {calibration_batches}")
    select_engine(engine)
    if data is None and mode != "dynamic":
        from torchbridge.data import DigitsDataModule

        data = DigitsDataModule()
    model = copy.deepcopy(model).cpu()
    with expected_deprecations():
        if mode == "dynamic":
            quantized = _dynamic(model.eval())
        elif mode == "static":
            quantized = _static(model, data, calibration_batches, progress_bar)
        else:
            options = {"max_epochs": epochs, "lr": lr, "root_dir": root_dir, **train_options}
            quantized = _qat(model, data, progress_bar, freeze_batch_norm, options)
    return quantized.eval()
