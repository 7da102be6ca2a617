"""AOTInductor artifacts (.pt2): torch.export with declared dynamic dims, compiled ahead of time
into native code by AOTInductor, packaged with torchbridge's manifest and golden example.

    tb.export(model, (x,), "model.pt2")                      # or format="aoti" for any file name
    tb.export(model, (x,), "model.pt2", isa="x86-64-v3")    # runs on any AVX2 x86-64 CPU
    int8 = tb.aoti.quantize_int8(model, (x,), calibration)   # PT2E + X86InductorQuantizer (torchao)
    tb.export(int8, (x,), "int8.pt2")

The package is the zip that torch._inductor.aoti_compile_and_package writes, plus the entries
extra/torchbridge/manifest.json (as in a TorchScript artifact) and torchbridge/golden/*.npy, which
the C++ runtime reads with PyTorchStreamReader before it loads any native code.

A .pt2 contains compiled native code and loading it runs that code: load only trusted artifacts.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbridge.errors import ExportError, TorchbridgeError
from torchbridge.export import (
    MANIFEST_ENTRY,
    Artifact,
    Prepared,
    _as_tuple,
    _compare_or_raise,
    _run,
    build_manifest,
    extra_entries,
    fresh_inputs,
    model_inputs,
    prepare,
    tensor_specs,
    write_in_place,
)

#: Every dynamic dim accepts sizes in this range unless export says otherwise; the manifest
#: records it and the C++ runtime refuses inputs outside it.
DEFAULT_DYNAMIC_RANGE = (1, 1024)

#: Chosen by measurement on a 2-core Xeon (benchmarks/bench_pt2.py settings, docs/aoti_settings.md):
#: freezing folds BatchNorm into the convolutions and prepacks weights for oneDNN (ResNet-18 at
#: batch 8 runs 1.3-1.5x slower without it; int8 needs it); max-autotune costs 1.4-2.4x the
#: compile time for a few percent (25% only on the digits CNN's batch-1 linears). dynamic_threads
#: makes the kernels use the thread count set at run time (Runtime(threads=...)) instead of the
#: one at compile time, for 0-13% on these models.
DEFAULT_INDUCTOR_CONFIGS: dict[str, Any] = {"freezing": True, "max_autotune": False, "cpp.dynamic_threads": True}

# x86-64 micro-architecture levels as torch.cpu.get_capabilities() names their features.
_X86_64_V2 = ["sse3", "ssse3", "sse4_1", "sse4_2", "popcnt"]
_X86_64_V3 = _X86_64_V2 + ["avx", "avx2", "bmi", "bmi2", "f16c", "fma3", "lzcnt"]

#: isa option -> (inductor configs, CPU features the package needs; None = those of this CPU).
#: "native" compiles with -march=native and the widest vector ISA here (AVX-512/AMX on a recent
#: Xeon); the x86-64 levels trade speed for packages that run on any CPU of that level. There is
#: no x86-64-v4 preset: cpp.simdlen=512 selects AMX where the building CPU has it.
ISA_OPTIONS: dict[str, tuple[dict[str, Any], list[str] | None]] = {
    "native": ({}, None),
    "x86-64-v3": ({"cpp.march": "x86-64-v3", "cpp.simdlen": 256}, _X86_64_V3),
    "x86-64-v2": ({"cpp.march": "x86-64-v2", "cpp.simdlen": 0}, _X86_64_V2),
}

#: pt2e-quantized graphs are compared with their reference (quantize/dequantize in float). The
#: int8 kernels round differently where a value lands near a tie, and each such value moves by a
#: whole quantization step that later layers carry on: measured 2e-7 of the largest output on the
#: trained digits CNN, 2e-2 on a ResNet-18 with random weights. Accuracy is the real check.
QUANTIZED_RTOL = 5e-2


def _cpu_features() -> list[str]:
    return sorted(name for name, value in torch.cpu.get_capabilities().items() if value is True)


def is_pt2e_quantized(model: nn.Module) -> bool:
    """True for a graph from convert_pt2e (it holds quantize/dequantize ops)."""
    if not isinstance(model, torch.fx.GraphModule):
        return False
    namespaces = {getattr(node.target, "namespace", None) for node in model.graph.nodes if node.op == "call_function"}
    return bool(namespaces & {"quantized_decomposed", "torchao"})


def _check_range(dynamic_range) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in dynamic_range)
    except (TypeError, ValueError):
        raise TorchbridgeError(f"dynamic_range must be (min, max), got {dynamic_range!r}") from None
    if not 1 <= low <= high or high < 2:
        raise TorchbridgeError(f"dynamic_range must satisfy 1 <= min <= max and max >= 2, got ({low}, {high})")
    return low, high


def _dynamic_shapes(dynamic_dims: Sequence[Sequence[int]], dynamic_range):
    """torch.export's dynamic_shapes: dim 0 of every input shares one Dim ("batch"), other dynamic
    dims get their own; all take `dynamic_range`."""
    low, high = dynamic_range
    batch = torch.export.Dim("batch", min=low, max=high)
    shapes = []
    for i, dims in enumerate(dynamic_dims):
        shapes.append(
            {d: batch if d == 0 else torch.export.Dim(f"input{i}_dim{d}", min=low, max=high) for d in dims} or None
        )
    return tuple(shapes)


def _export_program(
    model: nn.Module, example, dynamic_dims, dynamic_range, strict: bool = False
) -> torch.export.ExportedProgram:
    """torch.export.export with the declared dynamic dims, errors turned into ExportError."""
    low, high = dynamic_range
    for i, (tensor, dims) in enumerate(zip(example, dynamic_dims)):
        for d in dims:
            if not low <= tensor.shape[d] <= high:
                raise TorchbridgeError(
                    f"example input {i} has size {tensor.shape[d]} in dynamic dim {d}, "
                    f"outside dynamic_range ({low}, {high})"
                )
    # torch.export specializes dims of size 1 (broadcasting could depend on them): trace with 2.
    traced_example = []
    for tensor, dims in zip(example, dynamic_dims):
        for d in dims:
            if tensor.shape[d] == 1:
                tensor = torch.cat([tensor, tensor], dim=d)
        traced_example.append(tensor)
    try:
        with torch.no_grad():
            return torch.export.export(
                model,
                tuple(traced_example),
                dynamic_shapes=_dynamic_shapes(dynamic_dims, dynamic_range),
                strict=strict,
            )
    except Exception as error:
        lines = [line for line in str(error).splitlines() if line.strip()][:12]
        raise ExportError(
            "torch.export failed (a dim declared dynamic may be fixed by the model, or the model may use Python "
            "features torch.export cannot capture; see the message): " + "\n".join(lines)
        ) from error


def _copy_with_entries(compiled: Path, target: Path, entries: dict[str, bytes]) -> None:
    """Write the package `compiled` to `target` with torchbridge's entries added, through torch's
    PT2 archive writer, so every record keeps the alignment LibTorch's reader expects.

    The manifest goes under extra/ as in a TorchScript artifact (torch's own loader returns it
    among the package's extra files); the golden .npy files go to the same names at the archive's
    top level, because torch's loader decodes every extra/ entry as UTF-8 text."""
    from torch.export.pt2_archive import PT2ArchiveReader, PT2ArchiveWriter

    with PT2ArchiveReader(str(compiled)) as reader, PT2ArchiveWriter(str(target)) as writer:
        for name in reader.get_file_names():
            # The writer adds the zip-format records itself.
            if name.startswith(".data/") or name == "byteorder":
                continue
            writer.write_bytes(name, reader.read_bytes(name))
        for name, data in entries.items():
            writer.write_bytes("extra/" + name if name == MANIFEST_ENTRY else name, data)


def _register_int8_lowering() -> None:
    """Importing torchao's X86InductorQuantizer registers the Inductor passes that turn
    quantize/dequantize patterns into oneDNN int8 kernels (qconv/qlinear)."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except ImportError as error:
        raise TorchbridgeError(
            f"compiling a pt2e-quantized model needs torchao (pip install torchao==0.18.0): {error}"
        ) from error


def load_package(path: str | os.PathLike):
    """The .pt2 loaded by torch in this process (torch._inductor.aoti_load_package): the Python
    reference the C++ runtime is compared with. Runs the package's native code."""
    try:
        return torch._inductor.aoti_load_package(str(path))
    except Exception as error:
        raise TorchbridgeError(f"{path}: torch cannot load this AOTInductor package: {error}") from error


def export_aoti(
    model: nn.Module,
    example_inputs,
    path: str | os.PathLike,
    dynamic_dims: Sequence[Sequence[int]] | None = None,
    input_names: Sequence[str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    *,
    dynamic_range: tuple[int, int] = DEFAULT_DYNAMIC_RANGE,
    isa: str = "native",
    inductor_configs: dict[str, Any] | None = None,
    checks: int = 2,
) -> Artifact:
    """Export `model` to an AOTInductor package at `path` (what tb.export(..., format="aoti") calls).

    dynamic_dims: per input, the dims of any size (default: dim 0); each accepts sizes in
      `dynamic_range`, which the manifest records and the C++ runtime enforces.
    isa: "native" (fastest here), "x86-64-v3" or "x86-64-v2" (portable; see ISA_OPTIONS).
    inductor_configs: overrides DEFAULT_INDUCTOR_CONFIGS (e.g. {"max_autotune": True}).
    checks: after compiling, the package runs in Python on the golden example and on `checks`
      fresh input sets of other dynamic sizes, and must match eager within (rtol, atol); rtol
      defaults to 1e-5, or QUANTIZED_RTOL for a pt2e-quantized graph.
    The file appears at `path` only when all of that passed.
    """
    if isa not in ISA_OPTIONS:
        raise TorchbridgeError(f"isa must be one of {', '.join(ISA_OPTIONS)}, got '{isa}'")
    dynamic_range = _check_range(dynamic_range)
    quantized = is_pt2e_quantized(model) if isinstance(model, nn.Module) else False
    rtol = (QUANTIZED_RTOL if quantized else 1e-5) if rtol is None else rtol
    prepared: Prepared = prepare(model, example_inputs, dynamic_dims, rtol, atol)
    low, high = dynamic_range

    start = time.perf_counter()
    program = _export_program(prepared.model, prepared.example, prepared.dynamic_dims, dynamic_range)
    export_seconds = time.perf_counter() - start

    isa_configs, required_features = ISA_OPTIONS[isa]
    configs = {**DEFAULT_INDUCTOR_CONFIGS, **isa_configs, **(inductor_configs or {})}
    notes: list[str] = []
    if quantized:
        _register_int8_lowering()
        if not configs.get("freezing"):
            notes.append("freezing turned on: the int8 kernels are selected by Inductor's freezing passes")
        configs["freezing"] = True

    path = Path(path)
    manifest: dict[str, Any] = {}

    def compile_and_package(temporary: Path) -> None:
        compiled = temporary.with_name(".compiled.pt2")
        started = time.perf_counter()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # torch's int8 lowering copies a tensor with torch.tensor(); its own code, not the user's.
                warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
                torch._inductor.aoti_compile_and_package(
                    program, package_path=str(compiled), inductor_configs=dict(configs)
                )
        except Exception as error:
            lines = [line for line in str(error).splitlines() if line.strip()][:12]
            raise ExportError("AOTInductor compilation failed: " + "\n".join(lines)) from error
        compile_seconds = time.perf_counter() - started

        package = load_package(compiled)
        _compare_or_raise(
            "AOTInductor package (golden example)",
            _run(package, prepared.golden),
            prepared.eager_golden,
            prepared.rtol,
            prepared.atol,
            "",
        )
        golden_size = prepared.golden[0].shape[0] if prepared.dynamic_dims[0] else None
        for seed in range(1, checks + 1):
            size = None
            if golden_size is not None:
                size = low if seed % 2 else min(high, golden_size + 2 * seed + 1)
            inputs = fresh_inputs(prepared.golden, prepared.dynamic_dims, seed, size)
            _compare_or_raise(
                f"AOTInductor check #{seed} (dynamic size {size})",
                _run(package, inputs),
                _run(prepared.model, inputs),
                prepared.rtol,
                prepared.atol,
                "The compiled package differs from eager at another dynamic size.",
            )
        metadata = package.get_metadata()

        inputs_spec, outputs_spec = tensor_specs(prepared, input_names, dynamic_range)
        manifest.update(
            build_manifest(
                prepared,
                "aoti",
                "export",
                inputs_spec,
                outputs_spec,
                notes,
                optimized=bool(configs.get("freezing")),
                aoti={
                    "isa": isa,
                    "required_cpu_features": required_features if required_features is not None else _cpu_features(),
                    "cpu_isa": metadata.get("AOTI_CPU_ISA", ""),
                    "device": metadata.get("AOTI_DEVICE_KEY", "cpu"),
                    "inductor_configs": {k: v for k, v in configs.items() if isinstance(v, (bool, int, float, str))},
                    "quantization": "pt2e int8 (X86InductorQuantizer)" if quantized else None,
                    "dynamic_range": [low, high],
                    "export_seconds": round(export_seconds, 2),
                    "compile_seconds": round(compile_seconds, 2),
                },
            )
        )
        _copy_with_entries(compiled, temporary, extra_entries(manifest, prepared))

    write_in_place(path, compile_and_package)
    return Artifact(path=path, manifest=manifest)


def _float_convolutions(graph: torch.fx.GraphModule) -> list[str]:
    """Module names of the convolutions that must stay float in a dynamic-shape int8 graph.

    With a dynamic batch, Inductor (torch 2.13/2.14) assumes a contiguous output for a convolution
    whose input is both contiguous and channels-last (one channel, or 1x1 spatial), while
    oneDNN's int8 convolution writes channels-last: the int8 package then computes garbage (12%
    accuracy on the digits CNN, whose first convolution reads one channel). Kept float, these
    convolutions are lowered correctly; they are usually the cheapest ones (a one-channel stem).
    """
    convolutions = {torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.conv3d.default}
    names = []
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in convolutions:
            continue
        value = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        stack = node.meta.get("nn_module_stack")
        if value is None or not stack:
            continue
        if value.shape[1] == 1 or all(size == 1 for size in value.shape[2:]):
            names.append(list(stack.values())[-1][0])
    return names


def _pt2e_api():
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as error:
        raise TorchbridgeError(
            f"int8 on the .pt2 path uses torchao's PT2E quantization (pip install torchao==0.18.0): {error}"
        ) from error
    return prepare_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


def quantize_int8(
    model: nn.Module,
    example_inputs,
    calibration: torch.Tensor | Iterable,
    dynamic_dims: Sequence[Sequence[int]] | None = None,
    dynamic_range: tuple[int, int] = DEFAULT_DYNAMIC_RANGE,
) -> torch.fx.GraphModule:
    """Static int8 quantization for the .pt2 path: torch.export, then torchao's prepare_pt2e with
    the X86InductorQuantizer (per-channel int8 weights, per-tensor uint8 activations), calibration,
    convert_pt2e. Returns the quantized graph; tb.export(graph, example_inputs, "int8.pt2")
    compiles it into oneDNN int8 kernels. With dynamic dims, convolutions reading one channel
    (or 1x1 pixels) stay float: see _float_convolutions.

    calibration: model inputs to observe activation ranges: a tensor (one batch of a one-input
      model), or an iterable of batches, each a tensor or a tuple of tensors (e.g. images.split(64)).
    """
    prepare_pt2e, convert_pt2e, quantizer_class, default_config = _pt2e_api()
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    example, dynamic_dims = model_inputs(model, example_inputs, dynamic_dims)
    dynamic_range = _check_range(dynamic_range)
    try:
        # The quantizer's patterns (conv-bn-add-relu in a ResNet block) match the graph that strict
        # (TorchDynamo) capture produces; the non-strict graph of ResNet-18 fails in annotate().
        graph = _export_program(model.eval(), example, dynamic_dims, dynamic_range, strict=True).module()
    except ExportError:
        graph = _export_program(model.eval(), example, dynamic_dims, dynamic_range).module()
    quantizer = quantizer_class().set_global(default_config())
    if any(dynamic_dims):
        for name in _float_convolutions(graph):
            quantizer.set_module_name_qconfig(name, None)
    try:
        prepared = prepare_pt2e(graph, quantizer)
    except Exception as error:
        raise ExportError(f"torchao's X86InductorQuantizer cannot annotate this model: {error}") from error
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    batches = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(*_as_tuple(batch))
            batches += 1
    if batches == 0:
        raise TorchbridgeError("calibration is empty: pass at least one batch of representative inputs")
    converted = convert_pt2e(prepared)
    # Exported graphs refuse .eval() unless told how to switch; export and verify call it.
    allow_exported_model_train_eval(converted)
    return converted
