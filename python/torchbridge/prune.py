"""Pruning that pays: weights masked through torch.nn.utils.prune, or channels removed for real.

Two kinds, for two purposes:

  masks     `prune` zeroes weights with torch.nn.utils.prune (L1 or random, unstructured,
            Ln/random structured, global). The tensors keep their shape, so dense kernels still
            multiply the zeros: the artifact is no faster and no smaller on disk, only smaller
            once compressed (gzip), which is where unstructured sparsity shows.
  channels  `prune_channels` removes output channels and neurons physically, following
            torch-pruning's dependency graph (a conv's outputs, the BatchNorm after it, the next
            layer's inputs, the layers a residual addition ties together). The model gets
            smaller tensors and runs faster everywhere, the C++ runtime included.

`prune_and_fine_tune` interleaves either kind with fine-tuning through `torchbridge.train`, so
accuracy recovers between steps. What pruning bought (size, accuracy, C++ latency before and
after) is measured by pipeline.prune_job. Long because it holds both kinds and the fine-tuning
schedule that drives either.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from torchbridge.compare import run_module, tensor_tuple
from torchbridge.errors import TorchbridgeError

MASK_METHODS = ("l1_unstructured", "random_unstructured", "ln_structured", "random_structured", "global_unstructured")
CHANNELS = "channels"
METHODS = (*MASK_METHODS, CHANNELS)
STRUCTURED = ("ln_structured", "random_structured")
IMPORTANCES = ("l1", "l2", "random")
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
}
DEFAULT_LAYER_TYPES = ("conv", "linear")


# ---------------------------------------------------------------------------------------------
# Choosing layers and measuring sparsity


def resolve_layer_types(layer_types: Iterable[str | type] = DEFAULT_LAYER_TYPES) -> tuple[type[nn.Module], ...]:
    """'conv', 'linear' or nn.Module subclasses -> a tuple of classes."""
    if isinstance(layer_types, (str, type)):
        layer_types = (layer_types,)
    resolved: list[type[nn.Module]] = []
    for entry in layer_types:
        if isinstance(entry, str) and entry in LAYER_TYPES:
            resolved += LAYER_TYPES[entry]
        elif isinstance(entry, type) and issubclass(entry, nn.Module):
            resolved.append(entry)
        else:
            raise TorchbridgeError(
                f"layer type {entry!r} is not one of {', '.join(LAYER_TYPES)} or a torch.nn.Module subclass"
            )
    if not resolved:
        raise TorchbridgeError(f"no layer types given (expected some of {', '.join(LAYER_TYPES)})")
    return tuple(resolved)


def _check_skip(model: nn.Module, skip: Iterable[str]) -> list[str]:
    skip = [skip] if isinstance(skip, str) else list(skip or ())
    names = {name for name, _ in model.named_modules() if name}
    unknown = [name for name in skip if name not in names]
    if unknown:
        examples = ", ".join(sorted(names)[:8])
        raise TorchbridgeError(
            f"cannot skip {', '.join(map(repr, unknown))}: no such module in {type(model).__name__} "
            f"(module names look like: {examples}, ...)"
        )
    return skip


def _skipped(name: str, skip: list[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def select_layers(
    model: nn.Module, layer_types: Iterable[str | type] = DEFAULT_LAYER_TYPES, skip: Iterable[str] = ()
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of `model` whose type is in `layer_types`, minus the modules named
    in `skip` and everything inside them. Raises when a skip name does not exist or nothing is left."""
    if not isinstance(model, nn.Module):
        raise TorchbridgeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    types = resolve_layer_types(layer_types)
    skip = _check_skip(model, skip)
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, types)]
    chosen = [(name, module) for name, module in layers if not _skipped(name, skip)]
    for name, module in chosen:
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise TorchbridgeError(f"layer '{name}' ({type(module).__name__}) has no weight tensor to prune")
    if not chosen:
        kinds = ", ".join(t.__name__ for t in types)
        raise TorchbridgeError(
            f"no layers to prune in {type(model).__name__}: none of type {kinds}"
            + (f" outside {', '.join(skip)}" if skip else "")
        )
    return chosen


@dataclass
class LayerSparsity:
    name: str
    kind: str
    shape: list[int]
    zeros: int  # weights exactly zero (masked or not)
    elements: int
    zero_channels: int  # slices along dim 0 (output channels / neurons) that are entirely zero
    channels: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0


@dataclass
class SparsityReport:
    """Per-layer zeros of the pruned weights, plus the whole model's parameter counts."""

    layers: list[LayerSparsity]
    parameters: int  # every parameter element of the model (a masked weight counts once)
    nonzero_parameters: int  # of those, the ones not zero after masking

    @property
    def zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def elements(self) -> int:
        return sum(layer.elements for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Zero fraction over the reported layers' weights."""
        return self.zeros / self.elements if self.elements else 0.0

    def layer(self, name: str) -> LayerSparsity:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def table(self) -> str:
        header = f"{'layer':<28} {'type':<8} {'shape':<18} {'zeros':>10} {'of':>10} {'sparsity':>9} {'zero ch':>9}"
        lines = [header, "-" * len(header)]
        for r in self.layers:
            shape = "x".join(map(str, r.shape))
            lines.append(
                f"{r.name:<28} {r.kind:<8} {shape:<18} {r.zeros:>10} {r.elements:>10} {r.sparsity:>9.2%} "
                f"{r.zero_channels:>4}/{r.channels:<4}"
            )
        lines.append(
            f"{'total':<28} {'':<8} {'':<18} {self.zeros:>10} {self.elements:>10} {self.sparsity:>9.2%}"
            f"   model: {self.nonzero_parameters:,} of {self.parameters:,} parameters nonzero"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "zeros": self.zeros,
            "elements": self.elements,
            "parameters": self.parameters,
            "nonzero_parameters": self.nonzero_parameters,
            "layers": [{**asdict(layer), "sparsity": layer.sparsity} for layer in self.layers],
        }


def _effective_parameters(model: nn.Module) -> Iterable[torch.Tensor]:
    """Every parameter as the forward pass sees it: `weight` (orig x mask) instead of `weight_orig`."""
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            base = name.removesuffix("_orig")
            if base != name and isinstance(getattr(module, base, None), torch.Tensor):
                yield getattr(module, base)
            else:
                yield parameter


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sparsity_report(
    model: nn.Module, layer_types: Iterable[str | type] = DEFAULT_LAYER_TYPES, skip: Iterable[str] = ()
) -> SparsityReport:
    """Zeros per layer (of the chosen types) in the weights the forward pass uses."""
    rows = []
    for name, module in select_layers(model, layer_types, skip):
        with torch.no_grad():
            weight = module.weight.detach()
            zero = weight == 0
            zero_channels = int(zero.flatten(1).all(dim=1).sum()) if weight.dim() > 1 else int(zero.sum())
        rows.append(
            LayerSparsity(
                name=name,
                kind=type(module).__name__,
                shape=list(weight.shape),
                zeros=int(zero.sum()),
                elements=weight.numel(),
                zero_channels=zero_channels,
                channels=weight.shape[0] if weight.dim() else 1,
            )
        )
    with torch.no_grad():
        nonzero = sum(int(torch.count_nonzero(t)) for t in _effective_parameters(model))
    return SparsityReport(rows, parameters=parameter_count(model), nonzero_parameters=nonzero)


# ---------------------------------------------------------------------------------------------
# Masks through torch.nn.utils.prune


def is_pruned(model: nn.Module) -> bool:
    """True while a torch.nn.utils.prune re-parametrization (weight_orig, weight_mask, pre-hook) remains."""
    return torch_prune.is_pruned(model)


def make_permanent(model: nn.Module) -> int:
    """Fold every mask into its weight and drop `*_orig`, `*_mask` and the pruning pre-hooks, so the
    model is a plain one for export. Returns the number of re-parametrized tensors folded."""
    folded = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
                folded += 1
    return folded


def _check_amount(amount, what: str) -> float | int:
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TorchbridgeError(f"{what} must be a fraction in [0, 1] or a count (int), got {amount!r}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise TorchbridgeError(f"{what} as a count must be >= 0, got {amount}")
        return int(amount)
    if not 0.0 <= float(amount) <= 1.0:
        raise TorchbridgeError(f"{what} as a fraction must be in [0, 1], got {amount}")
    return float(amount)


def _target(amount: float | int, units: int, what: str) -> int:
    """How many of `units` are pruned once the call is done (torch rounds fractions the same way)."""
    if isinstance(amount, int):
        if amount > units:
            raise TorchbridgeError(f"amount {amount} exceeds the {units} {what}")
        return amount
    return round(amount * units)


def _masked_units(module: nn.Module, structured: bool, dim: int) -> int:
    mask = getattr(module, "weight_mask", None)
    if mask is None:
        return 0
    if not structured:
        return int((mask == 0).sum())
    others = [d for d in range(mask.dim()) if d != dim]
    return int((mask.sum(dim=others) == 0).sum()) if others else int((mask == 0).sum())


def prune(
    model: nn.Module,
    method: str = "l1_unstructured",
    amount: float | int = 0.5,
    layer_types: Iterable[str | type] = DEFAULT_LAYER_TYPES,
    skip: Iterable[str] = (),
    dim: int = 0,
    norm: float = 2,
    permanent: bool = True,
) -> SparsityReport:
    """Mask weights of `model` in place with torch.nn.utils.prune and report sparsity per layer.

    method: 'l1_unstructured' (smallest |w| per layer), 'random_unstructured', 'ln_structured'
      (whole slices along `dim` with the smallest Ln norm, `norm` = n; dim 0 = output channels of a
      conv, output neurons of a linear layer), 'random_structured', or 'global_unstructured'
      (smallest |w| across all chosen layers together, so layers end up unevenly sparse).
    amount: a fraction in [0, 1] or a count (int) of weights (of channels for the structured
      methods; of weights across all layers for global) that are masked once the call returns.
      Masks from an earlier call with permanent=False count towards it, so calling with 0.2, 0.4,
      0.6 reaches exactly 60 %; a layer already past the amount is left alone.
    layer_types: 'conv', 'linear' or nn.Module classes; skip: module names left dense (and all
      modules inside them), e.g. the classifier.
    permanent: fold the masks into the weights and remove `weight_orig`, `weight_mask` and the
      pre-hooks (what export needs); False keeps them for fine-tuning with the masks in place.
    """
    if method not in MASK_METHODS:
        hint = " (use prune_channels to remove channels physically)" if method == CHANNELS else ""
        raise TorchbridgeError(f"unknown pruning method '{method}'; expected one of {', '.join(MASK_METHODS)}{hint}")
    layers = select_layers(model, layer_types, skip)
    amount = _check_amount(amount, "amount")
    structured = method in STRUCTURED
    if structured:
        if isinstance(norm, bool) or not isinstance(norm, numbers.Real) or norm <= 0:
            raise TorchbridgeError(f"norm must be a positive number (1, 2, inf), got {norm!r}")
        for name, module in layers:
            if not -module.weight.dim() <= dim < module.weight.dim():
                raise TorchbridgeError(
                    f"dim {dim} is out of range for layer '{name}' with weight shape {tuple(module.weight.shape)}"
                )

    if method == "global_unstructured":
        total = sum(module.weight.numel() for _, module in layers)
        masked = sum(_masked_units(module, False, 0) for _, module in layers)
        add = _target(amount, total, "weights of the chosen layers") - masked
        if add > 0:
            torch_prune.global_unstructured(
                [(module, "weight") for _, module in layers], pruning_method=torch_prune.L1Unstructured, amount=add
            )
    else:
        # Check every layer before touching any, so a bad amount leaves the model as it was.
        plan = []
        for name, module in layers:
            units = module.weight.shape[dim] if structured else module.weight.numel()
            unit_name = f"slices along dim {dim} of layer '{name}'" if structured else f"weights of layer '{name}'"
            plan.append((module, _target(amount, units, unit_name) - _masked_units(module, structured, dim)))
        for module, add in plan:
            if add <= 0:
                continue
            if method == "l1_unstructured":
                torch_prune.l1_unstructured(module, "weight", amount=add)
            elif method == "random_unstructured":
                torch_prune.random_unstructured(module, "weight", amount=add)
            elif method == "ln_structured":
                torch_prune.ln_structured(module, "weight", amount=add, n=norm, dim=dim)
            else:
                torch_prune.random_structured(module, "weight", amount=add, dim=dim)
    if permanent:
        make_permanent(model)
    return sparsity_report(model, layer_types, skip)


# ---------------------------------------------------------------------------------------------
# Channels removed physically, through torch-pruning's dependency graph


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError as error:
        raise TorchbridgeError(
            f"removing channels needs torch-pruning (pip install torch-pruning==1.6.1): {error}"
        ) from error
    return torch_pruning


def _output_shapes(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:

    return [tuple(t.shape) for t in run_module(model, inputs)]


def _last_layer(model: nn.Module, inputs: Sequence[torch.Tensor], types: tuple[type, ...]) -> nn.Module | None:
    """The prunable layer that runs last: its outputs are the model's (class logits), so its output
    channels, and every layer torch-pruning couples to them, must keep their number."""
    order: list[nn.Module] = []
    handles = [
        module.register_forward_hook(lambda m, i, o: order.append(m))
        for module in model.modules()
        if isinstance(module, types)
    ]
    try:
        _output_shapes(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order[-1] if order else None


def _out_channels(module: nn.Module) -> int:
    return int(module.weight.shape[0])


@dataclass
class ChannelChange:
    name: str
    kind: str
    before: int  # output channels (conv) or features (linear)
    after: int


@dataclass
class ChannelPruning:
    """A model with channels removed, and what changed."""

    model: nn.Module
    layers: list[ChannelChange]
    parameters_before: int
    parameters_after: int
    protected: list[str] = field(default_factory=list)  # layers whose outputs were kept whole

    def table(self) -> str:
        header = f"{'layer':<28} {'type':<8} {'channels before':>16} {'after':>7}"
        lines = [header, "-" * len(header)]
        lines += [
            f"{c.name:<28} {c.kind:<8} {c.before:>16} {c.after:>7}" + ("  (kept)" if c.name in self.protected else "")
            for c in self.layers
        ]
        lines.append(
            f"parameters {self.parameters_before:,} -> {self.parameters_after:,} "
            f"({self.parameters_after / self.parameters_before:.1%})"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "protected": self.protected,
            "layers": [asdict(c) for c in self.layers],
        }


class ChannelPruner:
    """Removes output channels of `model` itself (in place) in `steps` equal steps up to `amount`,
    through torch-pruning's dependency graph. The layer that produces the model's output is never
    narrowed, so output shapes stay as they were; `prune_channels` is the one-shot form on a copy."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs,
        amount: float = 0.5,
        importance: str = "l1",
        layer_types: Iterable[str | type] = DEFAULT_LAYER_TYPES,
        skip: Iterable[str] = (),
        steps: int = 1,
        global_ranking: bool = False,
        round_to: int | None = None,
    ):
        tp = _torch_pruning()
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or isinstance(amount, numbers.Integral):
            raise TorchbridgeError(f"channel amount must be a fraction in (0, 1), got {amount!r}")
        if not 0.0 < float(amount) < 1.0:
            raise TorchbridgeError(f"channel amount must be a fraction in (0, 1), got {amount}")
        if importance not in IMPORTANCES:
            raise TorchbridgeError(f"unknown importance '{importance}'; expected one of {', '.join(IMPORTANCES)}")
        if not isinstance(steps, int) or steps < 1:
            raise TorchbridgeError(f"steps must be a positive integer, got {steps!r}")
        self.model = model.eval()
        self.inputs = tensor_tuple(example_inputs)
        types = resolve_layer_types(layer_types)
        layers = select_layers(model, types, skip)
        names = {module: name for name, module in model.named_modules()}
        self._layers = [(name, module) for name, module in model.named_modules() if isinstance(module, types)]
        self._shapes = _output_shapes(model, self.inputs)
        chosen = {id(module) for _, module in layers}
        ignored = [module for _, module in self._layers if id(module) not in chosen]
        last = _last_layer(model, self.inputs, types)
        if last is not None and id(last) in chosen:
            ignored.append(last)
        self.protected = sorted(names[m] for m in ignored)
        scores = {
            "l1": lambda: tp.importance.MagnitudeImportance(p=1),
            "l2": lambda: tp.importance.MagnitudeImportance(p=2),
            "random": lambda: tp.importance.RandomImportance(),
        }
        try:
            self._pruner = tp.pruner.BasePruner(
                model,
                self.inputs,
                importance=scores[importance](),
                pruning_ratio=float(amount),
                iterative_steps=steps,
                ignored_layers=ignored,
                root_module_types=list(types),
                global_pruning=global_ranking,
                round_to=round_to,
            )
        except Exception as error:
            raise TorchbridgeError(
                f"torch-pruning cannot build the dependency graph of {type(model).__name__}: {error}"
            ) from error
        self.steps = steps
        self.done = 0
        self._parameters_start = parameter_count(model)
        self._channels_start = {name: _out_channels(module) for name, module in self._layers}

    def step(self) -> ChannelPruning:
        """Remove the next share of channels; returns the changes since the pruner was made."""
        if self.done >= self.steps:
            raise TorchbridgeError(f"all {self.steps} pruning steps are done")
        self._pruner.step()
        self.done += 1
        shapes = _output_shapes(self.model, self.inputs)
        if shapes != self._shapes:
            raise TorchbridgeError(
                f"channel pruning changed the output shapes {self._shapes} -> {shapes}; "
                "skip the layers that produce the outputs"
            )
        return self.result()

    def result(self) -> ChannelPruning:
        changes = [
            ChannelChange(name, type(module).__name__, self._channels_start[name], _out_channels(module))
            for name, module in self._layers
        ]
        return ChannelPruning(
            self.model, changes, self._parameters_start, parameter_count(self.model), protected=self.protected
        )


def prune_channels(
    model: nn.Module,
    example_inputs,
    amount: float = 0.5,
    importance: str = "l1",
    layer_types: Iterable[str | type] = DEFAULT_LAYER_TYPES,
    skip: Iterable[str] = (),
    global_ranking: bool = False,
    round_to: int | None = None,
) -> ChannelPruning:
    """A copy of `model` with a fraction `amount` of the output channels (conv) and neurons
    (linear) removed physically; `model` itself is left as it was.

    torch-pruning's dependency graph, built from one run on `example_inputs`, removes each channel
    everywhere it lives: the conv's output, the BatchNorm after it, the next layer's input,
    and every layer a residual addition ties to it (ranked as one group). importance: 'l1' or 'l2'
    norm of the group's weights, or 'random'. The last layer (the one producing the outputs) and
    the layers in `skip` keep their outputs. global_ranking ranks channels across layers instead
    of taking `amount` from each; round_to keeps channel counts multiples of it (e.g. 8 for SIMD).
    """
    pruner = ChannelPruner(
        copy.deepcopy(model),
        example_inputs,
        amount=amount,
        importance=importance,
        layer_types=layer_types,
        skip=skip,
        steps=1,
        global_ranking=global_ranking,
        round_to=round_to,
    )
    return pruner.step()


# ---------------------------------------------------------------------------------------------
# Pruning with fine-tuning (Lightning, through torchbridge.train)


@dataclass
class PruneStep:
    step: int
    amount: float | int  # cumulative target after this step
    parameters: int
    sparsity: float  # zero fraction of the pruned layers' weights
    accuracy_pruned: float | None  # right after pruning, before fine-tuning
    accuracy: float | None  # after fine-tuning


@dataclass
class PruneResult:
    model: nn.Module
    method: str
    amount: float | int
    accuracy_before: float | None
    accuracy_after: float | None
    parameters_before: int
    parameters_after: int
    steps: list[PruneStep] = field(default_factory=list)
    sparsity: SparsityReport | None = None
    channels: ChannelPruning | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "amount": self.amount,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "steps": [asdict(s) for s in self.steps],
            "sparsity": self.sparsity.as_dict() if self.sparsity else None,
            "channels": self.channels.as_dict() if self.channels else None,
        }

    def table(self) -> str:
        def pct(value):
            return "    -   " if value is None else f"{value:8.2%}"

        lines = [f"{'step':>4} {'amount':>8} {'parameters':>12} {'sparsity':>9} {'acc pruned':>11} {'acc tuned':>10}"]
        lines.append(f"{'0':>4} {'':>8} {self.parameters_before:>12,} {'':>9} {'':>11} {pct(self.accuracy_before):>10}")
        for s in self.steps:
            amount = f"{s.amount:.3g}" if isinstance(s.amount, float) else str(s.amount)
            lines.append(
                f"{s.step:>4} {amount:>8} {s.parameters:>12,} {s.sparsity:>9.2%} "
                f"{pct(s.accuracy_pruned):>11} {pct(s.accuracy):>10}"
            )
        return "\n".join(lines)


def _schedule(amount: float | int, steps: int, step: int) -> float | int:
    """The cumulative target after `step` of `steps` equal steps."""
    if isinstance(amount, int):
        return round(amount * step / steps)
    return amount * step / steps


def prune_and_fine_tune(
    model: nn.Module,
    datamodule=None,
    method: str = CHANNELS,
    amount: float | int = 0.5,
    steps: int = 2,
    epochs_per_step: int = 2,
    lr: float = 3e-3,
    example_inputs=None,
    importance: str = "l1",
    layer_types: Iterable[str | type] = DEFAULT_LAYER_TYPES,
    skip: Iterable[str] = (),
    dim: int = 0,
    norm: float = 2,
    root_dir: str | Path = "runs/prune",
    progress_bar: bool = False,
    evaluate_accuracy: bool = True,
    **train_kwargs,
) -> PruneResult:
    """Prune towards `amount` in `steps` equal steps, fine-tuning with `torchbridge.train` for
    `epochs_per_step` epochs after each, so accuracy recovers before the next cut.

    method: one of the mask methods of `prune` (masks stay in place while fine-tuning, so pruned
      weights stay zero, and are made permanent at the end; `model` is pruned in place) or
      'channels' (torch-pruning removes channels; a pruned copy is returned in `.model`, `model`
      is left as it was). Each step's fine-tuning restores its best epoch by validation accuracy.
    datamodule: the data (default: the digits); example_inputs: needed for 'channels' (default:
      a batch of the datamodule). Test accuracy is measured before, after each cut and after each
      fine-tuning (`evaluate_accuracy=False` skips it, for data without a test split).
    Extra keyword arguments go to `torchbridge.train` (e.g. accelerator, devices).
    """
    from torchbridge.train import evaluate, train

    if method not in METHODS:
        raise TorchbridgeError(f"unknown pruning method '{method}'; expected one of {', '.join(METHODS)}")
    if not isinstance(steps, int) or steps < 1:
        raise TorchbridgeError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(epochs_per_step, int) or epochs_per_step < 0:
        raise TorchbridgeError(f"epochs_per_step must be an integer >= 0, got {epochs_per_step!r}")
    if datamodule is None and (epochs_per_step or evaluate_accuracy):
        from torchbridge.data import DigitsDataModule

        datamodule = DigitsDataModule()

    def accuracy(current: nn.Module) -> float | None:
        return evaluate(current.eval(), datamodule) if evaluate_accuracy else None

    root_dir = Path(root_dir)
    result = PruneResult(
        model=model,
        method=method,
        amount=amount,
        accuracy_before=accuracy(model),
        accuracy_after=None,
        parameters_before=parameter_count(model),
        parameters_after=0,
    )
    pruner = None
    if method == CHANNELS:
        if example_inputs is None:
            if datamodule is None or not hasattr(datamodule, "example_batch"):
                raise TorchbridgeError("channel pruning needs example_inputs (or a datamodule with example_batch)")
            example_inputs = (datamodule.example_batch(4),)
        pruner = ChannelPruner(
            copy.deepcopy(model),
            example_inputs,
            amount=amount,
            importance=importance,
            layer_types=layer_types,
            skip=skip,
            steps=steps,
        )
        result.model = pruner.model
    else:
        # Fail on bad arguments before any training starts.
        _check_amount(amount, "amount")
        select_layers(model, layer_types, skip)

    for step in range(1, steps + 1):
        target = _schedule(amount, steps, step)
        if pruner is not None:
            result.channels = pruner.step()
        else:
            prune(result.model, method, target, layer_types, skip, dim=dim, norm=norm, permanent=False)
        pruned_accuracy = accuracy(result.model)
        if epochs_per_step:
            train(
                result.model,
                datamodule,
                max_epochs=epochs_per_step,
                lr=lr,
                root_dir=root_dir / f"step{step}",
                progress_bar=progress_bar,
                **train_kwargs,
            )
        report = sparsity_report(result.model, layer_types, skip)
        result.steps.append(
            PruneStep(
                step=step,
                amount=target,
                parameters=parameter_count(result.model),
                sparsity=report.sparsity,
                accuracy_pruned=pruned_accuracy,
                accuracy=accuracy(result.model) if epochs_per_step else pruned_accuracy,
            )
        )
    make_permanent(result.model)
    result.model.cpu().eval()
    result.sparsity = sparsity_report(result.model, layer_types, skip)
    result.parameters_after = parameter_count(result.model)
    result.accuracy_after = result.steps[-1].accuracy
    return result
