"""AOTInductor artifacts (.pt2): torch.export with declared dynamic dims, compiled ahead of time
into native code by AOTInductor, packaged with torchbridge's manifest and golden example.

    tb.export(model, (x,), "model.pt2")                      # or format="aoti" for any file name
    tb.export(model, (x,), "model.pt2", isa="x86-64-v3")    # runs on any AVX2 x86-64 CPU
    int8 = tb.aoti.quantize_int8(model, (x,), calibration)   # PT2E + X86InductorQuantizer (torchao)
    tb.export(int8, (x,), "int8.pt2")                        # 8-bit weights with VNNI, else 7-bit

The package is the zip that torch._inductor.aoti_compile_and_package writes, plus the entries
extra/torchbridge/manifest.json (as in a TorchScript artifact) and torchbridge/golden/*.npy, which
the C++ runtime reads with PyTorchStreamReader before it loads any native code.

A .pt2 contains compiled native code and loading it runs that code: load only trusted artifacts.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbridge.artifact import DIGEST_RECORD, MANIFEST_ENTRY, Artifact, digest_record, write_in_place
from torchbridge.compare import compare_or_raise, example_tuple, fresh_inputs, run_module
from torchbridge.errors import ExportError, TorchbridgeError
from torchbridge.prepare import Prepared, build_manifest, extra_entries, model_inputs, prepare, tensor_specs

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


# --- int8 and the CPU's dot-product instructions -------------------------------------------------
#
# oneDNN's int8 convolutions and matmuls (what Inductor compiles a pt2e graph's qconv/qlinear to)
# multiply uint8 activations by int8 weights. With VNNI (AVX512-VNNI, AVX-VNNI; every AMX CPU has
# AVX512-VNNI) they use VPDPBUSD (AMX: TDPBUSD), which sums the u8 x s8 products exactly in int32.
# Without VNNI (AVX2, AVX-512 before Cascade Lake, SSE4.1) they use VPMADDUBSW, which adds each
# pair of products into an int16 with saturation: 255 x 127 x 2 = 64770 > 32767. oneDNN documents
# this and leaves it to the user to keep one operand to 7 bits ("Nuances of int8 computations",
# u8 x s8 on AVX2/AVX-512). Measured on an AVX2 EPYC, digits CNN: 8-bit weights put the package
# 1.9 (18% of the largest logit) away from its quantize/dequantize reference on the export check;
# weights in [-63, 63] make it match within 3e-6. 7-bit activations (torchao's reduce_range) do
# not help: torchao 0.18's Inductor lowering ignores the 127 bound (o_qmax) of fused outputs, and
# the package stays 4.9 away from its reference, with 7-bit weights as well.

#: Weight ranges of quantize_int8: 8-bit where oneDNN has VNNI here, else 7-bit (symmetric, so
#: the per-channel scale maps the largest weight to 63 exactly).
INT8_WEIGHT_RANGES: dict[int, tuple[int, int]] = {8: (-128, 127), 7: (-63, 63)}

#: |weight| up to this never saturates VPMADDUBSW with uint8 activations: 2 x 255 x 64 = 32640.
_NO_SATURATION_WEIGHT = 64

#: oneDNN's ISA levels as ONEDNN_MAX_CPU_ISA names them, with the bit masks of dnnl_cpu_isa_t (a
#: level includes another when it has all its bits). Unknown names (newer levels) cap nothing.
_ONEDNN_ISA_MASKS = {
    "SSE41": 0x1,
    "AVX": 0x3,
    "AVX2": 0x7,
    "AVX2_VNNI": 0xF,
    "AVX2_VNNI_2": 0x1F,
    "AVX512_CORE": 0x27,
    "AVX512_CORE_VNNI": 0x67,
    "AVX512_CORE_BF16": 0xE7,
    "AVX10_1_512": 0x1EF,
    "AVX512_CORE_FP16": 0x1EF,
    "AVX10_1_512_AMX": 0xFEF,
    "AVX512_CORE_AMX": 0xFEF,
    "AVX10_1_512_AMX_FP16": 0x1FEF,
    "AVX512_CORE_AMX_FP16": 0x1FEF,
}
#: oneDNN's VNNI levels and the CPU feature (torch.cpu.get_capabilities()) each needs.
_ONEDNN_VNNI_LEVELS = ((0x67, "avx512_vnni"), (0xF, "avx_vnni"))


def onednn_vnni(capabilities: dict[str, Any] | None = None, max_isa: str | None = None) -> str | None:
    """The CPU feature that gives oneDNN's int8 kernels exact u8 x s8 dot products in this process
    ("avx512_vnni" or "avx_vnni"), or None where they saturate (see INT8_WEIGHT_RANGES).

    capabilities: torch.cpu.get_capabilities() (default: this CPU's); max_isa: oneDNN's ISA cap
    (default: the ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA environment variable), which can hide
    VNNI from oneDNN on a CPU that has it."""
    if capabilities is None:
        capabilities = torch.cpu.get_capabilities()
    if max_isa is None:
        max_isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    cap = _ONEDNN_ISA_MASKS.get(max_isa.strip().upper(), ~0)
    for level, feature in _ONEDNN_VNNI_LEVELS:
        if capabilities.get(feature) is True and level & cap == level:
            return feature
    return None


def default_weight_bits() -> int:
    """8 where oneDNN's int8 kernels are exact with 8-bit weights in this process (VNNI), else 7."""
    return 8 if onednn_vnni() else 7


def int8_properties(graph: torch.fx.GraphModule) -> dict[str, Any]:
    """What the oneDNN kernels' exactness depends on, read from a pt2e graph's int8 constants and
    activation quantizers: the range of the int8 weights, whether activations are signed, and so
    whether the graph needs VNNI (see INT8_WEIGHT_RANGES)."""
    low, high, signed_activations = 0, 0, False
    for node in graph.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "namespace", None) != "quantized_decomposed":
            continue
        source = node.args[0] if node.args else None
        if isinstance(source, torch.fx.Node) and source.op == "get_attr":
            value = getattr(graph, str(source.target), None)
            if isinstance(value, torch.Tensor) and value.dtype == torch.int8 and value.numel():
                low, high = min(low, int(value.min())), max(high, int(value.max()))
        elif "quantize_per_tensor" in str(node.target) and torch.int8 in node.args:
            signed_activations = True
    needs_vnni = signed_activations or max(-low, high) > _NO_SATURATION_WEIGHT
    return {
        "weight_range": [low, high],
        "weight_bits": 8 if max(-low, high) > _NO_SATURATION_WEIGHT else 7,
        "signed_activations": signed_activations,
        "needs_vnni": needs_vnni,
    }


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


def copy_with_entries(compiled: Path, target: Path, entries: dict[str, bytes]) -> None:
    """Write the package `compiled` to `target` with torchbridge's entries added, through torch's
    PT2 archive writer, so every record keeps the alignment LibTorch's reader expects.

    The manifest goes under extra/ as in a TorchScript artifact (torch's own loader returns it
    among the package's extra files); the golden .npy files go to the same names at the archive's
    top level, because torch's loader decodes every extra/ entry as UTF-8 text."""
    from torch.export.pt2_archive import PT2ArchiveReader, PT2ArchiveWriter

    records: dict[str, bytes] = {}
    with PT2ArchiveReader(str(compiled)) as reader, PT2ArchiveWriter(str(target)) as writer:
        for name in reader.get_file_names():
            # The writer adds the zip-format records itself; the digests are written below.
            if name.startswith(".data/") or name == "byteorder" or name == DIGEST_RECORD:
                continue
            records[name] = reader.read_bytes(name)
        for name, data in entries.items():
            records["extra/" + name if name == MANIFEST_ENTRY else name] = data
        for name, data in records.items():
            writer.write_bytes(name, data)
        writer.write_bytes(DIGEST_RECORD, digest_record(records))


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
    int8 = int8_properties(model) if quantized else None
    if int8 is not None and int8["needs_vnni"]:
        _refuse_saturating_int8(int8, isa)
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
        compare_or_raise(
            "AOTInductor package (golden example)",
            run_module(package, prepared.golden),
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
            compare_or_raise(
                f"AOTInductor check #{seed} (dynamic size {size})",
                run_module(package, inputs),
                run_module(prepared.model, inputs),
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
                    "quantization": (
                        f"pt2e int8 (X86InductorQuantizer), {int8['weight_bits']}-bit weights" if int8 else None
                    ),
                    "int8": int8,
                    "dynamic_range": [low, high],
                    "export_seconds": round(export_seconds, 2),
                    "compile_seconds": round(compile_seconds, 2),
                },
            )
        )
        copy_with_entries(compiled, temporary, extra_entries(manifest, prepared))

    write_in_place(path, compile_and_package)
    return Artifact(path=path, manifest=manifest)


def _refuse_saturating_int8(int8: dict[str, Any], isa: str) -> None:
    """Refuse a pt2e graph whose oneDNN kernels are exact only with VNNI, where the package could
    run without it: a portable isa, or this process (its oneDNN would give wrong answers now)."""
    if int8["signed_activations"]:
        operands = "int8 activations"
    else:
        operands = f"int8 weights in [{int8['weight_range'][0]}, {int8['weight_range'][1]}]"
    why = (
        f"this int8 graph has {operands}: oneDNN computes them exactly only with VNNI (avx512_vnni or "
        f"avx_vnni); without it, its u8 x s8 dot products saturate in int16 and the package gives wrong answers"
    )
    fix = "quantize with tb.aoti.quantize_int8(..., weight_bits=7) for a package exact on every x86 CPU"
    if isa != "native":
        raise ExportError(f"isa='{isa}' promises any CPU of that level, but {why}; {fix}")
    if onednn_vnni() is None:
        capped = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
        here = f"oneDNN here is capped at {capped}" if capped else "this CPU lacks avx512_vnni and avx_vnni"
        raise ExportError(f"{here}, and {why}; {fix}")


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
    weight_bits: int | None = None,
) -> torch.fx.GraphModule:
    """Static int8 quantization for the .pt2 path: torch.export, then torchao's prepare_pt2e with
    the X86InductorQuantizer (per-channel int8 weights, per-tensor uint8 activations), calibration,
    convert_pt2e. Returns the quantized graph; tb.export(graph, example_inputs, "int8.pt2")
    compiles it into oneDNN int8 kernels. With dynamic dims, convolutions reading one channel
    (or 1x1 pixels) stay float: see _float_convolutions.

    calibration: model inputs to observe activation ranges: a tensor (one batch of a one-input
      model), or an iterable of batches, each a tensor or a tuple of tensors (e.g. images.split(64)).
    weight_bits: 8 (weights in [-128, 127]) or 7 ([-63, 63]); default: 8 where this CPU's oneDNN
      has VNNI, else 7, the range its int8 kernels compute exactly without VNNI (INT8_WEIGHT_RANGES).
      A package with 8-bit weights then needs VNNI: export refuses it for a portable isa. Use 7 for
      a package that is exact on every x86 CPU.
    """
    prepare_pt2e, convert_pt2e, quantizer_class, default_config = _pt2e_api()
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    if weight_bits is None:
        weight_bits = default_weight_bits()
    if weight_bits not in INT8_WEIGHT_RANGES:
        raise TorchbridgeError(f"weight_bits must be one of {sorted(INT8_WEIGHT_RANGES)}, got {weight_bits!r}")
    example, dynamic_dims = model_inputs(model, example_inputs, dynamic_dims)
    dynamic_range = _check_range(dynamic_range)
    try:
        # The quantizer's patterns (conv-bn-add-relu in a ResNet block) match the graph that strict
        # (TorchDynamo) capture produces; the non-strict graph of ResNet-18 fails in annotate().
        graph = _export_program(model.eval(), example, dynamic_dims, dynamic_range, strict=True).module()
    except ExportError:
        graph = _export_program(model.eval(), example, dynamic_dims, dynamic_range).module()
    config = default_config()
    weight_min, weight_max = INT8_WEIGHT_RANGES[weight_bits]
    weight_spec = dataclasses.replace(config.weight, quant_min=weight_min, quant_max=weight_max)
    quantizer = quantizer_class().set_global(dataclasses.replace(config, weight=weight_spec))
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
            prepared(*example_tuple(batch))
            batches += 1
    if batches == 0:
        raise TorchbridgeError("calibration is empty: pass at least one batch of representative inputs")
    converted = convert_pt2e(prepared)
    # Exported graphs refuse .eval() unless told how to switch; export and verify call it.
    allow_exported_model_train_eval(converted)
    return converted
