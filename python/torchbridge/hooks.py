"""See inside a model with PyTorch hooks: capture layer outputs, stop at the first NaN/Inf,
and summarize every layer. The Lightning callbacks built on them are in callbacks.py, the
layer-by-layer comparison with the C++ runtime (verify.diagnose_layers) in verify.py.
Long because the anomaly sentinel (forward, backward and tensor hooks, step labels) is most of it,
and it shares its registration and recording helpers with capture and summary.

Every tool is a context manager (or a Lightning callback built on one) that removes all of its
hooks on exit, also when the body raises:

    with hooks.capture(model, types=nn.Conv2d) as captured:   # or names=["layer1.0.conv1"], or all leaves
        model(x)
    captured.outputs["layer1.0.conv1"]                         # detached copies, in execution order

    with hooks.detect_anomalies(model):                        # NonFiniteError names module, tensor, step
        loss_fn(model(x), y).backward()

    print(hooks.summary(model, x))                             # shapes, dtype, params, mean/std/min/max
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchbridge.errors import NonFiniteError, TorchbridgeError

# --------------------------------------------------------------------------------------------
# Selecting modules and registering hooks


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    leaves = [(name, module) for name, module in model.named_modules() if not any(True for _ in module.children())]
    return leaves


def select_modules(
    model: nn.Module, names: str | Sequence[str] | None = None, types: type | tuple[type, ...] | None = None
) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) pairs of `model` chosen by name and/or type, in definition order.

    names: qualified names ("layer1.0.conv1") or shell patterns ("layer1.*"); each must match.
    types: a module class or tuple of classes (isinstance). With both, a module must satisfy both.
    With neither: every leaf module (one without children).
    """
    if not isinstance(model, nn.Module):
        raise TorchbridgeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if names is None and types is None:
        return _leaves(model)
    modules = list(model.named_modules())
    if names is not None:
        patterns = [names] if isinstance(names, str) else list(names)
        chosen: dict[str, nn.Module] = {}
        for pattern in patterns:
            matched = [(n, m) for n, m in modules if n and fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                examples = ", ".join(n for n, _ in modules[1:6])
                raise TorchbridgeError(
                    f"no submodule of {type(model).__name__} matches '{pattern}' "
                    f"(qualified names such as {examples}; patterns like 'layer1.*' work too)"
                )
            chosen.update(matched)
        modules = [(n, m) for n, m in modules if n in chosen]
    if types is not None:
        classes = types if isinstance(types, tuple) else (types,)
        if not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
            raise TorchbridgeError(f"types must be nn.Module classes, got {types!r}")
        modules = [(n, m) for n, m in modules if isinstance(m, classes)]
    return modules


@contextlib.contextmanager
def hooked(modules: Sequence[tuple[str, nn.Module]], pre=None, post=None) -> Iterator[None]:
    """Registers pre(name, module, args, kwargs) and post(name, module, args, kwargs, output) on
    each module and removes them on exit, whatever happens inside."""
    handles = []
    try:
        for name, module in modules:
            if pre is not None:
                handles.append(module.register_forward_pre_hook(functools.partial(pre, name), with_kwargs=True))
            if post is not None:
                handles.append(module.register_forward_hook(functools.partial(post, name), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def tensors_of(value: Any) -> list[torch.Tensor]:
    """Every tensor in a module's input or output (tensor, tuple/list/dict nesting); others ignored."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_of(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_of(item)]
    return []


def _detached_copy(value: Any) -> Any:
    # A copy, not a view: a later in-place module (ReLU(inplace=True)) would overwrite a view.
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_detached_copy(v) for v in value)
    if isinstance(value, list):
        return [_detached_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _detached_copy(v) for k, v in value.items()}
    return value


def _shapes(value: Any) -> str:
    tensors = tensors_of(value)
    return ", ".join(str(list(t.shape)) for t in tensors) if tensors else "-"


# --------------------------------------------------------------------------------------------
# Capture


@dataclass
class LayerCall:
    """One call of one module: its inputs (when captured) and output, as detached copies."""

    name: str  # qualified name, "" for the model itself
    type_name: str
    call: int  # 0 for the module's first call inside the context, 1 for its second, ...
    args: tuple | None = None  # positional inputs, None unless inputs were captured
    kwargs: dict = field(default_factory=dict)
    output: Any = None
    finished: int | None = None  # completion order; None if the forward raised before returning

    @property
    def label(self) -> str:
        """The name, with " #2", " #3" ... for repeated calls (ResNet blocks call one ReLU twice)."""
        base = self.name or "(model)"
        return base if self.call == 0 else f"{base} #{self.call + 1}"


class Capture:
    """What `capture` recorded; `records` in the order the calls started."""

    def __init__(self) -> None:
        self.records: list[LayerCall] = []

    @property
    def outputs(self) -> dict[str, Any]:
        """label -> output, for every finished call."""
        return {r.label: r.output for r in self.records if r.finished is not None}

    @property
    def inputs(self) -> dict[str, tuple]:
        """label -> positional inputs (only with capture(..., inputs=True))."""
        return {r.label: r.args for r in self.records if r.args is not None}

    def finished_in_order(self) -> list[LayerCall]:
        """The finished calls in the order they returned (children before their containers)."""
        return sorted((r for r in self.records if r.finished is not None), key=lambda r: r.finished)

    def clear(self) -> None:
        self.records.clear()

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, label: str) -> Any:
        return self.outputs[label]


def record_calls(modules: Sequence[tuple[str, nn.Module]], capture_inputs: bool, captured: Capture):
    """pre/post hook functions that append LayerCall records to `captured`."""
    running: dict[int, list[LayerCall]] = {}  # id(module) -> its calls in progress (recursion-safe)
    calls: dict[str, int] = {}
    finished = [0]

    def pre(name, module, args, kwargs):
        record = LayerCall(name=name, type_name=type(module).__name__, call=calls.get(name, 0))
        calls[name] = record.call + 1
        if capture_inputs:
            record.args = _detached_copy(tuple(args))
            record.kwargs = _detached_copy(dict(kwargs))
        captured.records.append(record)
        running.setdefault(id(module), []).append(record)

    def post(name, module, args, kwargs, output):
        record = running[id(module)].pop()
        record.output = _detached_copy(output)
        record.finished = finished[0]
        finished[0] += 1

    return pre, post


@contextlib.contextmanager
def capture(
    model: nn.Module,
    names: str | Sequence[str] | None = None,
    types: type | tuple[type, ...] | None = None,
    inputs: bool = False,
) -> Iterator[Capture]:
    """Record the outputs (and with inputs=True the positional inputs) of chosen modules.

    Modules are chosen as in `select_modules`: by qualified name or pattern, by type, or (neither)
    every leaf. Tensors are stored as detached copies. All hooks are removed on exit.

        with capture(resnet, types=nn.Conv2d) as convs:
            resnet(x)
        convs.outputs  # {"conv1": tensor[1, 64, 32, 32], "layer1.0.conv1": ..., ...}
    """
    modules = select_modules(model, names, types)
    captured = Capture()
    pre, post = record_calls(modules, inputs, captured)
    with hooked(modules, pre, post):
        yield captured


# --------------------------------------------------------------------------------------------
# NaN / Inf sentinel


def _first_non_finite(value: Any) -> tuple[int, torch.Tensor, str] | None:
    """(index, tensor, "NaN" or "Inf") of the first floating tensor holding a non-finite value."""
    for index, tensor in enumerate(tensors_of(value)):
        if tensor.is_quantized or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            return index, tensor, "NaN" if bool(torch.isnan(tensor).any()) else "Inf"
    return None


@dataclass
class _Watched:
    """A tensor whose gradient is checked in backward: who read it and who wrote it."""

    step: int
    consumers: list[str] = field(default_factory=list)  # modules that took it as input, in call order
    producer: str | None = None  # module that returned it
    enclosing: str | None = None  # module running when the producer returned (None: the model's output)


def _innermost_first(consumers: list[str]) -> str:
    """The first consumer with no other consumer nested inside it ('layer1.0.conv1', not 'layer1')."""

    def contains(outer: str, inner: str) -> bool:
        return outer != inner and (outer == "" or inner.startswith(outer + "."))

    for name in consumers:
        if not any(contains(name, other) for other in consumers):
            return name
    return consumers[-1]


def _display(name: str) -> str:
    return f"'{name}'" if name else "the model"


class AnomalySentinel:
    """Hooks every module of a model and raises NonFiniteError at the first NaN/Inf.

    Forward: the first module whose output is non-finite (hooks fire as modules return, so the
    innermost module is seen first); a non-finite input is blamed on the module whose own code
    computed it between its submodules, or on the model's input.
    Backward: the first gradient, in backward order, that is non-finite: the gradient with
    respect to a module's input is blamed on that module (the innermost one when several read the
    same tensor), a parameter's gradient on the module owning it, a gradient arriving at the
    model's output on the loss.

    `step` labels reports; set it per batch (the Lightning callback uses the global step) or leave
    it None to count the model's forward calls from 0.
    """

    def __init__(self, model: nn.Module, backward: bool = True):
        if not isinstance(model, nn.Module):
            raise TorchbridgeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.backward = backward
        self.step: int | None = None
        self.forward_calls = 0
        self.error: NonFiniteError | None = None  # the first report, kept after it was raised
        self._types = {name: type(module).__name__ for name, module in model.named_modules()}
        self._running: list[str] = []
        self._current_step = 0
        # (id, version) -> (tensor, watch); holding the tensor keeps its id from being reused
        # within one forward. Cleared when the next forward of the model starts.
        self._watched: dict[tuple[int, int], tuple[torch.Tensor, _Watched]] = {}
        self._active = False

    def _raise(self, message: str, module: str, phase: str, tensor_description: str, tensor, kind: str):
        error = NonFiniteError(
            f"{kind} {message} at step {self._current_step}",
            module=module,
            module_type=self._types.get(module, ""),
            phase=phase,
            tensor=tensor_description,
            shape=tuple(tensor.shape),
            kind=kind,
            step=self._current_step,
        )
        self.error = error
        self._running.clear()
        raise error

    def _watch(self, tensor: torch.Tensor) -> _Watched:
        key = (id(tensor), tensor._version)  # an in-place op makes a new value: watch it apart
        if key not in self._watched:
            watch = _Watched(step=self._current_step)
            self._watched[key] = (tensor, watch)
            tensor.register_hook(functools.partial(self._on_gradient, watch))
        return self._watched[key][1]

    def _pre(self, name, module, args, kwargs):
        if not self._active:
            return
        if module is self.model or not self._running:  # a new forward pass starts
            self._running.clear()
            self._watched.clear()
            self._current_step = self.step if self.step is not None else self.forward_calls
            self.forward_calls += 1
        found = _first_non_finite((args, kwargs))
        if found is not None:
            index, tensor, kind = found
            shape = list(tensor.shape)
            if self._running:
                parent = self._running[-1]
                self._raise(
                    f"in input {index} of '{name}' (shape {shape}), computed by the forward of "
                    f"{_display(parent)} outside its submodules,",
                    parent,
                    "forward",
                    f"input {index} of '{name}'",
                    tensor,
                    kind,
                )
            self._raise(f"in the model's input {index} (shape {shape})", "", "forward", f"input {index}", tensor, kind)
        self._running.append(name)
        if self.backward and torch.is_grad_enabled():
            for tensor in tensors_of((args, kwargs)):
                if tensor.requires_grad:
                    self._watch(tensor).consumers.append(name)

    def _post(self, name, module, args, kwargs, output):
        if not self._active:
            return
        if self._running and self._running[-1] == name:
            self._running.pop()
        found = _first_non_finite(output)
        if found is not None:
            index, tensor, kind = found
            self._raise(
                f"in output {index} of {_display(name)} ({type(module).__name__}, shape {list(tensor.shape)}), forward",
                name,
                "forward",
                f"output {index}",
                tensor,
                kind,
            )
        if self.backward and torch.is_grad_enabled():
            enclosing = self._running[-1] if self._running else None
            for tensor in tensors_of(output):
                if tensor.requires_grad:
                    watch = self._watch(tensor)
                    watch.producer, watch.enclosing = name, enclosing

    def _on_gradient(self, watch: _Watched, gradient: torch.Tensor):
        if not self._active or gradient is None:
            return
        found = _first_non_finite(gradient)
        if found is None:
            return
        _, tensor, kind = found
        self._current_step = watch.step
        shape = list(tensor.shape)
        if watch.consumers:
            module = _innermost_first(watch.consumers)
            self._raise(
                f"in the gradient w.r.t. the input of {_display(module)} ({self._types.get(module, '')}, "
                f"shape {shape}), backward",
                module,
                "backward",
                "gradient w.r.t. input",
                tensor,
                kind,
            )
        if watch.enclosing is not None:
            self._raise(
                f"in the gradient w.r.t. the output of '{watch.producer}' (shape {shape}), computed by the "
                f"backward of {_display(watch.enclosing)} outside its submodules,",
                watch.enclosing,
                "backward",
                f"gradient w.r.t. the output of '{watch.producer}'",
                tensor,
                kind,
            )
        self._raise(
            f"in the gradient arriving at the model's output (shape {shape}) from the loss, backward",
            "",
            "backward",
            "gradient w.r.t. the model's output",
            tensor,
            kind,
        )

    def _on_parameter_gradient(self, module: str, parameter: str, gradient: torch.Tensor):
        if not self._active or gradient is None:
            return
        found = _first_non_finite(gradient)
        if found is not None:
            _, tensor, kind = found
            self._raise(
                f"in the gradient of {module + '.' if module else ''}{parameter} "
                f"({self._types.get(module, '')}, shape {list(tensor.shape)}), backward",
                module,
                "backward",
                f"gradient of {parameter}",
                tensor,
                kind,
            )

    @contextlib.contextmanager
    def active(self) -> Iterator[AnomalySentinel]:
        """Hooks in place inside the block; all removed (and gradient hooks disarmed) on exit."""
        modules = list(self.model.named_modules())
        handles = []
        seen: set[int] = set()
        self._active = True
        try:
            if self.backward:
                for name, module in modules:
                    for parameter_name, parameter in module.named_parameters(recurse=False):
                        if parameter.requires_grad and id(parameter) not in seen:
                            seen.add(id(parameter))
                            handles.append(
                                parameter.register_hook(
                                    functools.partial(self._on_parameter_gradient, name, parameter_name)
                                )
                            )
            with hooked(modules, self._pre, self._post):
                yield self
        finally:
            self._active = False  # tensor hooks from the last forward may outlive the block
            for handle in handles:
                handle.remove()
            self._watched.clear()
            self._running.clear()


def detect_anomalies(model: nn.Module, backward: bool = True):
    """Context manager: raise NonFiniteError at the first module whose forward (or, with
    backward=True, backward) produces NaN or Inf, naming the module, tensor, shape and step.

        with detect_anomalies(model) as sentinel:
            for step, (x, y) in enumerate(loader):
                sentinel.step = step
                loss_fn(model(x), y).backward()

    Each check synchronizes with the device (one isfinite per tensor): a debugging tool, not for
    every production run.
    """
    return AnomalySentinel(model, backward=backward).active()


# --------------------------------------------------------------------------------------------
# Per-layer summary


@dataclass
class LayerSummary:
    name: str
    type_name: str
    depth: int
    call: int
    input_shapes: str
    output_shapes: str
    dtype: str
    parameters: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None

    @property
    def label(self) -> str:
        base = self.name or "(model)"
        return base if self.call == 0 else f"{base} #{self.call + 1}"


def _statistics(value: Any) -> tuple[str, float | None, float | None, float | None, float | None]:
    """dtype, mean, std, min, max of the first tensor in `value` (None where not floating)."""
    tensors = [t for t in tensors_of(value) if not t.is_quantized]
    if not tensors:
        quantized = [t for t in tensors_of(value) if t.is_quantized]
        tensors = [t.dequantize() for t in quantized]
        if not tensors:
            return "-", None, None, None, None
    tensor = tensors[0]
    dtype = str(tensor.dtype).removeprefix("torch.")
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return dtype, None, None, None, None
    values = tensor.detach().double()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return dtype, float(values.mean()), std, float(values.min()), float(values.max())


@dataclass
class ModelSummary:
    """Rows of `summary` in call order; print() shows the table."""

    model: str
    rows: list[LayerSummary]
    total_parameters: int
    trainable_parameters: int
    parameter_bytes: int

    def table(self) -> str:
        def number(value: float | None) -> str:
            return "-" if value is None else f"{value:.4g}"

        cells = [
            [
                "  " * row.depth + row.label,
                row.type_name,
                row.input_shapes,
                row.output_shapes,
                row.dtype,
                f"{row.parameters:,}",
                number(row.mean),
                number(row.std),
                number(row.min),
                number(row.max),
            ]
            for row in self.rows
        ]
        header = ["layer", "type", "input shape", "output shape", "dtype", "params", "mean", "std", "min", "max"]
        widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]
        left = 5  # text columns are left-aligned, numbers right-aligned

        def line(values):
            return "  ".join(v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

        lines = [line(header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
        lines += [line(c) for c in cells]
        lines.append(
            f"{self.model}: {self.total_parameters:,} parameters ({self.trainable_parameters:,} trainable), "
            f"{self.parameter_bytes / 2**20:.2f} MiB"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def summary(model: nn.Module, *inputs, depth: int | None = None) -> ModelSummary:
    """Run `model(*inputs)` once without gradients and describe every module call: input and
    output shapes, output dtype, parameter count (including submodules) and the output's
    mean/std/min/max. depth limits the nesting shown (0: the model only)."""
    if not inputs:
        raise TorchbridgeError("summary needs example inputs: summary(model, x)")
    modules = list(model.named_modules())
    parameter_counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules}
    rows: list[LayerSummary] = []
    running: dict[int, list[LayerSummary]] = {}
    calls: dict[str, int] = {}

    def pre(name, module, args, kwargs):
        row = LayerSummary(
            name=name,
            type_name=type(module).__name__,
            depth=0 if not name else name.count(".") + 1,
            call=calls.get(name, 0),
            input_shapes=_shapes((args, kwargs)),
            output_shapes="-",
            dtype="-",
            parameters=parameter_counts[name],
            mean=None,
            std=None,
            min=None,
            max=None,
        )
        calls[name] = row.call + 1
        rows.append(row)
        running.setdefault(id(module), []).append(row)

    def post(name, module, args, kwargs, output):
        row = running[id(module)].pop()
        row.output_shapes = _shapes(output)
        row.dtype, row.mean, row.std, row.min, row.max = _statistics(output)

    with hooked(modules, pre, post), torch.no_grad():
        model(*inputs)
    unique = {id(p): p for p in model.parameters()}.values()
    return ModelSummary(
        model=type(model).__name__,
        rows=[r for r in rows if depth is None or r.depth <= depth],
        total_parameters=sum(p.numel() for p in unique),
        trainable_parameters=sum(p.numel() for p in unique if p.requires_grad),
        parameter_bytes=sum(p.numel() * p.element_size() for p in unique),
    )
