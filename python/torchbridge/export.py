"""Export a model to a TorchScript artifact with its manifest and golden example inside.

The artifact is the file torch.jit.save writes, plus extra archive entries:
  torchbridge/manifest.json        input/output specs, versions, method, tolerance, golden names
  torchbridge/golden/input_K.npy   the example inputs (at most 2 along a dynamic batch dim)
  torchbridge/golden/output_K.npy  the eager model's outputs on them
The C++ runtime reads these to validate inputs and to run its selftest.
"""

from __future__ import annotations

import copy
import datetime
import inspect
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchbridge._warnings import expected_deprecations
from torchbridge.errors import ExportError, TorchbridgeError

FORMAT_VERSION = 1
MANIFEST_ENTRY = "torchbridge/manifest.json"
GOLDEN_BATCH = 2  # golden examples keep at most this many samples along a dynamic batch dim
METHODS = ("auto", "script", "trace")

_NUMPY_DTYPES = {
    torch.float16: "float16",
    torch.float32: "float32",
    torch.float64: "float64",
    torch.bfloat16: "bfloat16",
    torch.int8: "int8",
    torch.int16: "int16",
    torch.int32: "int32",
    torch.int64: "int64",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise TorchbridgeError(f"unsupported dtype {dtype} (supported: {', '.join(_NUMPY_DTYPES.values())})") from None


@dataclass
class TensorSpec:
    """dtype and shape of one input or output; None in `shape` marks a dynamic dimension."""

    name: str
    dtype: str
    shape: list[int | None]

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(data.get("name", ""), data["dtype"], list(data["shape"]))


@dataclass
class Artifact:
    """An exported artifact on disk and its manifest."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(s) for s in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(s) for s in self.manifest["outputs"]]

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def golden(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The golden inputs and the eager outputs stored in the artifact."""
        return read_golden(self.path, self.manifest)


def _as_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise TorchbridgeError("example_inputs must be a tensor or a non-empty tuple of tensors")
    for i, tensor in enumerate(example_inputs):
        if not isinstance(tensor, torch.Tensor):
            raise TorchbridgeError(f"example input {i} must be a torch.Tensor, got {type(tensor).__name__}")
        dtype_name(tensor.dtype)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TorchbridgeError(f"example input {i} contains NaN or Inf; export needs finite example inputs")
    return tuple(t.detach().cpu() for t in example_inputs)


def flatten_outputs(value) -> list[torch.Tensor]:
    """A model's output as a flat list of tensors (tensor, or nested tuple/list of tensors)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in flatten_outputs(item)]
    raise TorchbridgeError(
        f"model returned {type(value).__name__}; "
        "torchbridge exports models returning a tensor or a tuple/list of tensors"
    )


def _run(module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach() for t in flatten_outputs(module(*inputs))]


def max_errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max |actual - expected|, that divided by max |expected|); inf for a shape or dtype mismatch."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return float("inf"), float("inf")
    if actual.is_quantized:
        actual = actual.dequantize()
    if expected.is_quantized:
        expected = expected.dequantize()
    if actual.numel() == 0:
        return 0.0, 0.0
    a, e = actual.double(), expected.double()
    same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    diff = torch.where(same, torch.zeros_like(a), (a - e).abs())
    max_abs = float(diff.nan_to_num(nan=float("inf")).max())
    scale = float(e[torch.isfinite(e)].abs().max()) if torch.isfinite(e).any() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, max_rel


def within_tolerance(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> bool:
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    if actual.is_quantized:
        actual = actual.dequantize()
    if expected.is_quantized:
        expected = expected.dequantize()
    return bool(torch.isclose(actual.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True).all())


def default_atol(expected: Sequence[torch.Tensor], rtol: float) -> float:
    """The absolute tolerance paired with `rtol`: rtol x the largest |value| among the floating
    tensors in `expected`, so that values near zero are judged on the tensor's own scale."""
    scale = max((float(t.abs().max()) for t in expected if t.is_floating_point() and t.numel()), default=1.0)
    return rtol * max(scale, 1e-6)


def fresh_inputs(
    example: Sequence[torch.Tensor], dynamic_dims: Sequence[Sequence[int]], seed: int, dynamic_size: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Random inputs unlike the example: same dtype and static dims, values drawn to cover both
    signs and larger magnitudes, dynamic dims resized to `dynamic_size`."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for tensor, dims in zip(example, dynamic_dims):
        shape = list(tensor.shape)
        if dynamic_size is not None:
            for d in dims:
                shape[d] = dynamic_size
        if tensor.is_floating_point():
            scale = float(tensor.float().abs().max()) or 1.0
            sample = torch.randn(shape, generator=generator) * scale * (1 + seed % 3)
            if seed % 2:
                sample = -sample.abs()
            out.append(sample.to(tensor.dtype))
        elif tensor.dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=generator).bool())
        else:
            low = int(tensor.min()) if tensor.numel() else 0
            high = int(tensor.max()) + 1 if tensor.numel() else 2
            out.append(torch.randint(low, max(high, low + 1), shape, generator=generator).to(tensor.dtype))
    return tuple(out)


def _input_names(model: nn.Module, count: int) -> list[str]:
    try:
        params = [
            p.name
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


def _is_quantized(model: nn.Module) -> bool:
    packages = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")  # the latter: fused int8 modules
    return any(type(m).__module__.startswith(packages) for m in model.modules())


def _compare_or_raise(
    what: str, candidate: list[torch.Tensor], reference: list[torch.Tensor], rtol: float, atol: float, hint: str
) -> None:
    if len(candidate) != len(reference):
        raise ExportError(f"{what}: {len(candidate)} output(s), eager model gives {len(reference)}. {hint}")
    for i, (c, r) in enumerate(zip(candidate, reference)):
        if not within_tolerance(c, r, rtol, atol):
            max_abs, max_rel = max_errors(c, r)
            raise ExportError(
                f"{what}: output {i} differs from the eager model (max abs {max_abs:.3g}, max rel {max_rel:.3g}; "
                f"rtol {rtol:g}, atol {atol:.3g}). {hint}"
            )


def _trace_checked(model, example, dynamic_dims, rtol, atol, checks: int):
    """Trace, then compare traced with eager on fresh inputs: tracing records one path through
    data-dependent control flow and bakes shapes in, and both show up only on other inputs."""
    traced = torch.jit.trace(model, example, check_trace=False)
    hint = "Tracing recorded one path through data-dependent control flow; export with method='script'."
    for seed in range(1, checks + 1):
        has_dynamic = any(dims for dims in dynamic_dims)
        size = (example[0].shape[dynamic_dims[0][0]] + seed) if has_dynamic and dynamic_dims[0] else None
        inputs = fresh_inputs(example, dynamic_dims, seed, size)
        reference = _run(model, inputs)
        try:
            candidate = _run(traced, inputs)
        except Exception as error:
            raise ExportError(
                f"traced module fails on fresh inputs of shape {[tuple(t.shape) for t in inputs]} "
                f"(shapes baked in by tracing?): {str(error).splitlines()[0]}. Export with method='script', "
                f"or declare dynamic_dims=() if the shape is fixed."
            ) from error
        _compare_or_raise(f"trace check #{seed}", candidate, reference, rtol, atol, hint)
    return traced


def _optimized(module, golden, eager_golden, rtol, atol, notes: list[str]):
    """The first of freeze + optimize_for_inference, then freeze alone, that survives a save/load
    round trip with parity (optimize_for_inference can produce graphs that fail to load back)."""
    candidates = [
        ("freeze+optimize_for_inference", lambda: torch.jit.optimize_for_inference(torch.jit.freeze(module))),
        ("freeze", lambda: torch.jit.freeze(module)),
    ]
    for name, make in candidates:
        try:
            buffer = io.BytesIO()
            torch.jit.save(make(), buffer)
            buffer.seek(0)
            reloaded = torch.jit.load(buffer)
            _compare_or_raise(name, _run(reloaded, golden), eager_golden, rtol, atol, "")
            notes.append(f"optimized with {name}")
            return reloaded, True
        except Exception as error:
            notes.append(f"{name} dropped: {str(error).splitlines()[0]}")
    return module, False


def export(
    model: nn.Module,
    example_inputs,
    path: str | os.PathLike,
    method: str = "auto",
    dynamic_dims: Sequence[Sequence[int]] | None = None,
    input_names: Sequence[str] | None = None,
    optimize: bool = False,
    rtol: float = 1e-5,
    atol: float | None = None,
    trace_checks: int = 4,
    quantized_engine: str | None = None,
) -> Artifact:
    """Export `model` to a TorchScript artifact at `path` and return it.

    method: "script" compiles the source (keeps control flow), "trace" records one run (checked
      on fresh inputs against eager, refused when they differ), "auto" scripts and falls back to
      a checked trace when scripting fails.
    dynamic_dims: per input, the dimensions of any size; default: dim 0 (batch) of every input.
    optimize: freeze + torch.jit.optimize_for_inference, kept only if outputs stay within tolerance.
    rtol, atol: the artifact-vs-eager tolerance stored in the manifest; atol defaults to
      rtol x the largest |output| of the golden example.
    The file is written next to `path` and moved into place only after it loads back, so a
    failed export leaves an existing file untouched.
    """
    if method not in METHODS:
        raise TorchbridgeError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
    if not isinstance(model, nn.Module):
        raise TorchbridgeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    example = _as_tuple(example_inputs)
    if dynamic_dims is None:
        dynamic_dims = [[0] if t.dim() > 0 else [] for t in example]
    dynamic_dims = [sorted(set(dims)) for dims in dynamic_dims]
    if len(dynamic_dims) != len(example):
        raise TorchbridgeError(f"dynamic_dims has {len(dynamic_dims)} entries for {len(example)} inputs")
    for i, (tensor, dims) in enumerate(zip(example, dynamic_dims)):
        if any(d < 0 or d >= tensor.dim() for d in dims):
            raise TorchbridgeError(f"dynamic_dims[{i}] = {dims} is out of range for a {tensor.dim()}-d input")

    if any(p.device.type != "cpu" for p in list(model.parameters()) + list(model.buffers())):
        model = copy.deepcopy(model).cpu()
    model.eval()
    quantized = _is_quantized(model)
    engine = quantized_engine or (torch.backends.quantized.engine if quantized else None)
    if engine is not None and engine not in torch.backends.quantized.supported_engines:
        raise TorchbridgeError(
            f"quantized_engine '{engine}' is not one of this torch's engines "
            f"({', '.join(torch.backends.quantized.supported_engines)})"
        )

    # The golden example: at most GOLDEN_BATCH samples along a dynamic batch dim.
    golden = tuple(t[:GOLDEN_BATCH] if 0 in dims else t for t, dims in zip(example, dynamic_dims))
    try:
        eager_golden = _run(model, golden)
    except Exception as error:
        raise ExportError(f"the model fails on the example inputs: {error}") from error
    for i, tensor in enumerate(eager_golden):
        dtype_name(tensor.dtype)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ExportError(f"the model's output {i} on the example contains NaN/Inf; fix the model before export")
    atol = default_atol(eager_golden, rtol) if atol is None else atol

    notes = []
    with expected_deprecations():
        if method in ("auto", "script"):
            try:
                module = torch.jit.script(model)
                used = "script"
            except Exception as error:
                if method == "script":
                    raise ExportError(f"torch.jit.script failed: {error}") from error
                notes.append(f"script failed, traced instead: {str(error).splitlines()[0]}")
                module, used = None, "trace"
        else:
            module, used = None, "trace"
        if module is None:
            module = _trace_checked(model, example, dynamic_dims, rtol, atol, trace_checks)
        _compare_or_raise(used, _run(module, golden), eager_golden, rtol, atol, "")

        optimized = False
        if optimize and not quantized:
            module, optimized = _optimized(module, golden, eager_golden, rtol, atol, notes)

        # Output specs: dims that change with the dynamic input size are dynamic.
        outputs_dynamic = [set() for _ in eager_golden]
        if any(dynamic_dims):
            resized = fresh_inputs(
                golden, dynamic_dims, seed=0, dynamic_size=golden[0].shape[0] + 1 if dynamic_dims[0] else None
            )
            for i, (a, b) in enumerate(zip(_run(model, resized), eager_golden)):
                outputs_dynamic[i] = {d for d in range(min(a.dim(), b.dim())) if a.shape[d] != b.shape[d]}

        names = list(input_names) if input_names else _input_names(model, len(example))
        inputs_spec = [
            TensorSpec(names[i], dtype_name(t.dtype), [None if d in dims else s for d, s in enumerate(t.shape)])
            for i, (t, dims) in enumerate(zip(example, dynamic_dims))
        ]
        outputs_spec = [
            TensorSpec(
                f"output_{i}",
                dtype_name(t.dtype),
                [None if d in outputs_dynamic[i] else s for d, s in enumerate(t.shape)],
            )
            for i, t in enumerate(eager_golden)
        ]
        from torchbridge import __version__

        manifest = {
            "format": "torchscript",
            "format_version": FORMAT_VERSION,
            "torchbridge_version": __version__,
            "torch_version": torch.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": type(model).__name__,
            "method": used,
            "optimized": optimized,
            "quantized_engine": engine,
            "inputs": [s.to_json() for s in inputs_spec],
            "outputs": [s.to_json() for s in outputs_spec],
            "tolerance": {"rtol": rtol, "atol": atol},
            "golden": {
                "inputs": [f"torchbridge/golden/input_{i}.npy" for i in range(len(golden))],
                "outputs": [f"torchbridge/golden/output_{i}.npy" for i in range(len(eager_golden))],
            },
            "notes": notes,
        }
        extra = {MANIFEST_ENTRY: json.dumps(manifest, indent=2)}
        for name, tensor in zip(manifest["golden"]["inputs"], golden):
            extra[name] = _npy_bytes(tensor)
        for name, tensor in zip(manifest["golden"]["outputs"], eager_golden):
            extra[name] = _npy_bytes(tensor)

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Saved under its final name (the archive's top folder is the file's stem) in a private
        # folder beside the target, then moved into place once it loads back.
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            temporary = staging / path.name
            torch.jit.save(module, str(temporary), _extra_files=extra)
            torch.jit.load(str(temporary))
            os.replace(temporary, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Artifact(path=path, manifest=manifest)


def _npy_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    array = tensor.dequantize() if tensor.is_quantized else tensor
    np.save(buffer, array.contiguous().numpy(), allow_pickle=False)
    return buffer.getvalue()


def _open_archive(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise TorchbridgeError(f"{path}: no such artifact")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise TorchbridgeError(f"{path}: not a TorchScript artifact (expected a zip archive): {error}") from error


def _entry(archive: zipfile.ZipFile, name: str) -> str | None:
    for entry in archive.namelist():
        if entry.endswith("/extra/" + name):
            return entry
    return None


def load_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest stored in an artifact, or None for a plain TorchScript file."""
    path = Path(path)
    with _open_archive(path) as archive:
        entry = _entry(archive, MANIFEST_ENTRY)
        if entry is None:
            return None
        return json.loads(archive.read(entry))


def read_golden(path: str | os.PathLike, manifest: dict[str, Any] | None = None):
    """(golden inputs, golden outputs) stored in an artifact."""
    path = Path(path)
    manifest = manifest or load_manifest(path)
    if manifest is None:
        raise TorchbridgeError(f"{path}: no torchbridge manifest, hence no golden example")
    with _open_archive(path) as archive:

        def read(name: str) -> torch.Tensor:
            entry = _entry(archive, name)
            if entry is None:
                raise TorchbridgeError(f"{path}: golden entry {name} is missing")
            return torch.from_numpy(np.load(io.BytesIO(archive.read(entry)), allow_pickle=False))

        return [read(n) for n in manifest["golden"]["inputs"]], [read(n) for n in manifest["golden"]["outputs"]]


def open_artifact(path: str | os.PathLike) -> Artifact:
    path = Path(path)
    manifest = load_manifest(path)
    if manifest is None:
        raise TorchbridgeError(
            f"{path}: a TorchScript file without a torchbridge manifest (export it with torchbridge)"
        )
    return Artifact(path=path, manifest=manifest)
