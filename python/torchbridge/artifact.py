"""The artifact format: what an exported file holds and how it is read back.

Two formats, both zip archives that LibTorch's PyTorchStreamReader reads:
  torchscript  (.pt)   the file torch.jit.save writes
  aoti         (.pt2)  an AOTInductor package (torch.export + aoti_compile_and_package, see aoti.py)
Both carry the same entries (under extra/ in TorchScript; in a .pt2 the manifest is under extra/
and the .npy files at the top level, since torch's .pt2 loader reads extra/ entries as text):
  torchbridge/manifest.json        input/output specs, versions, method, tolerance, golden names
  torchbridge/golden/input_K.npy   the example inputs (at most 2 along a dynamic batch dim)
  torchbridge/golden/output_K.npy  the eager model's outputs on them
  torchbridge/digests.json         the SHA-256 of every other record (DIGEST_RECORD)
The C++ runtime reads these to check the file, validate inputs and run its selftest
(cpp/src/manifest.cpp is its reader). This module imports nothing of the package but its errors.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchbridge.errors import TorchbridgeError

FORMAT_VERSION = 1
MANIFEST_ENTRY = "torchbridge/manifest.json"
#: The SHA-256 of every other record, which the C++ runtime checks before it loads anything: it binds
#: each record's name to its contents, which the zip's own CRC-32s do not (a renamed or swapped
#: record, an edited manifest keep valid CRCs).
DIGEST_RECORD = "extra/torchbridge/digests.json"
#: Records torch's zip writer adds itself at the end of an archive (not covered by the digests).
WRITER_RECORDS = frozenset({".data/serialization_id", ".data/version", "version", "byteorder"})
GOLDEN_BATCH = 2  # golden examples keep at most this many samples along a dynamic batch dim

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
    """dtype and shape of one input or output; None in `shape` marks a dynamic dimension.

    min_shape/max_shape, when present, bound every dimension (equal to `shape` on static ones):
    the range an AOTInductor package was compiled for, which the C++ runtime enforces.
    """

    name: str
    dtype: str
    shape: list[int | None]
    min_shape: list[int] | None = None
    max_shape: list[int] | None = None

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": self.shape}
        if self.min_shape is not None and self.max_shape is not None:
            data["min_shape"], data["max_shape"] = self.min_shape, self.max_shape
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        shape = list(data["shape"])
        return cls(data.get("name", ""), data["dtype"], shape, data.get("min_shape"), data.get("max_shape"))


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


def flatten_outputs(value) -> list[torch.Tensor]:
    """A model's output as a flat list of tensors: the tensors of nested tuples (named tuples too),
    lists and dicts (in insertion order, as the C++ runtime reads them), None leaves left out."""
    if isinstance(value, torch.Tensor):
        return [value]
    if value is None:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in flatten_outputs(item)]
    raise TorchbridgeError(
        f"model returned {type(value).__name__}; "
        "torchbridge exports models returning tensors in (nested) tuples, lists or dicts"
    )


def output_structure(value) -> Any:
    """A model's return value as a JSON tree whose leaves are indices into flatten_outputs(value):
    an int for a tensor, null for None, {"tuple"|"list": [...]}, {"dict": {key: ...}},
    {"namedtuple": name, "fields": [...], "items": [...]}."""
    count = 0

    def walk(item):
        nonlocal count
        if isinstance(item, torch.Tensor):
            count += 1
            return count - 1
        if item is None:
            return None
        if isinstance(item, dict):
            return {"dict": {str(key): walk(sub) for key, sub in item.items()}}
        if isinstance(item, tuple) and hasattr(item, "_fields"):
            items = [walk(sub) for sub in item]
            return {"namedtuple": type(item).__name__, "fields": list(item._fields), "items": items}
        if isinstance(item, (tuple, list)):
            return {"tuple" if isinstance(item, tuple) else "list": [walk(sub) for sub in item]}
        flatten_outputs(item)  # raises, naming the type
        return None

    return walk(value)


def output_names(structure: Any) -> list[str]:
    """One name per tensor leaf, in flat order: its path in the return value ("output_0" for a lone
    tensor, "output_<i>" for an element of a returned tuple, named tuple fields and dict keys by name,
    nested elements joined with ".")."""
    names: dict[int, str] = {}

    def walk(node, path: str) -> None:
        if isinstance(node, int):
            names[node] = path
        elif isinstance(node, dict):
            if "dict" in node:
                children = [(str(key), sub) for key, sub in node["dict"].items()]
            elif "namedtuple" in node:
                children = list(zip(node["fields"], node["items"]))
            else:
                children = [(str(i), sub) for i, sub in enumerate(node.get("tuple", node.get("list", [])))]
            for key, sub in children:
                top = not path
                if top and not ("dict" in node or "namedtuple" in node):
                    key = f"output_{key}"
                walk(sub, key if top else f"{path}.{key}")

    walk(structure, "")
    if isinstance(structure, int):
        names[structure] = "output_0"
    return [names[i] for i in sorted(names)]


@functools.lru_cache(maxsize=256)
def _namedtuple_class(name: str, fields: tuple[str, ...]) -> type:
    # One class per name and fields: rebuilding a named tuple per call would make a class per call.
    return collections.namedtuple(name, fields)


def rebuild_outputs(structure: Any, tensors: Sequence[torch.Tensor]) -> Any:
    """The return value of the model rebuilt from its flat tensors (inverse of output_structure)."""
    if structure is None:
        return None
    if isinstance(structure, int):
        return tensors[structure]
    if "dict" in structure:
        return {key: rebuild_outputs(sub, tensors) for key, sub in structure["dict"].items()}
    if "namedtuple" in structure:
        kind = _namedtuple_class(structure["namedtuple"], tuple(structure["fields"]))
        return kind(*(rebuild_outputs(sub, tensors) for sub in structure["items"]))
    if "list" in structure:
        return [rebuild_outputs(sub, tensors) for sub in structure["list"]]
    return tuple(rebuild_outputs(sub, tensors) for sub in structure["tuple"])


def npy_bytes(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    array = tensor.dequantize() if tensor.is_quantized else tensor
    np.save(buffer, array.contiguous().numpy(), allow_pickle=False)
    return buffer.getvalue()


def digest_record(records: dict[str, bytes]) -> bytes:
    """The contents of DIGEST_RECORD for an archive holding `records` (name -> bytes)."""
    digests = {
        name: hashlib.sha256(data).hexdigest()
        for name, data in sorted(records.items())
        if name not in WRITER_RECORDS and name != DIGEST_RECORD
    }
    return json.dumps({"algorithm": "sha256", "records": digests}, indent=1).encode()


def seal(source: Path, target: Path, replace: dict[str, bytes] | None = None) -> None:
    """Copy the TorchScript archive `source` to `target` with DIGEST_RECORD added (or written again),
    through torch's own zip writer (records keep the alignment LibTorch's reader expects);
    `replace` gives new contents for some records (record name -> bytes)."""
    reader = torch._C.PyTorchFileReader(str(source))
    skipped = {".data/serialization_id", DIGEST_RECORD}  # the writer makes the first, this function the second
    records = {name: reader.get_record(name) for name in reader.get_all_records() if name not in skipped}
    records.update(replace or {})
    writer = torch._C.PyTorchFileWriter(str(target))
    for name, data in records.items():
        writer.write_record(name, data, len(data))
    digests = digest_record(records)
    writer.write_record(DIGEST_RECORD, digests, len(digests))
    writer.write_end_of_file()
    del writer


def write_in_place(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(temporary) and move the result to `path` only once it returns.

    The temporary file has the final name (archives use the file's stem as their top folder)
    inside a private folder beside `path`, so a failed export never damages an existing file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        temporary = staging / path.name
        write(temporary)
        os.replace(temporary, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _open_archive(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise TorchbridgeError(f"{path}: no such artifact")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise TorchbridgeError(
            f"{path}: not a torchbridge artifact (expected a zip archive: TorchScript .pt or AOTInductor .pt2): {error}"
        ) from error


def _entry(archive: zipfile.ZipFile, name: str) -> str | None:
    """The archive member for a torchbridge entry: '<top folder>/extra/<name>', or in a .pt2
    '<top folder>/<name>' for the golden files."""
    names = archive.namelist()
    for entry in names:
        if entry.endswith("/extra/" + name):
            return entry
    root = names[0].split("/")[0] if names else ""
    return f"{root}/{name}" if f"{root}/{name}" in names else None


def artifact_format(path: str | os.PathLike) -> str:
    """'torchscript' or 'aoti', read from the archive's records (as the C++ runtime does)."""
    path = Path(path)
    with _open_archive(path) as archive:
        names = archive.namelist()
        root = names[0].split("/")[0] if names else ""
        if f"{root}/archive_format" in names and archive.read(f"{root}/archive_format") == b"pt2":
            return "aoti"
        if f"{root}/constants.pkl" in names:
            return "torchscript"
    raise TorchbridgeError(f"{path}: a zip archive that is neither TorchScript nor an AOTInductor package")


def load_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest stored in an artifact (.pt or .pt2), or None for a file exported without torchbridge."""
    path = Path(path)
    with _open_archive(path) as archive:
        entry = _entry(archive, MANIFEST_ENTRY)
        if entry is None:
            return None
        return json.loads(archive.read(entry))


def read_golden(path: str | os.PathLike, manifest: dict[str, Any] | None = None):
    """(golden inputs, golden outputs) stored in an artifact (.pt or .pt2)."""
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
        raise TorchbridgeError(f"{path}: an artifact without a torchbridge manifest (export it with torchbridge)")
    return Artifact(path=path, manifest=manifest)
