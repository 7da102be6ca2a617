"""torchbridge triton: a Triton Inference Server model repository entry written from an artifact's manifest.

    torchbridge triton model.pt --repository models --name digits --max-batch-size 8 --instances 2
    torchbridge triton model.pt2 --repository models --backend aoti
    torchbridge triton model.pt --repository models --backend python   # torchbridge's runtime inside Triton

writes models/<name>/config.pbtxt and models/<name>/1/model.pt (libtorch), model.pt2 (aoti) or
model.py + the artifact (python: Triton's Python backend running torchbridge's C++ runtime, for servers
without the PyTorch backend), and models/<name>/warmup/ with the golden example for model_warmup.

Names follow the PyTorch backend's convention: INPUT__0, INPUT__1, ... and OUTPUT__0, ... in the
manifest's order (each output's path in what the model returns is kept in the config as a comment).
With max_batch_size > 0, dims leave out the batch dimension, which must then be dynamic in the
manifest; -1 marks every other dynamic dimension. What Triton cannot express is refused, naming the
input or output and why. An existing model folder is replaced only with force=True, and only after the
new one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchbridge.artifact import TensorSpec, artifact_format, load_manifest, read_golden
from torchbridge.errors import TorchbridgeError

BACKENDS = ("libtorch", "aoti", "python")

# torch dtype name -> Triton's TYPE_*; complex and quantized dtypes have none.
TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}

# What config.pbtxt says for each backend, and the file the artifact becomes in the version folder.
_PLATFORMS = {
    "libtorch": ('platform: "pytorch_libtorch"', "model.pt"),
    "aoti": ('platform: "torch_aoti"', "model.pt2"),
    "python": ('backend: "python"', None),
}


@dataclass
class TritonModel:
    """What `write_model` wrote."""

    directory: Path
    config: str
    backend: str
    max_batch_size: int
    threads: int


def input_name(index: int) -> str:
    return f"INPUT__{index}"


def output_name(index: int) -> str:
    return f"OUTPUT__{index}"


def _refuse(artifact: Path, what: str, why: str) -> TorchbridgeError:
    return TorchbridgeError(f"{artifact}: {what} cannot be expressed in Triton's config: {why}")


def _dims(artifact: Path, label: str, spec: TensorSpec, batching: bool) -> list[int]:
    if spec.dtype not in TRITON_DTYPES:
        raise _refuse(artifact, f"{label} ({spec})", f"dtype {spec.dtype} has no Triton data type")
    shape = list(spec.shape)
    if batching:
        if not shape:
            raise _refuse(artifact, f"{label} ({spec})", "a scalar has no batch dimension; use --max-batch-size 0")
        if shape[0] is not None:
            raise _refuse(
                artifact,
                f"{label} ({spec})",
                f"dimension 0 is fixed at {shape[0]}, but with --max-batch-size > 0 Triton adds a batch dimension "
                "there; export with a dynamic batch (the default) or use --max-batch-size 0",
            )
        shape = shape[1:]
    return [-1 if d is None else int(d) for d in shape]


def _flat_tensor_outputs(structure: Any) -> bool:
    """A lone tensor or a flat tuple/list of tensors: what the PyTorch backend can return."""
    if isinstance(structure, int):
        return True
    if isinstance(structure, dict):
        items = structure.get("tuple", structure.get("list"))
        return items is not None and all(isinstance(i, int) for i in items)
    return False


def default_backend(artifact: Path) -> str:
    return "aoti" if artifact_format(artifact) == "aoti" else "libtorch"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def model_config(
    artifact: str | os.PathLike,
    name: str,
    backend: str | None = None,
    max_batch_size: int = 8,
    instances: int = 1,
    threads: int | None = None,
    batch_delay_us: int = 5000,
    manifest: dict[str, Any] | None = None,
) -> tuple[str, list[tuple[str, bytes]]]:
    """(config.pbtxt text, [(warmup file name, raw bytes)]) for the artifact; refuses what Triton cannot express.
    backend None: libtorch for a TorchScript artifact, aoti for a .pt2."""
    artifact = Path(artifact)
    backend = backend or default_backend(artifact)
    if backend not in BACKENDS:
        raise TorchbridgeError(f"backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    manifest = manifest or load_manifest(artifact)
    if manifest is None:
        raise TorchbridgeError(
            f"{artifact}: exported without torchbridge (no manifest): the config is written from the manifest's "
            "input and output specs; export the model with torchbridge"
        )
    if max_batch_size < 0:
        raise TorchbridgeError(f"--max-batch-size must be 0 (no batching) or more, got {max_batch_size}")
    if instances < 1:
        raise TorchbridgeError(f"--instances must be at least 1, got {instances}")
    threads = threads or max(1, _cores() // instances)
    fmt = manifest.get("format") or artifact_format(artifact)
    if backend == "libtorch" and fmt != "torchscript":
        raise TorchbridgeError(
            f"{artifact}: the libtorch backend loads TorchScript (.pt), this is {fmt}; use --backend aoti"
        )
    if backend == "aoti" and fmt != "aoti":
        raise TorchbridgeError(f"{artifact}: the aoti backend loads AOTInductor packages (.pt2), this is {fmt}")
    inputs = [TensorSpec.from_json(s) for s in manifest["inputs"]]
    outputs = [TensorSpec.from_json(s) for s in manifest["outputs"]]
    batching = max_batch_size > 0
    if backend == "libtorch" and not _flat_tensor_outputs(manifest.get("output_structure", 0)):
        raise _refuse(
            artifact,
            f"the outputs ({', '.join(s.name for s in outputs)})",
            "the PyTorch backend returns a tensor or a flat tuple of tensors, and this model returns nested "
            "structures, dicts or None entries; use --backend python (torchbridge flattens them)",
        )
    if batching and backend == "aoti":
        for spec in inputs:
            if spec.max_shape and spec.max_shape[0] < max_batch_size:
                raise _refuse(
                    artifact,
                    f"input '{spec.name}'",
                    f"the package was compiled for batches up to {spec.max_shape[0]}, below --max-batch-size "
                    f"{max_batch_size}",
                )
    platform, _ = _PLATFORMS[backend]
    lines = [f'name: "{name}"', platform, f"max_batch_size: {max_batch_size}"]

    def tensor_block(kind: str, entries: list[tuple[str, TensorSpec, str]]) -> None:
        lines.append(f"{kind} [")
        for i, (triton_name, spec, label) in enumerate(entries):
            dims = _dims(artifact, label, spec, batching)
            lines.extend(
                [
                    f"  {{  # {label}: {spec}",
                    f'    name: "{triton_name}"',
                    f"    data_type: {TRITON_DTYPES[spec.dtype]}",
                    # A tensor of the batch dimension alone: Triton wants one more dim, reshaped away.
                    f"    dims: [ {', '.join(map(str, dims))} ]"
                    if dims
                    else "    dims: [ 1 ]\n    reshape: { shape: [ ] }",
                    "  }" + ("," if i < len(entries) - 1 else ""),
                ]
            )
        lines.append("]")

    tensor_block("input", [(input_name(i), s, f"input '{s.name}'") for i, s in enumerate(inputs)])
    tensor_block("output", [(output_name(i), s, f"output '{s.name}'") for i, s in enumerate(outputs)])
    if batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {batch_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", "    kind: KIND_CPU", "  }", "]"]
    # Thread pools per instance: instances x threads <= cores of this machine unless --threads says otherwise;
    # one inter-op thread, as torchbridge's runtime runs.
    parameters = {"INTRA_OP_THREAD_COUNT": str(threads), "INTER_OP_THREAD_COUNT": "1"}
    if backend == "libtorch":
        parameters |= {"INFERENCE_MODE": "true", "DISABLE_OPTIMIZED_EXECUTION": "false"}
    for key, value in parameters.items():
        lines += ["parameters: {", f'  key: "{key}"', f'  value: {{ string_value: "{value}" }}', "}"]

    # model_warmup: the golden example's first sample (Triton repeats it to batch_size), at batch 1 and at
    # the largest batch, so that neither the first request nor the first full batch pays for compilation.
    golden_inputs, _ = read_golden(artifact, manifest)
    files: list[tuple[str, bytes]] = []
    warm_inputs = []
    for i, (spec, tensor) in enumerate(zip(inputs, golden_inputs)):
        sample = tensor[:1] if batching else tensor
        array = np.ascontiguousarray(sample.numpy())
        file_name = f"input_{i}"
        files.append((file_name, array.tobytes()))
        dims = list(array.shape[1:] if batching else array.shape)
        warm_inputs += [
            f'    inputs {{ key: "{input_name(i)}" value: {{',
            f"      data_type: {TRITON_DTYPES[spec.dtype]}",
            f"      dims: [ {', '.join(map(str, dims or [1]))} ]",
            f'      input_data_file: "{file_name}"',
            "    } }",
        ]
    sizes = [1, max_batch_size] if max_batch_size > 1 else [1]
    lines.append("model_warmup [")
    for j, size in enumerate(sizes):
        lines += ["  {", f'    name: "golden_batch_{size}"', f"    batch_size: {size}", *warm_inputs]
        lines.append("  }" + ("," if j < len(sizes) - 1 else ""))
    lines.append("]")
    return "\n".join(lines) + "\n", files


_PYTHON_MODEL = Path(__file__).with_name("_triton_python_model.py")


def write_model(
    artifact: str | os.PathLike,
    repository: str | os.PathLike,
    name: str | None = None,
    backend: str | None = None,
    max_batch_size: int = 8,
    instances: int = 1,
    threads: int | None = None,
    force: bool = False,
) -> TritonModel:
    """Write repository/name/{config.pbtxt, 1/<model file>, warmup/} (see the module's docstring)."""
    artifact, repository = Path(artifact), Path(repository)
    if not artifact.is_file():
        raise TorchbridgeError(f"{artifact}: no such artifact file")
    name = name or artifact.stem
    if not name or "/" in name or name.startswith("."):
        raise TorchbridgeError(f"model name '{name}' must be a plain folder name (no '/', not hidden)")
    target = repository / name
    if target.exists() and not force:
        raise TorchbridgeError(
            f"{target} exists; pass --force to replace it (the old one is kept until the new one is complete)"
        )
    threads = threads or max(1, _cores() // max(1, instances))
    backend = backend or default_backend(artifact)
    config, warmup = model_config(artifact, name, backend, max_batch_size, instances, threads)
    repository.mkdir(parents=True, exist_ok=True)
    # Everything is written into a hidden sibling first and swapped in whole: a failure leaves the old model.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.new-", dir=repository))
    try:
        version = staging / "1"
        version.mkdir()
        model_file = _PLATFORMS[backend][1] or ("model.pt2" if artifact_format(artifact) == "aoti" else "model.pt")
        shutil.copyfile(artifact, version / model_file)
        if backend == "python":
            shutil.copyfile(_PYTHON_MODEL, version / "model.py")
        (staging / "warmup").mkdir()
        for file_name, data in warmup:
            (staging / "warmup" / file_name).write_bytes(data)
        (staging / "config.pbtxt").write_text(config)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=repository))
            os.rename(target, retired / name)
            try:
                os.rename(staging, target)
            except OSError:
                os.rename(retired / name, target)
                raise
            shutil.rmtree(retired)
        else:
            os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return TritonModel(target, config, backend, max_batch_size, threads)
