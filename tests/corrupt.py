"""Seeded damage for torchbridge artifacts, and a runner that classifies what the runtime does with it.

An artifact is a zip archive: a TorchScript .pt (torch.jit.save) or an AOTInductor .pt2 package,
both with torchbridge's manifest and golden .npy files inside. `damage(data, seed)` returns one
damaged copy; the seed alone decides the damage kind and every detail, so a copy named
`cnn.manifest.s1000042.pt` is rebuilt exactly with `damage(original, 1000042)`.

Damage kinds (KINDS): bytes flipped anywhere; bytes flipped inside tensor data (records under
`*/data/` in a .pt; the compiled .so and weights in a .pt2); truncation; flipped bytes in zip local
or central headers or the end records; an edited manifest (rewritten with valid CRCs); golden .npy
files removed or swapped; records renamed; two records of the same size swapped by name; two data
records of different sizes swapped by name; a garbage tail; an empty file; a foreign file.
Rewrites keep PyTorch's zip conventions: each entry keeps its compression (tensor data stored), and
stored entries start on a 64-byte boundary (torch pads the local header's extra field, id "FB").

Each copy runs in a subprocess with a timeout, through `torchbridge-run MODEL --input --output`
and through `torchbridge.Runtime(path)(x)`, and gets one outcome:
  refused       non-zero exit, no signal (the message is kept, and whether it names the file)
  crash         killed by a signal (segfault, abort, ...)
  hang          still running at the timeout
  silent-wrong  exit 0, but the output differs from the undamaged artifact's beyond 1e-5 relative,
                or its shape, dtype or structure differs, or there is none
  ok            exit 0 and the same output: the damage was harmless

Importing torchbridge takes seconds (tens under load), so the Python leg forks each run from a
"zygote" process that imported it once; a fork that crashes or hangs is run
again in a fresh interpreter (`python corrupt.py pyrun ...`), and that run's outcome is the one
recorded (the first few crashes and hangs of each damage kind: a fresh interpreter takes tens of
seconds to start under load; a silent-wrong answer is not something forking can cause).

As a script:
  python tests/corrupt.py generate ARTIFACT OUT_DIR [-n N] [--seed S]
  python tests/corrupt.py run ARTIFACT [-n N] [--seed S] [--dir OUT_DIR] [--workers W] [--timeout T]
  python tests/corrupt.py pyrun ARTIFACT INPUT.npy OUTPUT.npy     (one Python-leg run)
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import io
import json
import os
import queue
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = (
    "flip-any",
    "flip-data",
    "truncate",
    "zip-header",
    "manifest",
    "golden",
    "rename",
    "swap-same-size",
    "swap-data-sizes",
    "tail",
    "empty",
    "foreign",
)
OUTCOMES = ("refused", "crash", "hang", "silent-wrong", "ok")
BAD_OUTCOMES = ("crash", "hang", "silent-wrong")
MODES = ("cli", "python")
RELATIVE_TOLERANCE = 1e-5
ALIGNMENT = 64  # torch's PyTorchStreamWriter starts every record's data on a 64-byte boundary
MANIFEST = "extra/torchbridge/manifest.json"


# ----------------------------------------------------------------------------------------------
# zip structure


@dataclass
class Entry:
    info: zipfile.ZipInfo
    data: bytes

    @property
    def name(self) -> str:
        return self.info.filename

    @property
    def local(self) -> str:
        """The name below the archive's top folder: 'data/0', 'extra/torchbridge/manifest.json'."""
        return self.name.split("/", 1)[1] if "/" in self.name else self.name


def read_entries(data: bytes) -> list[Entry]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [Entry(info, archive.read(info)) for info in archive.infolist()]


def write_entries(entries: list[Entry]) -> bytes:
    """A zip of `entries` in order, CRCs computed afresh, each entry's compression kept, the data of
    stored entries aligned to 64 bytes with torch's "FB" padding field."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, entry.info.date_time)
            info.compress_type = entry.info.compress_type
            info.external_attr = entry.info.external_attr
            info.create_system = entry.info.create_system
            if info.compress_type == zipfile.ZIP_STORED:
                offset = buffer.tell() + 30 + len(entry.name.encode()) + 4
                padding = -offset % ALIGNMENT
                info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
            archive.writestr(info, entry.data)
    return buffer.getvalue()


def top_folder(entries: list[Entry]) -> str:
    return entries[0].name.split("/", 1)[0] if entries else "archive"


def is_data_record(entry: Entry, pt2: bool) -> bool:
    """Tensor data: `*/data/N` in a .pt; the compiled model (.so) and weights in a .pt2."""
    if pt2:
        return entry.local.endswith(".so") or "/weights/" in f"/{entry.local}" or "/constants/" in entry.local
    return bool(re.fullmatch(r"data/\d+", entry.local))


def is_pt2(entries: list[Entry]) -> bool:
    return any(e.local in ("archive_format", ".data/version") or e.local.endswith(".so") for e in entries)


def data_span(data: bytes, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Where an entry's (possibly compressed) bytes lie in the archive."""
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    return start, start + info.compress_size


def header_structures(data: bytes) -> list[tuple[str, int, int]]:
    """(what, start, end) of every local header, central directory header and end record."""
    structures = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos, position = archive.infolist(), archive.start_dir
    for info in infos:
        start, _ = data_span(data, info)
        structures.append((f"local header of {info.filename}", info.header_offset, start))
    for info in infos:
        if data[position : position + 4] != b"PK\x01\x02":
            break
        n, m, k = struct.unpack("<HHH", data[position + 28 : position + 34])
        end = position + 46 + n + m + k
        structures.append((f"central header of {info.filename}", position, end))
        position = end
    eocd = data.rfind(b"PK\x05\x06")
    zip64_end = data.rfind(b"PK\x06\x06", 0, eocd)
    if zip64_end >= 0:
        structures.append(("zip64 end record", zip64_end, zip64_end + 56))
    locator = data.rfind(b"PK\x06\x07", 0, eocd)
    if locator >= 0:
        structures.append(("zip64 end locator", locator, locator + 20))
    structures.append(("end of central directory", eocd, eocd + 22))
    return structures


# ----------------------------------------------------------------------------------------------
# damage


def _flip(data: bytearray, rng: random.Random, start: int, end: int, count: int) -> list[int]:
    positions = sorted(rng.sample(range(start, end), min(count, end - start)))
    for position in positions:
        data[position] ^= rng.randrange(1, 256)
    return positions


def flip_any(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    damaged = bytearray(data)
    positions = _flip(damaged, rng, 0, len(data), rng.randint(1, 8))
    return bytes(damaged), f"flipped bytes at {positions}"


def flip_data(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    entries = read_entries(data)
    pt2 = is_pt2(entries)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = [i for i in archive.infolist() if i.compress_size and is_data_record(Entry(i, b""), pt2)]
    info = rng.choice(infos)
    start, end = data_span(data, info)
    damaged = bytearray(data)
    positions = _flip(damaged, rng, start, end, rng.randint(1, 8))
    return bytes(damaged), f"flipped bytes {[p - start for p in positions]} of {info.filename}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    at = rng.randrange(0, len(data))
    return data[:at], f"truncated at {at} of {len(data)}"


def zip_header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    what, start, end = rng.choice(header_structures(data))
    fixed = {"local": 30, "central": 46, "zip64 end record": 56, "zip64 end locator": 20}
    fields_end = start + next((v for k, v in fixed.items() if what.startswith(k)), 22)
    damaged = bytearray(data)
    # mostly the fixed fields (signature, sizes, CRC, offsets, lengths), sometimes the names
    limit = min(end, fields_end) if rng.random() < 0.8 else end
    positions = _flip(damaged, rng, start, limit, rng.randint(1, 4))
    return bytes(damaged), f"{what}: flipped bytes {[p - start for p in positions]}"


NUMBERS = [0, -1, -5, 1, 2, 3, 7, 1e300, -1e300, 1e-300, 2**31, 2**63, 2**64, -(2**63), 0.5, "NaN", "Infinity"]
DTYPES = ["float16", "float64", "int64", "int32", "int8", "uint8", "bool", "bfloat16", "qint8", "complex64", "float"]
STRINGS = DTYPES + ["", "x" * 4096, "../../etc/passwd", "torchscript", "aoti", "onnx", "output_1", "x\u0000y", "\u00fc"]
SHAPES = [[None, 1, 8, 9], [None, 8, 8], [None, 1, 8, 8, 1], [1, 1, 8, 8], [2, 1, 8, 8], [None, 2, 8, 8], [],
          [None], [None, -1, 8, 8], [None, 1, 2**63, 8], [None, 1, 1e300, 8], [None, "8", 8, 8], [None, 1, 0, 8],
          [None, 10], [None, 5], [None, 11], [None, 10, 1], [3, 10], [None, None]]  # fmt: skip
TARGETED = [
    ("inputs", 0, "dtype"), ("inputs", 0, "shape"), ("inputs", 0, "name"), ("outputs", 0, "dtype"),
    ("outputs", 0, "shape"), ("outputs", 0, "name"), ("tolerance", "rtol"), ("tolerance", "atol"),
    ("runtime", "optimize_from_batch"), ("format",), ("format_version",), ("output_structure",),
    ("quantized_engine",), ("torch_version",), ("golden", "inputs", 0), ("golden", "outputs", 0),
    ("inputs", 0, "min_shape"), ("inputs", 0, "max_shape"), ("aoti", "dynamic_range"), ("method",),
    ("optimized",), ("inputs",), ("outputs",), ("aoti", "required_cpu_features"), ("aoti", "device"),
]  # fmt: skip


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        yield path
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def _exists(value, path) -> bool:
    try:
        _get(value, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


def _new_value(rng: random.Random, path: tuple, old):
    last = path[-1] if path else None
    if last == "dtype":
        return rng.choice(DTYPES + ["", None, 1])
    if last in ("shape", "min_shape", "max_shape"):
        return rng.choice(SHAPES + [None, "shape", 8])
    if last in ("inputs", "outputs") and isinstance(old, list) and all(isinstance(s, dict) for s in old):
        spec = dict(old[0]) if old else {"name": "x", "dtype": "float32", "shape": [None, 1, 8, 8]}
        return rng.choice([[], old + old, [{**spec, "name": "extra"}] + old, None, {}, "x"])
    if isinstance(old, bool):
        return rng.choice([not old, None, 1, "true"])
    if isinstance(old, (int, float)):
        return rng.choice(NUMBERS + [old * 2, old + 1, -old, str(old), None, True])
    if isinstance(old, str):
        return rng.choice(STRINGS + [old + "x", old[:-1], old.upper(), None, 1])
    if isinstance(old, list):
        return rng.choice([[], old[:-1], old + old[-1:], old[::-1], [None] * len(old), None, "x", {}, [1e300]])
    return rng.choice(NUMBERS + STRINGS + [[], {}, True])


def edit_manifest(text: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A plausible or absurd edit of the manifest's JSON (or of its text)."""
    choice = rng.random()
    if choice < 0.08:
        kind = rng.choice(["truncated", "not utf-8", "empty", "not an object", "nested deeply", "duplicate key"])
        if kind == "truncated":
            at = rng.randrange(0, len(text))
            return text[:at], f"manifest text truncated at {at}"
        if kind == "not utf-8":
            return text.replace(b'"', b'"\xff\xfe', 1), "manifest with bytes that are not UTF-8"
        if kind == "empty":
            return b"", "empty manifest"
        if kind == "not an object":
            value = rng.choice(["[]", "null", "42", '"manifest"', "[{}]"])
            return value.encode(), f"manifest is {value}"
        if kind == "nested deeply":
            depth = rng.choice([100, 10_000, 200_000])
            return ('{"notes": ' + "[" * depth + "]" * depth + "}").encode(), f"manifest nested {depth} deep"
        return text.replace(b"{", b'{\n  "format": "onnx",', 1), "manifest with a duplicate 'format' key"
    manifest = json.loads(text)
    if choice < 0.2:
        path = rng.choice([p for p in _leaves(manifest) if p])
        parent = _get(manifest, path[:-1])
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        detail = f"manifest: deleted {_path_name(path)}"
    else:
        targeted = [p for p in TARGETED if _exists(manifest, p)]
        path = rng.choice(targeted) if choice < 0.75 else rng.choice([p for p in _leaves(manifest) if p])
        new = _new_value(rng, path, _get(manifest, path))
        _get(manifest, path[:-1])[path[-1]] = new
        shown = repr(new) if len(repr(new)) < 80 else repr(new)[:77] + "..."
        detail = f"manifest: {_path_name(path)} = {shown}"
    encoded = json.dumps(manifest, indent=2).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    return encoded.encode(), detail


def _path_name(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def manifest(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    entries = read_entries(data)
    if rng.random() < 0.05:
        kept = [e for e in entries if e.local != MANIFEST]
        return write_entries(kept), "manifest record removed"
    entry = next(e for e in entries if e.local == MANIFEST)
    entry.data, detail = edit_manifest(entry.data, rng)
    return write_entries(entries), detail


def golden(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    entries = read_entries(data)
    goldens = [e for e in entries if "/golden/" in f"/{e.local}" and e.local.endswith(".npy")]
    action = rng.choice(["remove one", "remove all", "swap"])
    if action == "swap" and len(goldens) >= 2:
        first, second = rng.sample(goldens, 2)
        first.data, second.data = second.data, first.data
        return write_entries(entries), f"golden {first.local} and {second.local} swapped"
    removed = goldens if action == "remove all" else [rng.choice(goldens)]
    kept = [e for e in entries if e not in removed]
    return write_entries(kept), f"golden removed: {', '.join(e.local for e in removed)}"


def rename(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    entries = read_entries(data)
    entry = rng.choice(entries)
    old = entry.name
    names = {e.name for e in entries}
    candidates = [
        old + "x",
        old[:-1] if len(old.rsplit("/", 1)[-1]) > 1 else old + "_",
        old.upper(),
        "other/" + entry.local,
        old.replace("/", "//", 1),
        re.sub(r"\d+$", lambda m: str(int(m.group()) + 1000), old) if re.search(r"\d$", old) else old + "1",
    ]
    new = next(c for c in rng.sample(candidates, len(candidates)) if c not in names and c != old)
    entry.info.filename = new
    return write_entries(entries), f"{old} renamed {new}"


def swap_same_size(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    entries = read_entries(data)
    pt2 = is_pt2(entries)
    by_size = collections.defaultdict(list)
    for entry in entries:
        by_size[len(entry.data)].append(entry)
    groups = [g for g in by_size.values() if len(g) >= 2]
    if not groups:
        return rename(data, rng)
    data_groups = [g for g in groups if sum(is_data_record(e, pt2) for e in g) >= 2]
    if data_groups and rng.random() < 0.7:
        group = [e for e in rng.choice(data_groups) if is_data_record(e, pt2)]
    else:
        group = rng.choice(groups)
    first, second = rng.sample(group, 2)
    first.data, second.data = second.data, first.data
    same = " (identical contents)" if first.data == second.data else ""
    return write_entries(entries), f"{first.local} and {second.local} ({len(first.data)} bytes) swapped{same}"


def swap_data_sizes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    entries = read_entries(data)
    pt2 = is_pt2(entries)
    records = [e for e in entries if is_data_record(e, pt2)]
    if pt2:  # one compiled model in a small package: swap it with the other files of its folder
        records += [e for e in entries if e.local.startswith("data/") and e not in records]
    pairs = [(a, b) for a in records for b in records if a.name < b.name and len(a.data) != len(b.data)]
    first, second = rng.choice(pairs)
    sizes = f"{len(first.data)} and {len(second.data)} bytes"
    first.data, second.data = second.data, first.data
    return write_entries(entries), f"{first.local} and {second.local} ({sizes}) swapped"


def tail(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    length = rng.choice([1, 7, 64, 1000, 4096, 70_000, 300_000])
    kind = rng.choice(["random", "zeros", "zip signature", "text"])
    garbage = {
        "random": rng.randbytes(length),
        "zeros": bytes(length),
        "zip signature": (b"PK\x05\x06" + rng.randbytes(18)) * (length // 22 + 1),
        "text": (b"appended by a careless copy\n" * (length // 28 + 1)),
    }[kind][:length]
    return data + garbage, f"{length} bytes of {kind} appended"


def empty(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    return b"", "empty file"


def foreign(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    kind = rng.choice(["zip", "zip like torch's", "png", "text", "random", "elf", "gzip", "npy"])
    if kind in ("zip", "zip like torch's"):
        buffer = io.BytesIO()
        top = top_folder(read_entries(data)) if kind != "zip" else "photos"
        with zipfile.ZipFile(buffer, "w", rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])) as archive:
            names = ["data.pkl", "version", "data/0", "byteorder", "constants.pkl"] if kind != "zip" else None
            for index in range(rng.randint(1, 6)):
                name = f"{top}/{names[index % len(names)] if names else f'img_{index}.jpg'}"
                if name not in archive.namelist():
                    archive.writestr(name, rng.randbytes(rng.randint(0, 2000)))
        return buffer.getvalue(), f"foreign file: {kind}"
    content = {
        "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(rng.randint(0, 5000)),
        "text": b"model weights are on the shared drive\n" * rng.randint(1, 100),
        "random": rng.randbytes(rng.randint(1, 100_000)),
        "elf": b"\x7fELF\x02\x01\x01" + bytes(9) + rng.randbytes(rng.randint(0, 5000)),
        "gzip": b"\x1f\x8b\x08\x00" + rng.randbytes(rng.randint(0, 5000)),
        "npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 10), }".ljust(127)
        + b"\n"
        + bytes(80),
    }[kind]
    return content, f"foreign file: {kind}"


DAMAGE = {
    "flip-any": flip_any,
    "flip-data": flip_data,
    "truncate": truncate,
    "zip-header": zip_header,
    "manifest": manifest,
    "golden": golden,
    "rename": rename,
    "swap-same-size": swap_same_size,
    "swap-data-sizes": swap_data_sizes,
    "tail": tail,
    "empty": empty,
    "foreign": foreign,
}
assert tuple(DAMAGE) == KINDS


def damage(data: bytes, seed: int) -> tuple[str, bytes, str]:
    """(kind, damaged bytes, what was done) for one seed: the seed picks the kind and its details."""
    rng = random.Random(seed)
    kind = rng.choice(KINDS)
    damaged, detail = DAMAGE[kind](data, rng)
    return kind, damaged, detail


@dataclass
class Copy:
    path: str
    kind: str
    seed: int
    detail: str


def copy_seed(seed: int, index: int) -> int:
    return seed * 1_000_000 + index


def generate(artifact: str | os.PathLike, out_dir: str | os.PathLike, n: int, seed: int) -> list[Copy]:
    """n damaged copies of `artifact` in out_dir, named STEM.KIND.sSEED.SUFFIX; also out_dir/copies.json."""
    artifact, out_dir = Path(artifact), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = artifact.read_bytes()
    copies = []
    for index in range(n):
        this_seed = copy_seed(seed, index)
        kind, damaged, detail = damage(data, this_seed)
        path = out_dir / f"{artifact.stem}.{kind}.s{this_seed}{artifact.suffix}"
        path.write_bytes(damaged)
        copies.append(Copy(str(path), kind, this_seed, detail))
    (out_dir / "copies.json").write_text(json.dumps([asdict(c) for c in copies], indent=1))
    return copies


# ----------------------------------------------------------------------------------------------
# running


def cli_path() -> Path:
    """torchbridge-run, found the way torchbridge.runtime.cli_path finds it (without importing it)."""
    candidates = [
        Path(sys.executable).parent / "torchbridge-run",
        Path(sysconfig.get_path("scripts")) / "torchbridge-run",
    ]
    found = shutil.which("torchbridge-run")
    candidates += [Path(found)] if found else []
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    from torchbridge.runtime import cli_path as installed

    return installed()


def python_job(artifact: str, input_npy: str, output_npy: str) -> int:
    """The Python leg: tb.Runtime(artifact)(x); the output saved as .npy (a JSON note when the
    output is not one tensor). Returns the exit status; the error goes to stderr."""
    try:
        import numpy as np
        import torch

        import torchbridge as tb

        x = np.load(input_npy)
        y = tb.Runtime(artifact, threads=1)(x)
        if isinstance(y, torch.Tensor):
            np.save(output_npy, y.detach().cpu().numpy())
        else:
            Path(output_npy + ".structure").write_text(f"{type(y).__name__}: {y!r}"[:2000])
        return 0
    except BaseException as error:  # noqa: BLE001 - every failure is a refusal to report
        sys.stderr.write(f"error: {type(error).__name__}: {error}\n")
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _zygote() -> None:
    """Imports torchbridge once, then forks one child per request read from stdin (a JSON line:
    artifact, input, output, timeout) and answers a JSON line: returncode (negative: the
    signal), timed_out, stderr, seconds."""
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import torchbridge  # noqa: F401

    replies = sys.stdout
    sys.stdout = sys.stderr
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        log = request["output"] + ".log"
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                status = python_job(request["artifact"], request["input"], request["output"])
            finally:
                os._exit(status)
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - started > request["timeout"]:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.005)
        seconds = time.monotonic() - started
        stderr = Path(log).read_text(errors="replace") if os.path.exists(log) else ""
        reply = {"returncode": os.waitstatus_to_exitcode(status), "timed_out": timed_out, "stderr": stderr}
        replies.write(json.dumps({**reply, "seconds": seconds}) + "\n")
        replies.flush()


class Zygote:
    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, __file__, "zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError(f"the zygote died at start (exit {self.process.wait()})")

    def run(self, artifact: str, input_npy: str, output_npy: str, timeout: float) -> dict | None:
        request = {"artifact": artifact, "input": input_npy, "output": output_npy, "timeout": timeout}
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        return json.loads(line) if line else None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Result:
    copy: Copy
    mode: str
    outcome: str
    detail: str
    seconds: float
    names_path: bool | None = None  # for refusals: does the message name the file?
    notes: list[str] = field(default_factory=list)


def _run_process(command: list[str], timeout: float) -> dict:
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout)
        reply = {"returncode": done.returncode, "timed_out": False, "stderr": done.stderr}
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
        reply = {"returncode": None, "timed_out": True, "stderr": stderr or ""}
    return {**reply, "seconds": time.monotonic() - started}


def compare(output_npy: str, reference) -> str | None:
    """None when the output matches the reference; otherwise what differs."""
    import numpy as np

    if os.path.exists(output_npy + ".structure"):
        return "output is not one tensor: " + Path(output_npy + ".structure").read_text()[:200]
    if not os.path.exists(output_npy):
        return "exit 0 but no output written"
    try:
        actual = np.load(output_npy)
    except Exception as error:  # noqa: BLE001
        return f"output unreadable: {error}"
    if actual.shape != reference.shape or actual.dtype != reference.dtype:
        return f"output {actual.dtype}{list(actual.shape)}, expected {reference.dtype}{list(reference.shape)}"
    difference = np.abs(actual.astype(np.float64) - reference.astype(np.float64))
    scale = max(float(np.abs(reference).max()), 1e-30)
    non_finite = int((~np.isfinite(actual)).sum()) - int((~np.isfinite(reference)).sum())
    error = float(np.max(difference, where=np.isfinite(difference), initial=0.0)) / scale
    if non_finite or error > RELATIVE_TOLERANCE:
        return f"max relative error {error:.3g}" + (f", {non_finite} more non-finite values" if non_finite else "")
    return None


def _message(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip() and not line.startswith("[W")]
    errors = [line for line in lines if line.startswith("error")]
    return (errors[-1] if errors else lines[-1] if lines else "(no message)")[:500]


def classify(reply: dict, output_npy: str, reference, path: str) -> tuple[str, str, bool | None]:
    if reply["timed_out"]:
        return "hang", f"no answer in {reply['seconds']:.0f} s", None
    code = reply["returncode"]
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return "crash", f"killed by {name}; {_message(reply['stderr'])}", None
    if code != 0:
        message = _message(reply["stderr"])
        return "refused", f"exit {code}: {message}", path in reply["stderr"]
    difference = compare(output_npy, reference)
    return ("silent-wrong", difference, None) if difference else ("ok", "", None)


class Runner:
    """Runs artifacts through the CLI and the Python bindings, `workers` at a time."""

    def __init__(self, workers: int = 2, timeout: float = 60.0, work_dir: str | None = None, confirmations: int = 3):
        self.workers = workers
        self.confirmations = confirmations
        self._confirmed = collections.Counter()
        self.timeout = timeout
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="tb-corrupt-runs-"))
        self.cli = str(cli_path())
        self._idle: queue.SimpleQueue[Zygote] = queue.SimpleQueue()  # started once, reused across runs
        self._zygotes: list[Zygote] = []
        self._lock = threading.Lock()
        self._counter = 0

    def _run_forked(self, artifact: str, input_npy: str, output: str) -> dict | None:
        try:
            zygote = self._idle.get_nowait()
        except queue.Empty:
            zygote = Zygote()
            with self._lock:
                self._zygotes.append(zygote)
        reply = zygote.run(artifact, input_npy, output, self.timeout)
        if reply is not None:
            self._idle.put(zygote)
        return reply

    def _scratch(self) -> str:
        with self._lock:
            self._counter += 1
            return str(self.work_dir / f"out{self._counter}.npy")

    def run_one(self, artifact: str, input_npy: str, mode: str, fresh: bool = False) -> tuple[dict, str]:
        output = self._scratch()
        if mode == "cli":
            command = [self.cli, artifact, "--input", input_npy, "--output", output, "--threads", "1"]
            return _run_process(command, self.timeout), output
        if not fresh:
            reply = self._run_forked(artifact, input_npy, output)
            if reply is not None:
                return reply, output
            # the zygote itself died (it is not reused): run this one in a fresh interpreter
        command = [sys.executable, __file__, "pyrun", artifact, input_npy, output]
        return _run_process(command, self.timeout), output

    def reference(self, artifact: str, input_npy: str) -> dict:
        """The undamaged artifact's output on each leg."""
        import numpy as np

        references = {}
        for mode in MODES:
            reply, output = self.run_one(artifact, input_npy, mode)
            if reply["returncode"] != 0 or not os.path.exists(output):
                raise RuntimeError(f"the undamaged {artifact} fails on the {mode} leg: {reply}")
            references[mode] = np.load(output)
        return references

    def check(self, copy: Copy, input_npy: str, reference, mode: str) -> Result:
        reply, output = self.run_one(copy.path, input_npy, mode)
        outcome, detail, names_path = classify(reply, output, reference, copy.path)
        result = Result(copy, mode, outcome, detail, reply["seconds"], names_path)
        if mode == "python" and outcome in ("crash", "hang"):
            # Not an artifact of forking a process with threads? A fresh interpreter decides (the
            # first few of each damage kind: one takes tens of seconds under load).
            with self._lock:
                self._confirmed[(copy.kind, outcome)] += 1
                confirm = self._confirmed[(copy.kind, outcome)] <= self.confirmations
            if not confirm:
                result.notes.append("forked run only, not confirmed in a fresh interpreter")
                return result
            reply, output = self.run_one(copy.path, input_npy, mode, fresh=True)
            fresh = classify(reply, output, reference, copy.path)
            if fresh[0] != outcome:
                result.notes.append(f"forked run: {outcome} ({detail}); fresh interpreter: {fresh[0]}")
            result.outcome, result.detail, result.names_path = fresh
        return result

    def run(self, copies: list[Copy], input_npy: str, references: dict, progress=None) -> list[Result]:
        jobs = [(copy, mode) for copy in copies for mode in MODES]
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(self.check, copy, input_npy, references[mode], mode) for copy, mode in jobs]
            results = []
            for future in futures:
                results.append(future.result())
                if progress:
                    progress(results[-1])
        return results

    def close(self) -> None:
        for zygote in self._zygotes:
            zygote.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------------
# reports


def summary(results: list[Result], title: str = "") -> str:
    """Damage kind x outcome, each cell 'cli/python' counts."""
    counts = collections.Counter((r.copy.kind, r.outcome, r.mode) for r in results)
    kinds = [k for k in KINDS if any(r.copy.kind == k for r in results)]
    width = max([len("damage kind")] + [len(k) for k in kinds]) + 2
    lines = [title] if title else []
    lines.append("damage kind".ljust(width) + "".join(o.rjust(14) for o in OUTCOMES) + "   (cli/python)")
    for kind in [*kinds, "total"]:
        cells = []
        for outcome in OUTCOMES:
            cli, py = (
                sum(counts[(k, outcome, m)] for k in (kinds if kind == "total" else [kind])) for m in MODES
            )  # fmt: skip
            cells.append(f"{cli}/{py}".rjust(14) if cli or py else "-".rjust(14))
        lines.append(kind.ljust(width) + "".join(cells))
    unnamed = [r for r in results if r.outcome == "refused" and r.names_path is False]
    lines.append(f"refusals whose message does not name the file: {len(unnamed)} of "
                 f"{sum(r.outcome == 'refused' for r in results)}")  # fmt: skip
    return "\n".join(lines)


def offenders(results: list[Result]) -> list[Result]:
    return [r for r in results if r.outcome in BAD_OUTCOMES]


def unnamed_refusals(results: list[Result]) -> list[Result]:
    return [r for r in results if r.outcome == "refused" and r.names_path is False]


def describe(result: Result) -> str:
    notes = f" [{'; '.join(result.notes)}]" if result.notes else ""
    return (f"{result.outcome:12} {result.mode:6} {result.copy.kind:15} {Path(result.copy.path).name}: "
            f"{result.copy.detail} -> {result.detail}{notes}")  # fmt: skip


def write_report(results: list[Result], path: str | os.PathLike) -> None:
    rows = [{**asdict(r), "copy": asdict(r.copy)} for r in results]
    Path(path).write_text(json.dumps(rows, indent=1))


def example_input(artifact: str | os.PathLike, batch: int = 3):
    """A fixed input for the artifact's one input, from its manifest: dynamic dims of size `batch`."""
    import numpy as np

    entries = read_entries(Path(artifact).read_bytes())
    spec = json.loads(next(e for e in entries if e.local == MANIFEST).data)["inputs"]
    assert len(spec) == 1, "the corruption runner feeds one input"
    shape = [batch if d is None else d for d in spec[0]["shape"]]
    values = np.random.default_rng(0).random(shape)
    return (values * 2 - 1).astype(spec[0]["dtype"])


def check_artifact(
    artifact: str | os.PathLike, n: int, seed: int, out_dir: str | os.PathLike, runner: Runner, title: str = ""
) -> tuple[list[Result], str]:
    """Generate n damaged copies, run them on both legs, write out_dir/results.json and
    out_dir/summary.txt; returns the results and the report's text."""
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    input_npy = str(out_dir / "input.npy")
    np.save(input_npy, example_input(artifact))
    references = runner.reference(str(artifact), input_npy)
    copies = generate(artifact, out_dir / "copies", n, seed)
    started = time.monotonic()
    results = runner.run(copies, input_npy, references)
    lines = [summary(results, title or f"{artifact}: {n} damaged copies, seed {seed}")]
    lines.append(f"{len(results)} runs in {time.monotonic() - started:.0f} s; results in {out_dir}/results.json")
    bad, unnamed = offenders(results), unnamed_refusals(results)
    if bad:
        lines.append(f"crash / hang / silent-wrong ({len(bad)}):")
        lines += ["  " + describe(r) for r in bad]
    if unnamed:
        lines.append(f"refusals not naming the file ({len(unnamed)}):")
        lines += ["  " + describe(r) for r in unnamed]
    report = "\n".join(lines)
    write_report(results, out_dir / "results.json")
    (out_dir / "summary.txt").write_text(report + "\n")
    return results, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("generate", help="write damaged copies")
    make.add_argument("artifact")
    make.add_argument("out_dir")
    run = commands.add_parser("run", help="generate, run both legs, print the summary")
    run.add_argument("artifact")
    run.add_argument("--dir", help="where the copies and results go (default: a new folder in /tmp)")
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--timeout", type=float, default=60.0)
    for command in (make, run):
        command.add_argument("-n", type=int, default=100)
        command.add_argument("--seed", type=int, default=0)
    pyrun = commands.add_parser("pyrun", help="one run of the Python leg")
    pyrun.add_argument("artifact")
    pyrun.add_argument("input")
    pyrun.add_argument("output")
    commands.add_parser("zygote", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "zygote":
        _zygote()
        return 0
    if args.command == "pyrun":
        return python_job(args.artifact, args.input, args.output)
    if args.command == "generate":
        for copy in generate(args.artifact, args.out_dir, args.n, args.seed):
            print(f"{Path(copy.path).name}: {copy.detail}")
        return 0
    out_dir = args.dir or tempfile.mkdtemp(prefix=f"tb-corrupt-{Path(args.artifact).stem}-")
    with Runner(args.workers, args.timeout) as runner:
        results, report = check_artifact(args.artifact, args.n, args.seed, out_dir, runner)
    print(report)
    return 1 if offenders(results) or unnamed_refusals(results) else 0


if __name__ == "__main__":
    sys.exit(main())
