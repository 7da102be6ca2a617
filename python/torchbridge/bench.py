"""tb.bench: every path that can run one model or artifact (eager, TorchScript, LibTorch, the C++ runtime,
torchbridge-run, onnxruntime, .pt2), timed side by side in one process (timing.py), checked against
eager, with each path's load time and memory from a fresh process; the report is bench_report.py."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbridge.bench_report import PATHS, BenchReport, PathInfo, cpu_name, fmt
from torchbridge.errors import TorchbridgeError
from torchbridge.mirror import load_in_python
from torchbridge.runtime import Runtime, resolve_threads
from torchbridge.timing import Latency, cli_bench, cli_latency, summarize, time_interleaved

# --- tb.bench: every path side by side -------------------------------------------------------

#: time_interleaved's block in bench(): a turn is untimed calls (at least one, for TURN_WARM_S), then
#: TURN - 1 timed ones.
TURN = 4
#: A turn's untimed calls in bench() last at least this long: onnxruntime's intra-op threads spin for
#: tens of milliseconds after a call, and with as many threads as cores they slow whichever path runs
#: next by up to 3x for that long; and after the other paths ran, a small model's first few calls
#: run several times slower while its weights come back into the caches.
TURN_WARM_S = 0.06
#: The paths that need the eager model (eager itself, and the ONNX and .pt2 exports made from it).
MODEL_PATHS = ("eager", "onnxruntime", "pt2")
#: Measured unless `paths` says otherwise (pt2 only on request: compiling takes 10-20 s or more).
DEFAULT_PATHS = ("eager", "torchscript", "libtorch", "cpp", "cli", "onnxruntime")
#: onnxruntime must match eager within this relative tolerance (atol: ONNX_RTOL x max |eager output|).
ONNX_RTOL = 1e-4
#: Calls per batch size after the first ones in each isolated process, before its peak RSS is read.
ISOLATED_CALLS = 5

_ORDER = ("eager", "torchscript", "aoti", "libtorch", "cpp", "cli", "onnxruntime", "pt2")
_WHAT = {
    "eager": "the nn.Module in Python under torch.inference_mode()",
    "torchscript": "torch.jit.load(model.pt) in Python",
    "aoti": "torch._inductor.aoti_load_package(model.pt2) in Python",
    "libtorch": "the bare LibTorch forward: the artifact loaded by torch in Python, a second object",
    "cpp": "torchbridge.Runtime (C++ runtime) through the pybind11 bindings",
    "cli": "torchbridge-run --bench --json, a separate process per batch size",
    "onnxruntime": "onnxruntime InferenceSession (CPUExecutionProvider) on the torch.onnx export",
    "pt2": "torchbridge.Runtime (C++ runtime) on an AOTInductor .pt2 export of the model",
}


def _progress(enabled: bool, message: str) -> None:
    if enabled:
        print(f"torchbridge bench: {message}", file=sys.stderr, flush=True)


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), core count, versions and thread count; loadavg and date are added by bench."""
    cpu = cpu_name()
    try:
        from importlib.metadata import version

        torchbridge_version = version("torchbridge")
    except Exception:
        torchbridge_version = "unknown"
    cores = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "torch": torch.__version__,
        "torchbridge": torchbridge_version,
        "python": platform.python_version(),
        "threads": threads,
        "label": f"{cpu}, {cores} cores, torch {torch.__version__}, {threads} threads",
    }


def busy_cores(seconds: float = 1.0) -> float | None:
    """How many cores other processes kept busy over `seconds` while this one sleeps (/proc/stat);
    None where /proc/stat is missing. Unlike the load average it does not count this process's
    own recent work, e.g. the benchmark that ran just before."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(values), values[3] + values[4]

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / (total1 - total0))


def _check_paths(paths, have_model: bool) -> list[str]:
    if paths is None:
        return [p for p in DEFAULT_PATHS if have_model or p not in MODEL_PATHS]
    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    paths = list(dict.fromkeys(paths))
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise TorchbridgeError(f"unknown path {', '.join(map(repr, unknown))}: choose from {', '.join(PATHS)}")
    if not paths:
        raise TorchbridgeError(f"no path to measure: choose from {', '.join(PATHS)}")
    need = [p for p in paths if p in MODEL_PATHS]
    if need and not have_model:
        raise TorchbridgeError(f"path {', '.join(need)} needs the eager model (model= / --model), not only an artifact")
    return paths


def onnx_export(model: nn.Module, example: tuple[torch.Tensor, ...], dynamic: list[list[int]], path: Path) -> None:
    """torch.onnx.export with torch.export underneath (dynamo=True, the non-deprecated exporter in
    torch 2.9+), the dynamic dims of the .pt artifact dynamic here too (one shared batch dim)."""
    batch = torch.export.Dim("batch", min=1)
    shapes = []
    for i, dims in enumerate(dynamic):
        shapes.append({d: batch if d == 0 else torch.export.Dim(f"input{i}_dim{d}", min=1) for d in dims} or None)
    torch.onnx.export(
        model,
        example,
        str(path),
        dynamo=True,
        external_data=False,  # one file, like the other artifacts (fine below 2 GB)
        verbose=False,  # torch.onnx prints each export stage otherwise
        input_names=[f"input_{i}" for i in range(len(example))],
        dynamic_shapes=tuple(shapes),
    )


def onnx_session(path: Path, threads: int, profile_prefix: str | None = None):
    """An onnxruntime CPU session; with profile_prefix, onnxruntime's profiler on (per-node times)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _isolated(spec: dict[str, Any], scratch: Path) -> dict[str, Any]:
    worker = Path(__file__).with_name("_bench_worker.py")
    spec = {**spec, "result": str(scratch / f"result_{spec['path']}_{spec['tag']}.json")}
    try:
        completed = subprocess.run(
            [sys.executable, str(worker), json.dumps(spec)], capture_output=True, text=True, timeout=1800
        )
    except subprocess.TimeoutExpired:
        return {"error": "the isolated process took over 30 minutes"}
    result_file = Path(spec["result"])
    if result_file.is_file():
        return json.loads(result_file.read_text())
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"the isolated process exited with {completed.returncode}: {tail[0]}"}


def bench(
    model: nn.Module | None = None,
    example_inputs=None,
    artifact: str | Path | None = None,
    batch_sizes=(1, 32),
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 10,
    paths=None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    name: str | None = None,
) -> BenchReport:
    """Every way to run one model side by side: latency, load time, first call, memory, size.

    model, example_inputs: the eager model (put in eval mode) and an example input (tuple) to
      export from; artifact: a .pt (or .pt2) to run; without it the model is exported to
      `out_dir`/model.pt (or a temporary folder) with tb.export's default settings.
    paths: any of PATHS (default DEFAULT_PATHS; with only an artifact, those that need no model):
      eager, torchscript (torch.jit.load in Python; for a .pt2, torch's AOTInductor loader, named
      'aoti'), libtorch (the same as a separate object: the bare LibTorch forward the C++ runtime
      wraps), cpp (torchbridge.Runtime), cli (torchbridge-run), onnxruntime (skipped with a note when
      onnxruntime is missing or its outputs differ from eager), pt2 (the C++ runtime on an
      AOTInductor export; compiles for 10 s or more).
    The in-process paths are timed interleaved round-robin after warm-up, `runs` rounds per batch
    size; the cli process runs after each batch size's rounds. Load time, first call and peak RSS
    come from a fresh process per path running only that path. Inputs are random, from the
    artifact's manifest. With out_dir, writes bench.json, bench.md and bench.png there.
    Progress goes to stderr, one line per phase (progress=False: none). name: the report's title
    (default: the model's class name, or the artifact's file name).
    """
    from torchbridge.artifact import artifact_format, flatten_outputs
    from torchbridge.compare import default_atol, example_tuple, max_errors, within_tolerance
    from torchbridge.export import export

    batch_sizes = [int(b) for b in batch_sizes]
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise TorchbridgeError(f"batch sizes must be positive integers, got {batch_sizes}")
    threads = resolve_threads(threads)
    if threads < 1 or runs < 1 or warmup < 0:
        raise TorchbridgeError(f"need threads >= 1, runs >= 1, warmup >= 0 (got {threads}, {runs}, {warmup})")
    if model is None and artifact is None:
        raise TorchbridgeError("bench needs a model (with example_inputs) or an artifact")
    selected = _check_paths(paths, model is not None)
    if artifact is not None and not Path(artifact).is_file():
        raise TorchbridgeError(f"{artifact}: no such artifact file")
    example = None
    if model is not None:
        if example_inputs is None:
            raise TorchbridgeError("bench with a model needs example_inputs (a tensor or a tuple of tensors)")
        example = example_tuple(example_inputs)
        model.eval()

    loadavg_start = os.getloadavg()
    busy_start = busy_cores()
    machine = machine_info(threads)
    skipped: dict[str, str] = {}
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="torchbridge-bench-")))
        work = Path(out_dir) if out_dir is not None else scratch
        work.mkdir(parents=True, exist_ok=True)
        # Before export: export times the runtime's variants at this process's thread count, and the
        # order it records is for the thread count the C++ path is then timed at.
        torch.set_num_threads(threads)
        if artifact is None:
            artifact = work / "model.pt"
            _progress(progress, f"exporting {type(model).__name__} to {artifact}")
            export(model, example, artifact)
        artifact = Path(artifact)
        runtime = Runtime(artifact, threads=threads)
        manifest = runtime.manifest or {}
        dynamic = [[d for d, n in enumerate(spec["shape"]) if n is None] for spec in manifest.get("inputs", [])]
        python_name = "aoti" if artifact_format(artifact) == "aoti" else "torchscript"
        inputs_by_batch = {}
        for batch in batch_sizes:
            inputs = runtime.example_inputs(dynamic_size=batch, seed=0)
            if inputs and inputs[0].dim() and inputs[0].shape[0] != batch:
                raise TorchbridgeError(
                    f"{artifact} takes a fixed batch of {inputs[0].shape[0]} (no dynamic dim 0): "
                    f"use batch sizes ({inputs[0].shape[0]},)"
                )
            inputs_by_batch[batch] = inputs
            torch.save(inputs, scratch / f"inputs_{batch}.pt")

        files: dict[str, Path] = {}
        callables: dict[str, Callable[[list[torch.Tensor]], object]] = {}
        if "eager" in selected:
            callables["eager"] = lambda inputs: model(*inputs)
        if "torchscript" in selected:
            python_name, in_python = load_in_python(artifact)
            callables[python_name] = lambda inputs: in_python(*inputs)
            files[python_name] = artifact
        if "libtorch" in selected:
            # The bare LibTorch forward, with the passes the runtime applied at load: cpp / libtorch
            # measures only torchbridge's own layer.
            _, bare = load_in_python(artifact, runtime.optimized_from_batch, runtime=runtime)
            callables["libtorch"] = lambda inputs: bare(*inputs)
            files["libtorch"] = artifact
        if "cpp" in selected:
            callables["cpp"] = lambda inputs: runtime.forward(*inputs)
            files["cpp"] = artifact
        if "cli" in selected:
            files["cli"] = artifact

        session = None
        if "onnxruntime" in selected:
            try:
                import onnxruntime  # noqa: F401
            except ImportError as error:
                skipped["onnxruntime"] = f"onnxruntime does not import ({error}); pip install 'torchbridge[onnx]'"
            else:
                onnx_path = work / "model.onnx"
                _progress(progress, f"exporting to ONNX ({onnx_path})")
                try:
                    onnx_export(model, example, dynamic or [[0]] * len(example), onnx_path)
                    session = onnx_session(onnx_path, threads)
                except Exception as error:
                    skipped["onnxruntime"] = f"ONNX export or load failed: {str(error).strip().splitlines()[0]}"
                    session = None
        if "pt2" in selected:
            pt2_path = work / "model.pt2"
            _progress(progress, f"exporting to AOTInductor ({pt2_path}; compiling takes 10 s or more)")
            try:
                export(model, example, pt2_path)
                pt2_runtime = Runtime(pt2_path, threads=threads)
                callables["pt2"] = lambda inputs: pt2_runtime.forward(*inputs)
                files["pt2"] = pt2_path
            except TorchbridgeError as error:
                skipped["pt2"] = f"AOTInductor export failed: {str(error).strip().splitlines()[0]}"

        if session is not None:
            names = [i.name for i in session.get_inputs()]
            for batch, inputs in inputs_by_batch.items():
                with torch.inference_mode():
                    expected = [t.detach() for t in flatten_outputs(model(*inputs))]
                try:
                    actual = [
                        torch.from_numpy(a) for a in session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})
                    ]
                except Exception as error:
                    skipped["onnxruntime"] = (
                        f"onnxruntime failed at batch {batch}: {str(error).strip().splitlines()[0]}"
                    )
                    break
                atol = default_atol(expected, ONNX_RTOL)
                if len(actual) != len(expected) or not all(
                    within_tolerance(a, e, ONNX_RTOL, atol) for a, e in zip(actual, expected)
                ):
                    worst = max(max_errors(a, e)[0] for a, e in zip(actual, expected))
                    skipped["onnxruntime"] = (
                        f"outputs differ from eager at batch {batch} (max abs error {worst:.3g}, "
                        f"tolerance rtol {ONNX_RTOL:g}, atol {atol:.3g})"
                    )
                    break
            else:
                files["onnxruntime"] = work / "model.onnx"
                callables["onnxruntime"] = lambda inputs, s=session, n=names: s.run(
                    None, {k: x.numpy() for k, x in zip(n, inputs)}
                )
            if "onnxruntime" in skipped:
                session = None

        latency: list[Latency] = []
        cli_runs: dict[int, dict] = {}
        for batch in batch_sizes:
            inputs = inputs_by_batch[batch]
            timed = {name: (lambda fn=fn, inputs=inputs: fn(inputs)) for name, fn in callables.items()}
            if timed:
                _progress(progress, f"timing batch {batch}: {', '.join(timed)} ({warmup} warm-up + {runs} rounds)")
                with torch.inference_mode():
                    samples = time_interleaved(timed, runs, warmup, block=TURN, warm_s=TURN_WARM_S)
                latency += [summarize(name, batch, values) for name, values in samples.items()]
            if "cli" in selected:
                _progress(progress, f"timing batch {batch}: torchbridge-run process ({warmup} warm-up + {runs} runs)")
                cli_runs[batch] = cli_bench(artifact, batch, runs, warmup, threads)
                latency.append(cli_latency(cli_runs[batch], batch))

        infos: list[PathInfo] = []
        order = [p for p in _ORDER if p in callables or (p == "cli" and cli_runs)]
        rank = {p: i for i, p in enumerate(order)}
        latency.sort(key=lambda r: (batch_sizes.index(r.batch), rank[r.path]))
        eager_pickle = scratch / "model.pkl"
        for path_name in order:
            file = files.get(path_name)
            info = PathInfo(
                path_name, _WHAT[path_name], str(file) if file else None, file.stat().st_size if file else None
            )
            if path_name == "cli":
                first_run = cli_runs[batch_sizes[0]]
                info.load_ms = first_run.get("load_ms")
                info.first_call_ms = {b: r.get("first_call_ms") for b, r in cli_runs.items()}
                info.peak_rss_mb = max(r.get("peak_rss_mb", 0.0) for r in cli_runs.values())
                info.peak_rss_by_batch_mb = {b: r.get("peak_rss_mb", 0.0) for b, r in cli_runs.items()}
                info.note = (
                    "torchbridge-run's own load_ms, first_call_ms (one process per batch size), peak_rss_mb (max)"
                )
                infos.append(info)
                continue
            spec = {
                "path": {"pt2": "cpp"}.get(path_name, path_name),
                "tag": path_name,
                "file": str(file) if file else None,
                "threads": threads,
                "batch_sizes": batch_sizes,
                "inputs": {str(b): str(scratch / f"inputs_{b}.pt") for b in batch_sizes},
                "calls": ISOLATED_CALLS,
                "optimized_from_batch": runtime.optimized_from_batch if runtime is not None else 0,
            }
            if path_name == "eager":
                reason = None
                in_main = sorted({type(m).__name__ for m in model.modules() if type(m).__module__ == "__main__"})
                if in_main:
                    reason = (
                        f"{', '.join(in_main)} defined in __main__, which a fresh process cannot import to "
                        "unpickle the model: define the model's classes in a module"
                    )
                else:
                    try:
                        torch.save(model, eager_pickle)
                    except Exception as error:
                        reason = f"torch.save(model) failed: {str(error).strip().splitlines()[0]}"
                if reason:
                    info.note = reason
                    infos.append(info)
                    continue
                spec["file"] = str(eager_pickle)
                spec["modules"] = sorted({type(m).__module__ for m in model.modules()})
            _progress(progress, f"isolated run: {path_name} alone in a fresh process")
            result = _isolated(spec, scratch)
            if "error" in result:
                info.note = f"isolated process failed: {result['error']}"
            else:
                info.import_ms = result["import_ms"]
                info.load_ms = result["load_ms"]
                info.first_call_ms = {int(b): v for b, v in result["first_call_ms"].items()}
                info.rss_after_import_mb = result["rss_after_import_mb"]
                info.peak_rss_mb = result["peak_rss_mb"]
                info.peak_rss_by_batch_mb = {int(b): v for b, v in result["peak_rss_by_batch_mb"].items()}
            infos.append(info)

    notes += [
        "In-process paths (all but cli) run in this one process with the same inputs (random, from the "
        f"artifact's manifest, seed 0) under torch.inference_mode(): {warmup} warm-up calls each, then "
        f"round-robin turns per path of untimed calls for at least {TURN_WARM_S * 1000:.0f} ms (at least one: "
        "thread pools spin for a while after a call and would slow the next path, onnxruntime's for tens of "
        "milliseconds, and a small model's weights take a few calls to be back in the caches), then "
        f"{TURN - 1} timed calls, until each path has {runs} timed calls; machine noise hits every path alike.",
        f"cli: a separate torchbridge-run process per batch size ({warmup} warm-up + {runs} runs, same thread "
        "count), run right after that batch size's in-process rounds.",
        "load ms, first call ms, peak RSS: a fresh Python process per path running only that path "
        f"(torch.set_num_threads({threads})); first call: the first forward at each batch size, in the order "
        f"{', '.join(map(str, batch_sizes))}, so only the first is the first call after load; peak RSS: "
        f"VmHWM after the first and {ISOLATED_CALLS} more calls at each batch size in turn (not ru_maxrss, which "
        "a child inherits from this process on Linux). cli: torchbridge-run's own figures.",
        "cpp and pt2 load times include the runtime's 3 warm-up forwards on the golden example, batch 1 and the "
        "batch sizes measured (warmup_batches, as torchbridge-run warms up at its --batch): oneDNN Graph "
        "compiles for each new input shape on its first call.",
        "The eager, torchscript/aoti and onnxruntime processes import only torch (and onnxruntime, and for eager "
        "the modules defining the model); libtorch and cpp import torchbridge, which imports Lightning: see "
        "'RSS after import'.",
    ]
    if "onnxruntime" in callables:
        import onnxruntime

        notes.append(
            f"onnxruntime {onnxruntime.__version__}: torch.onnx.export(dynamo=True) with the batch dim dynamic; "
            "CPUExecutionProvider, intra_op_num_threads="
            f"{threads}, inter_op_num_threads=1; outputs checked against eager at every batch size before timing "
            f"(rtol {ONNX_RTOL:g}, atol {ONNX_RTOL:g} x max |eager output|)."
        )
    if python_name == "aoti" and "torchscript" in selected:
        notes.append(
            "The artifact is a .pt2: the torchscript path runs torch's AOTInductor loader, reported as 'aoti'."
        )
    cores = os.cpu_count() or 1
    busy_end = busy_cores()
    busy = max((b for b in (busy_start, busy_end) if b is not None), default=0.0)
    if busy > max(cores - threads, 0) + 0.25:
        notes.insert(
            0,
            f"warning: other processes kept {busy:.1f} of {cores} cores busy (at the start {fmt(busy_start)}, "
            f"at the end {fmt(busy_end)}) while {threads} threads were timed; OpenMP threads wait on descheduled "
            "ones, so the figures can be several times too slow and scattered. Rerun on a quiet machine.",
        )
    machine.update(
        busy_cores_start=busy_start,
        busy_cores_end=busy_end,
        loadavg_start=list(loadavg_start),
        loadavg_end=list(os.getloadavg()),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    settings = {
        "model": name or (type(model).__name__ if model is not None else Path(artifact).name),
        "artifact": str(artifact),
        "batch_sizes": batch_sizes,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "paths": selected,
    }
    report = BenchReport(machine, settings, infos, latency, skipped, notes)
    if out_dir is not None:
        report.write(out_dir)
    return report
