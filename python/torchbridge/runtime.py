"""torchbridge.Runtime: the C++ runtime (LibTorch) driven from Python through pybind11.

Tensors cross the boundary as DLPack capsules, without copies where the layout allows.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchbridge import _C
from torchbridge.artifact import TensorSpec, output_names, rebuild_outputs
from torchbridge.errors import TorchbridgeError

#: The runtime's options (device, threads, warmup_runs, warmup_batches, optimize, fuse, cuda_graphs,
#: precision, reuse_memory, max_input_bytes), bound from the C++ struct: RuntimeOptions() holds the library's defaults.
RuntimeOptions = _C.RuntimeOptions
OPTION_NAMES = tuple(name for name in dir(RuntimeOptions) if not name.startswith("_"))


def runtime_options(options: RuntimeOptions | None = None, **fields: Any) -> RuntimeOptions:
    """A copy of `options` (default: the library's defaults) with `fields` set by name; a field
    given as None keeps its value (threads=None: 0, LibTorch's own, one thread per core)."""
    result = copy.copy(options) if options is not None else RuntimeOptions()
    for name, value in fields.items():
        if name not in OPTION_NAMES:
            raise TypeError(f"unknown runtime option '{name}'; the options are: {', '.join(OPTION_NAMES)}")
        if value is None:
            continue
        if name == "warmup_batches":
            value = [int(b) for b in value]
        try:
            setattr(result, name, value)
        except TypeError as error:
            raise TypeError(f"runtime option {name}={value!r}: {error}") from None
    return result


def resolve_threads(threads: int | None = None) -> int:
    """The intra-op thread count `threads` stands for: None or 0 (the default) is the current
    setting, LibTorch's own one thread per core unless something set it."""
    return int(threads) if threads else torch.get_num_threads()


def _input_error(message: str) -> TorchbridgeError:
    error = TorchbridgeError(message)
    error.code = "input"
    return error


def _to_capsule(value, index: int):
    if type(value) is torch.Tensor and not value.requires_grad and (value.is_cpu or value.is_cuda):
        # The common case, checked no further here: DLPack refuses what it cannot carry (then the
        # checks below name it) and the runtime's validate() what the model cannot take.
        try:
            return value.__dlpack__()
        except Exception:
            pass
    if isinstance(value, np.ndarray):
        if not value.dtype.isnative:  # big-endian data: the same values in this CPU's byte order
            value = value.astype(value.dtype.newbyteorder("="))
        # torch shares numpy's memory unless a stride is negative (a reversed view): copy those.
        try:
            value = torch.from_numpy(value if all(s >= 0 for s in value.strides) else value.copy())
        except TypeError as error:
            raise _input_error(f"input {index}: numpy dtype {value.dtype} has no tensor equivalent ({error})") from None
    if not isinstance(value, torch.Tensor):
        raise _input_error(f"input {index} must be a torch.Tensor or numpy array, got {type(value).__name__}")
    # DLPack carries dense tensors only: name what else was passed instead of DLPack's message.
    if value.is_nested:
        raise _input_error(f"input {index} is a nested tensor; pass a dense (strided) tensor")
    if value.layout != torch.strided:
        raise _input_error(f"input {index} has layout {value.layout}; pass a dense (strided) tensor (e.g. .to_dense())")
    if value.is_quantized:
        raise _input_error(
            f"input {index} is a quantized tensor; pass the float tensor (.dequantize()): "
            "a quantized artifact quantizes its inputs itself"
        )
    if value.device.type not in ("cpu", "cuda"):
        raise _input_error(f"input {index} is on device '{value.device}' (expected cpu or cuda)")
    try:
        return value.detach().__dlpack__()
    except Exception as error:  # the conjugate bit, say
        raise _input_error(f"input {index} ({value.dtype}) cannot be passed to the runtime: {error}") from None


def _from_capsules(capsules) -> list[torch.Tensor]:
    return [torch.from_dlpack(c) for c in capsules]


class Runtime:
    """A loaded artifact, run by the C++ runtime.

    >>> rt = Runtime("model.pt", device="cpu", threads=2)   # or "model.pt2" (AOTInductor)
    >>> y = rt(x)                 # what the model returned at export: a tensor, tuples, dicts, ...

    The options come as a RuntimeOptions (`Runtime(path, options)`, passed whole to C++), as
    keywords of the same names (`Runtime(path, threads=2)`), or both (keywords win); what is not
    given keeps the library's default, RuntimeOptions(). `self.options` is what was used.

    `threads` sets LibTorch's intra-op thread count for the whole process (Python's torch
    included); 0 or None (the default) keeps the current setting. `optimize` (default on) freezes a float TorchScript
    model at load and, on the CPU in fp32, runs the variant export measured fastest on this model
    (the manifest's runtime.variants: oneDNN Graph fusion, compiled on the first call at each input
    shape for up to _C.FUSED_SHAPES shapes, optimize_for_inference, channels-last, freeze alone, or
    the module as loaded; without that field, oneDNN Graph first). The warm-up at load takes the
    golden batch and batch 1. Whatever runs at a shape was checked there against the module as loaded on
    the first call, falling back to the next variant, down to the module as loaded, when one raises
    or differs; `optimization` says what was applied and where it fell back, `variant_at(x)` what
    runs at x's shapes. `warmup_batches` names more batch sizes to compile for at load. `fuse=False` runs
    freeze + optimize_for_inference instead of oneDNN Graph: no compilation per shape and less
    memory at large batches, about 10 % slower. On a CUDA device (`device="cuda"`), `optimize`
    also captures a CUDA graph at each input shape on its first call and replays it afterwards
    (`cuda_graphs=False` turns that off). `precision`
    "bf16" or "fp16" runs a float TorchScript model in that dtype (inputs and outputs stay
    float32): faster on CPUs with AMX/AVX512-BF16 and on GPUs, about 1e-2 relative away from fp32.
    `max_input_bytes` (1 GiB; 0: no limit) bounds each input forward() accepts; an empty dynamic
    dimension (batch 0) is refused too.
    Every error raises TorchbridgeError with the C++ message; its `code` is 'artifact', 'input',
    'invalid_argument' or 'runtime'.
    """

    def __init__(self, path: str | os.PathLike, options: RuntimeOptions | None = None, **fields: Any):
        self.path = Path(path)
        self.options = runtime_options(options, **fields)
        self._native = _C.Runtime(os.fspath(path), self.options)
        text = self._native.manifest_json
        self.manifest: dict[str, Any] | None = json.loads(text) if text else None
        # What __call__ rebuilds the outputs with, read once: the manifest's structure and its leaf count.
        self._structure = (self.manifest or {}).get("output_structure")
        self._leaves = len(output_names(self._structure)) if self._structure is not None else None
        if self.options.warmup_runs > 0 and self.manifest:
            # The C++ side warmed up at load; one call here warms this wrapper's DLPack path too.
            self.forward(*self.golden()[0])

    @property
    def device(self) -> str:
        return self._native.device

    @property
    def format(self) -> str:
        """'torchscript' (.pt) or 'aoti' (.pt2 AOTInductor package), read from the archive's records."""
        return self._native.format

    @property
    def optimization(self) -> str:
        """What load did for speed: 'freeze+onednn_graph', or 'none (<why>)'."""
        return self._native.optimization

    def memory_pool_stats(self) -> dict[str, int]:
        """The CPU memory pool (options.reuse_memory): bytes `in_use` by live tensors, `cached` for
        the next call, the `peak` in use at once, allocations served from the cache (`hits`) or the
        system (`misses`). All zero without a pool (a CUDA device, or reuse_memory=False)."""
        return self._native.memory_pool_stats()

    @property
    def optimized(self) -> bool:
        """True when forward runs the module optimized at load (see export.load_in_python)."""
        return self._native.optimized

    @property
    def optimized_from_batch(self) -> int:
        """0: forward runs the module as loaded; N: batches of N or more run the optimized module and
        smaller ones the module as loaded (the manifest's runtime.optimize_from_batch, timed at export)."""
        return self._native.optimized_from_batch

    @property
    def precision(self) -> str:
        return self._native.precision

    @property
    def input_specs(self) -> list[str]:
        return [str(TensorSpec.from_json(s)) for s in (self.manifest or {}).get("inputs", [])]

    def forward(self, *inputs) -> list[torch.Tensor]:
        """All outputs as a list of tensors (on the runtime's device)."""
        capsules = [_to_capsule(x, i) for i, x in enumerate(inputs)]
        return _from_capsules(self._native.forward(capsules))

    def __call__(self, *inputs):
        """The outputs in the structure the model returned at export (a tensor, tuples, lists,
        dicts, named tuples; None entries as None), read from the manifest."""
        outputs = self.forward(*inputs)
        if self._leaves == len(outputs):
            structure = self._structure
            return outputs[structure] if isinstance(structure, int) else rebuild_outputs(structure, outputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def forward_submodule(self, name: str, *inputs) -> list[torch.Tensor]:
        """Run one submodule ("layer1.0.conv1") of a TorchScript artifact on the given inputs."""
        capsules = [_to_capsule(x, i) for i, x in enumerate(inputs)]
        return _from_capsules(self._native.forward_submodule(name, capsules))

    def variant_at(self, *inputs) -> str:
        """What runs at these inputs' shapes: 'onednn_graph', 'optimize_for_inference', 'channels_last', 'frozen',
        'as_loaded' (each checked against the module as loaded on the first call at that shape), or
        '' before any call has met these shapes (and for a .pt2)."""
        return self._native.variant_at([_to_capsule(x, i) for i, x in enumerate(inputs)])

    def submodule_names(self) -> list[str]:
        return list(self._native.submodule_names())

    def validate(self, *inputs) -> None:
        self._native.validate([_to_capsule(x, i) for i, x in enumerate(inputs)])

    def example_inputs(self, dynamic_size: int = 1, seed: int = 0) -> list[torch.Tensor]:
        return _from_capsules(self._native.example_inputs(dynamic_size, seed))

    def golden(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return _from_capsules(self._native.golden_inputs()), _from_capsules(self._native.golden_outputs())

    def selftest(self) -> dict[str, Any]:
        """Run the golden example stored in the artifact: {'passed': bool, 'outputs': [...]}."""
        return self._native.selftest()

    def __repr__(self) -> str:
        return f"Runtime('{self.path}', device='{self.device}', inputs={self.input_specs})"


def read_npy(path: str | os.PathLike) -> torch.Tensor:
    """Read a .npy file with the C++ reader the CLI uses."""
    return torch.from_dlpack(_C.read_npy(os.fspath(path)))


def cli_path() -> Path:
    """The torchbridge-run executable installed with this package."""
    candidates = [
        Path(sys.executable).parent / "torchbridge-run",
        Path(sysconfig.get_path("scripts")) / "torchbridge-run",
    ]
    found = shutil.which("torchbridge-run")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise TorchbridgeError("torchbridge-run not found next to this Python or on PATH; reinstall torchbridge")
