"""format="auto": export a model both ways (TorchScript, with the runtime's variant order measured,
and an AOTInductor .pt2), time both in the C++ runtime on this CPU, and keep the faster one, with
the choice and the table in its manifest ("selection").

    tb.export(model, (x,), "model.pt", format="auto")    # the file holds whichever format won
    torchbridge export --model digits_cnn --out model.pt --format auto

The C++ runtime and every front end tell the formats apart by the archive's records, not by the
file name, so the artifact keeps the name it was given. A .pt2 accepts batch sizes within its
declared range (1..1024 by default), a TorchScript artifact any.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchbridge.artifact import MANIFEST_ENTRY, Artifact, artifact_format, seal, write_in_place
from torchbridge.compare import first_line
from torchbridge.errors import TorchbridgeError

#: Batch sizes the candidates are timed at (a model with a dynamic batch dimension).
AUTO_BATCHES = (1, 16)


def export_auto(export: Callable[..., Artifact], model, example_inputs, path, aoti_options: dict[str, Any], **options):
    """Export `model` as TorchScript (tb.export with `options`) and as a .pt2 (with `aoti_options`)
    into a staging folder beside `path`, time both with torchbridge.Runtime at AUTO_BATCHES
    (interleaved rounds, medians, this process's thread count) and move the faster to `path` (by
    the geometric mean over the batch sizes) with manifest["selection"] recording the table. A
    model torch.export or AOTInductor cannot compile gets the TorchScript artifact, and the
    selection says why. Nothing at `path` changes unless a candidate was written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.auto.", dir=path.parent))
    try:
        candidates: dict[str, Artifact] = {}
        seconds: dict[str, float] = {}
        failed: dict[str, str] = {}
        start = time.perf_counter()
        ts_path = staging / "ts" / path.name
        candidates["torchscript"] = export(model, example_inputs, ts_path, format="torchscript", **options)
        seconds["torchscript"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        try:
            aoti_fields = {k: options[k] for k in ("dynamic_dims", "input_names", "rtol", "atol") if k in options}
            candidates["aoti"] = export(
                model, example_inputs, staging / "aoti" / path.name, format="aoti", **aoti_fields, **aoti_options
            )
        except Exception as error:  # torch.export or Inductor cannot take every model TorchScript can
            failed["aoti"] = first_line(error)
        seconds["aoti"] = round(time.perf_counter() - start, 2)

        table, batches = time_in_runtime({name: art.path for name, art in candidates.items()})
        chosen = min(table, key=lambda name: geomean(table[name]))
        selection: dict[str, Any] = {
            "chosen": chosen,
            "batches": batches,
            "threads": torch.get_num_threads(),
            "p50_ms": table,
            "export_seconds": seconds,
        }
        if failed:
            selection["failed"] = failed
        manifest = dict(candidates[chosen].manifest)
        manifest["selection"] = selection
        write_in_place(path, lambda temporary: rewrite_manifest(candidates[chosen].path, temporary, manifest))
        return Artifact(path=path, manifest=manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def time_in_runtime(paths: dict[str, Path]) -> tuple[dict[str, list[float]], list[int]]:
    """p50 ms of torchbridge.Runtime.forward per artifact at AUTO_BATCHES (the golden batch where
    the batch is fixed), timed in interleaved rounds (about 0.2 s of each, at least 3)."""
    from torchbridge.runtime import Runtime
    from torchbridge.timing import time_ranking

    threads = torch.get_num_threads()
    runtimes = {name: Runtime(path, threads=threads) for name, path in paths.items()}
    first = next(iter(runtimes.values()))
    shape = first.manifest["inputs"][0]["shape"]
    batch_dynamic = bool(shape) and shape[0] is None
    batches = list(AUTO_BATCHES) if batch_dynamic else [int(first.golden()[0][0].shape[0]) if shape else 1]
    table: dict[str, list[float]] = {name: [] for name in runtimes}
    for batch in batches:
        inputs = first.example_inputs(dynamic_size=batch, seed=0) if batch_dynamic else first.golden()[0]
        for runtime in runtimes.values():
            for _ in range(2):  # the first call at a shape chooses (and compiles) what runs there
                runtime.forward(*inputs)
        start = time.perf_counter()
        first.forward(*inputs)
        call_ms = max(time.perf_counter() - start, 1e-6) * 1000.0
        calls = {name: functools.partial(runtime.forward, *inputs) for name, runtime in runtimes.items()}
        for name, samples in time_ranking(calls, max(3, min(200, int(200.0 / call_ms))), call_ms).items():
            table[name].append(round(statistics.median(samples), 4))
    return table, batches


def rewrite_manifest(source: Path, target: Path, manifest: dict[str, Any]) -> None:
    """Copy the artifact `source` to `target` (same file name: a TorchScript archive's top folder
    is its stem) with its manifest replaced and the digest record written again, through the
    writers export itself uses."""
    if source.name != target.name:
        raise TorchbridgeError(f"rewrite_manifest keeps the file name: {source.name} -> {target.name}")
    entries = {MANIFEST_ENTRY: json.dumps(manifest, indent=2).encode()}
    if artifact_format(source) == "aoti":
        from torchbridge.aoti import copy_with_entries

        copy_with_entries(source, target, entries)
    else:
        seal(source, target, {"extra/" + name: data for name, data in entries.items()})
