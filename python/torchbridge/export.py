"""Export a model to an artifact with its manifest and golden example inside (the format:
artifact.py). The front door for both formats: `export` writes TorchScript here and hands
format="aoti" to aoti.export_aoti; both share prepare.py."""

from __future__ import annotations

import functools
import io
import math
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbridge._warnings import expected_deprecations
from torchbridge.aoti import export_aoti
from torchbridge.artifact import Artifact, seal, write_in_place
from torchbridge.compare import compare_or_raise, first_line, fresh_inputs, max_errors, run_module
from torchbridge.errors import ExportError, TorchbridgeError
from torchbridge.mirror import RuntimeMirror, tried
from torchbridge.prepare import build_manifest, extra_entries, prepare, tensor_specs

METHODS = ("auto", "script", "trace")
FORMATS = ("torchscript", "aoti", "auto")


def _is_quantized(model: nn.Module) -> bool:
    packages = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")  # the latter: fused int8 modules
    return any(type(m).__module__.startswith(packages) for m in model.modules())


def _trace_checked(model, example, dynamic_dims, rtol, atol, checks: int):
    """Trace, then compare traced with eager on fresh inputs: tracing records one path through
    data-dependent control flow and bakes shapes in, and both show up only on other inputs."""
    traced = torch.jit.trace(model, example, check_trace=False)
    hint = "Tracing recorded one path through data-dependent control flow; export with method='script'."
    for seed in range(1, checks + 1):
        has_dynamic = any(dims for dims in dynamic_dims)
        size = (example[0].shape[dynamic_dims[0][0]] + seed) if has_dynamic and dynamic_dims[0] else None
        inputs = fresh_inputs(example, dynamic_dims, seed, size)
        reference = run_module(model, inputs)
        try:
            candidate = run_module(traced, inputs)
        except Exception as error:
            raise ExportError(
                f"traced module fails on fresh inputs of shape {[tuple(t.shape) for t in inputs]} "
                f"(shapes baked in by tracing?): {str(error).splitlines()[0]}. Export with method='script', "
                f"or declare dynamic_dims=() if the shape is fixed."
            ) from error
        compare_or_raise(f"trace check #{seed}", candidate, reference, rtol, atol, hint)
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
            compare_or_raise(name, run_module(reloaded, golden), eager_golden, rtol, atol, "")
            notes.append(f"optimized with {name}")
            return reloaded, True
        except Exception as error:
            notes.append(f"{name} dropped: {str(error).splitlines()[0]}")
    return module, False


def format_for(path: str | os.PathLike, format: str | None) -> str:
    """The format asked for, or the one the file name implies (.pt2 -> aoti, else torchscript)."""
    if format is None:
        return "aoti" if Path(path).suffix == ".pt2" else "torchscript"
    if format not in FORMATS:
        raise TorchbridgeError(f"format must be one of {', '.join(FORMATS)}, got '{format}'")
    return format


def export(
    model: nn.Module,
    example_inputs,
    path: str | os.PathLike,
    method: str = "auto",
    dynamic_dims: Sequence[Sequence[int]] | None = None,
    input_names: Sequence[str] | None = None,
    optimize: bool = False,
    rtol: float | None = None,
    atol: float | None = None,
    trace_checks: int = 4,
    quantized_engine: str | None = None,
    format: str | None = None,
    check_runtime: bool = True,
    tune: bool = True,
    **aoti_options: Any,
) -> Artifact:
    """Export `model` to an artifact at `path` and return it.

    format: "torchscript" or "aoti" (an AOTInductor .pt2 package, see torchbridge.aoti.export_aoti,
      which takes the `aoti_options`: dynamic_range, isa, inductor_configs, checks); default:
      "aoti" when `path` ends in .pt2, else "torchscript". "auto" exports both, times both in the C++
      runtime on this CPU and keeps the faster (torchbridge.auto; manifest["selection"] holds the
      table); the compile costs what a .pt2 export costs.
    method: "script" compiles the source (keeps control flow), "trace" records one run (checked
      on fresh inputs against eager, refused when they differ), "auto" scripts and falls back to
      a checked trace when scripting fails. The aoti format always uses torch.export.
    dynamic_dims: per input, the dimensions of any size; default: dim 0 (batch) of every input.
    optimize: freeze + torch.jit.optimize_for_inference, kept only if outputs stay within tolerance.
    rtol, atol: the artifact-vs-eager tolerance stored in the manifest; rtol defaults to 1e-5,
      atol to rtol x the largest |output| of the golden example.
    check_runtime: (TorchScript) run the artifact once in torchbridge-run (a process of its own, as a first
      load runs it) before it is moved into place; where a runtime pass crashes LibTorch on this
      model, the manifest turns that pass off (runtime.fuse, runtime.optimize) and says so in its
      notes. Costs about one load of the model in C++.
    tune: (TorchScript) time the C++ runtime's CPU variants of the model (oneDNN Graph, optimize_for_inference,
      channels-last, as loaded) here at batch 1 and 32 and record them in the manifest fastest first
      (runtime.variants, with the table in runtime.measured; runtime.large_batches where batch 32 has
      another fastest, from the batch where they cross): the runtime tries them in that order at each
      input shape, each still checked against the module as loaded there. Costs a few runs of each variant.
    The file is written next to `path` and moved into place only after it loads back, so a
    failed export leaves an existing file untouched.
    """
    if format_for(path, format) == "auto":
        from torchbridge.auto import export_auto

        return export_auto(
            export,
            model,
            example_inputs,
            path,
            aoti_options,
            method=method,
            dynamic_dims=dynamic_dims,
            input_names=input_names,
            optimize=optimize,
            rtol=rtol,
            atol=atol,
            trace_checks=trace_checks,
            quantized_engine=quantized_engine,
            check_runtime=check_runtime,
            tune=tune,
        )
    if format_for(path, format) == "aoti":
        if method != "auto" or optimize or quantized_engine or trace_checks != 4:
            raise TorchbridgeError(
                "method, optimize, quantized_engine and trace_checks apply to TorchScript; the aoti format "
                "uses torch.export and AOTInductor (see torchbridge.aoti.export_aoti for its options)"
            )
        return export_aoti(model, example_inputs, path, dynamic_dims, input_names, rtol, atol, **aoti_options)
    if aoti_options:
        raise TorchbridgeError(
            f"unexpected option(s) for TorchScript: {', '.join(sorted(aoti_options))} (they apply to format='aoti')"
        )
    if method not in METHODS:
        raise TorchbridgeError(f"method must be one of {', '.join(METHODS)}, got '{method}'")
    prepared = prepare(model, example_inputs, dynamic_dims, 1e-5 if rtol is None else rtol, atol)
    model, example, dynamic_dims = prepared.model, prepared.example, prepared.dynamic_dims
    golden, eager_golden, rtol, atol = prepared.golden, prepared.eager_golden, prepared.rtol, prepared.atol
    quantized = _is_quantized(model)
    engine = quantized_engine or (torch.backends.quantized.engine if quantized else None)
    if engine is not None and engine not in torch.backends.quantized.supported_engines:
        raise TorchbridgeError(
            f"quantized_engine '{engine}' is not one of this torch's engines "
            f"({', '.join(torch.backends.quantized.supported_engines)})"
        )

    notes = []
    with expected_deprecations():
        if method in ("auto", "script"):
            try:
                module = torch.jit.script(model)
                used = "script"
                # A scripted module can compile and still not run as eager does (nn.LSTM scripts
                # to overloads without a plain forward, for one).
                compare_or_raise(used, run_module(module, golden), eager_golden, rtol, atol, "")
            except Exception as error:
                if method == "script":
                    if isinstance(error, ExportError):
                        raise
                    raise ExportError(f"torch.jit.script failed: {error}") from error
                notes.append(f"script failed, traced instead: {first_line(error)}")
                module, used = None, "trace"
        else:
            module, used = None, "trace"
        if module is None:
            module = _trace_checked(model, example, dynamic_dims, rtol, atol, trace_checks)
            compare_or_raise(used, run_module(module, golden), eager_golden, rtol, atol, "")

        optimized = False
        if optimize and not quantized:
            module, optimized = _optimized(module, golden, eager_golden, rtol, atol, notes)

        inputs_spec, outputs_spec = tensor_specs(prepared, input_names)
        manifest: dict[str, Any] = {}

        def write(temporary: Path, runtime: dict[str, Any]) -> None:
            nonlocal manifest
            fields = {"optimized": optimized, "quantized_engine": engine, "runtime": runtime}
            manifest = build_manifest(prepared, "torchscript", used, inputs_spec, outputs_spec, notes, **fields)
            unsealed = temporary.parent / "unsealed" / temporary.name
            unsealed.parent.mkdir(exist_ok=True)
            torch.jit.save(module, str(unsealed), _extra_files=extra_entries(manifest, prepared))
            seal(unsealed, temporary)

        def save(temporary: Path) -> None:
            runtime: dict[str, Any] = {"optimize_from_batch": 1}
            write(temporary, runtime)
            if check_runtime and not quantized:
                # Before anything below runs the runtime's passes in this process.
                runtime.update(_runtime_check(temporary, notes))
            # The runtime runs a model that selects by value as loaded: nothing to time for it.
            selecting = "" if quantized else _selects_by_value(temporary)
            if not quantized and runtime.get("optimize", True) and tune and not selecting:
                runtime.update(_measure_variants(module, golden, dynamic_dims, runtime.get("fuse", True), rtol))
                orders = [runtime.get("variants", []), runtime.get("large_batches", {}).get("variants", [])]
                unchecked = [v for v in UNCHECKED_VARIANTS if any(v in tried(order) for order in orders)]
                if check_runtime and unchecked:
                    # The check above ran the built-in order; these variants are run here first.
                    write(temporary, runtime)
                    crash = _crashes_in_runtime(temporary)
                    if crash:
                        for order in orders:
                            order[:] = [v for v in order if v not in unchecked]
                        names = " and ".join(unchecked) + (" variants" if len(unchecked) > 1 else " variant")
                        notes.append(f"torchbridge-run crashed ({crash}) with the {names}: not tried")
            if (
                not quantized
                and runtime.get("optimize", True)
                and not selecting
                and "variants" not in runtime  # else timed above, at batch 1 and a large batch
                and dynamic_dims
                and 0 in dynamic_dims[0]
            ):
                fuse = runtime.get("fuse", True)
                runtime["optimize_from_batch"] = _optimize_from_batch(module, golden, dynamic_dims, fuse)
            write(temporary, runtime)
            torch.jit.load(str(temporary))

        path = Path(path)
        write_in_place(path, save)
    return Artifact(path=path, manifest=manifest)


#: What export retries in torchbridge-run when the runtime's defaults crash it, and what the
#: manifest then records in "runtime" (the C++ runtime and the Python mirror honour it).
RUNTIME_FALLBACKS = (
    ((), {}),
    (("--no-fuse",), {"fuse": False}),
    (("--no-optimize",), {"fuse": False, "optimize": False}),
)
#: Seconds one torchbridge-run check may take (a load compiles every fused shape it warms up).
RUNTIME_CHECK_TIMEOUT_S = 1800


def _runtime_check(path: Path, notes: list[str]) -> dict[str, Any]:
    """Run the artifact once in torchbridge-run, a process of its own, as a user's first load runs
    it (warm-up at the golden batch and batch 1) and check the golden example. A pass
    that crashes LibTorch (a signal: SIGSEGV inside oneDNN Graph, say) cannot be caught and fallen
    back from inside the process as the runtime does with a pass that raises or differs, so the
    crash is found here: the check is repeated with that pass off, and the manifest fields that keep
    it off are returned ({} when the defaults ran). Errors that are not crashes are left to verify."""
    from torchbridge.runtime import cli_path

    try:
        command = [str(cli_path()), str(path), "--selftest"]
    except TorchbridgeError as error:
        notes.append(f"not run in torchbridge-run at export: {error}")
        return {}
    crashed = []
    for flags, fields in RUNTIME_FALLBACKS:
        how = " ".join(flags) or "with the defaults"
        try:
            done = subprocess.run(
                command + list(flags), capture_output=True, text=True, timeout=RUNTIME_CHECK_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            crashed.append(f"torchbridge-run {how}: no answer in {RUNTIME_CHECK_TIMEOUT_S} s, not checked further")
            done = None
        if done is None or done.returncode >= 0:
            if crashed:
                off = ", ".join(f"runtime.{k} {str(v).lower()}" for k, v in fields.items()) or "its defaults"
                notes.append(f"{'; '.join(crashed)}: the runtime runs this model with {off}")
            return fields
        crashed.append(f"torchbridge-run {how} crashed ({_signal_name(done.returncode)})")
    tail = " ".join(done.stderr.strip().splitlines()[-3:])
    raise ExportError(
        f"{path.name}: the C++ runtime cannot run this model: {'; '.join(crashed)}, so LibTorch crashes on the "
        f"module as loaded{': ' + tail if tail else ''}"
    )


def _crashes_in_runtime(path: Path) -> str | None:
    """The signal that killed torchbridge-run --selftest on `path`, or None (it ran, failed
    otherwise, or could not be run: verify reports those)."""
    from torchbridge.runtime import cli_path

    try:
        done = subprocess.run(
            [str(cli_path()), str(path), "--selftest"], capture_output=True, timeout=RUNTIME_CHECK_TIMEOUT_S
        )
    except (TorchbridgeError, subprocess.TimeoutExpired):
        return None
    return _signal_name(done.returncode) if done.returncode < 0 else None


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


#: Models with at most this much in weights get optimize_from_batch measured at export (both
#: modules are in memory meanwhile); larger ones, dominated by convolutions and GEMMs, get 1.
MEASURE_LIMIT_BYTES = 16 << 20
MEASURE_BATCHES = (1, 4, 16, 64)


#: Batch sizes export times the runtime's variants at (a model with a dynamic batch dimension); the
#: second is smaller where one call of the model at that size would take over TUNE_CALL_S seconds.
TUNE_BATCHES = (1, 32)
#: Variants the runtime's built-in order does not run, so export's first run of the artifact in
#: torchbridge-run does not try them: where the measured order tries one, export runs it again.
UNCHECKED_VARIANTS = ("channels_last", "rowwise")
TUNE_CALL_S = 0.5


def _measure_variants(
    module, golden: Sequence[torch.Tensor], dynamic_dims, fuse: bool = True, rtol: float = 1e-5
) -> dict[str, Any]:
    """The C++ runtime's CPU variants of `module` (RuntimeMirror: the same LibTorch passes), each
    checked against the module as loaded and timed here, interleaved, at TUNE_BATCHES (the golden
    batch where the batch is fixed): {"variants": names fastest first by the geometric mean of their
    time relative to the module as loaded, "as_loaded" among them (those after it are never run),
    "measured": the table}. A variant that raises or differs at any size goes after "as_loaded".
    Where the fastest differs between the two batch sizes, the orders split at the batch where the
    two fastest cross (times taken as linear in the batch): "variants" holds batch 1's order and
    "large_batches" {"from": that batch, "variants": the large batch's order}, or, where the module as
    loaded is fastest at batch 1, "variants" the large batch's order and "optimize_from_batch" the
    crossing (the runtime then runs smaller batches as loaded).
    Which is fastest depends on the model and the CPU: channels-last pays on depthwise
    convolutions, oneDNN Graph on convolution chains, neither on small matrix products. {} where the
    module as loaded itself fails at those sizes (the runtime then keeps its own order)."""
    try:
        return _measured_order(module, golden, dynamic_dims, fuse, rtol)
    except Exception:
        return {}


def _selects_by_value(path: Path) -> str:
    """The operators that make the runtime run the artifact at `path` as loaded (its own check)."""
    from torchbridge import _C

    try:
        return _C.selecting_ops(str(path))
    except Exception:
        return ""


def _measured_order(module, golden, dynamic_dims, fuse: bool, rtol: float) -> dict[str, Any]:
    from torchbridge import _C
    from torchbridge.graph_passes import has_rowwise_ops
    from torchbridge.mirror import CPU_VARIANTS
    from torchbridge.timing import time_ranking

    buffer = io.BytesIO()
    torch.jit.save(module, buffer)

    def load():
        buffer.seek(0)
        return torch.jit.load(buffer).eval()

    candidates = [v for v in CPU_VARIANTS if fuse or v != "onednn_graph"]
    if "rowwise" in candidates and not (_C.rowwise_available() and has_rowwise_ops(module)):
        candidates.remove("rowwise")  # it would be freeze alone
    batch_dynamic = bool(dynamic_dims) and 0 in dynamic_dims[0]
    batches = list(TUNE_BATCHES) if batch_dynamic else [int(golden[0].shape[0]) if golden[0].dim() else 1]
    table: dict[str, list[float | None]] = {v: [] for v in ["as_loaded", *candidates]}
    rejected: dict[str, str] = {}
    started = time.perf_counter()
    # In a memory pool, as the runtime runs them: without one, a large batch's time is much of it
    # page faults, and the ranking would follow how each variant allocates.
    with torch.inference_mode(), _C.MemoryPool():
        for index, batch in enumerate(batches):
            if index > 0 and table["as_loaded"][0]:
                # A heavy model is timed at a smaller second batch: one call of the module as loaded
                # about TUNE_CALL_S at most (estimated from batch 1), so export stays bounded.
                batch = batches[index] = max(2, min(batch, int(TUNE_CALL_S * 1000.0 / table["as_loaded"][0])))
            inputs = fresh_inputs(golden, dynamic_dims, seed=0, dynamic_size=batch) if batch_dynamic else tuple(golden)
            mirror = RuntimeMirror(load, fuse=fuse, order=candidates, rtol=rtol)
            expected = run_module(mirror.loaded, inputs)
            runs = {"as_loaded": mirror.loaded}
            for variant in candidates:
                if variant in rejected:
                    continue
                try:
                    made, actual = mirror._make(variant, inputs)
                    bad = len(actual) != len(expected) or any(
                        max_errors(a, e)[1] > mirror.rtol for a, e in zip(actual, expected)
                    )
                except Exception as error:
                    rejected[variant] = f"raised at batch {batch}: {first_line(error)}"
                    continue
                if bad:
                    rejected[variant] = f"differs from the module as loaded at batch {batch}"
                    continue
                runs[variant] = made
            for run in runs.values():  # the profiling executor optimizes on the first calls
                run(*inputs)
            # Interleaved rounds, so that a busy moment slows every variant alike.
            start = time.perf_counter()
            mirror.loaded(*inputs)
            # About 0.1 s of each variant (noise on small models), at least 3 calls; in turns
            # (time_ranking), so that each is timed with its weights in the caches.
            call_ms = max(time.perf_counter() - start, 1e-6) * 1000.0
            rounds = max(3, min(200, int(100.0 / call_ms)))
            calls = {name: functools.partial(run, *inputs) for name, run in runs.items()}
            times = _settle_close(calls, time_ranking(calls, rounds, call_ms))
            for name in table:
                table[name].append(round(statistics.median(times[name]), 4) if name in times else None)
            del mirror, runs
    base = table["as_loaded"]

    def ranked(columns: list[int]) -> list[str]:
        def score(name: str) -> float:
            ratios = [table[name][i] / base[i] for i in columns if table[name][i] and base[i]]
            if name in rejected or len(ratios) != len(columns):
                return float("inf")
            return math.exp(sum(math.log(r) for r in ratios) / len(ratios))

        order = sorted(table, key=lambda name: (score(name), name != "as_loaded"))
        return [name for name in order if score(name) != float("inf")] + sorted(rejected)

    order = ranked(list(range(len(batches))))
    result: dict[str, Any] = {"variants": order}
    if len(batches) == 2 and batches[1] > 1:
        small, large = ranked([0]), ranked([1])
        if small[0] != large[0]:
            crossing = _crossing(table[small[0]], table[large[0]], batches)
            if small[0] == "as_loaded":
                result = {"variants": large, "optimize_from_batch": crossing}
            else:
                result = {"variants": small, "large_batches": {"from": crossing, "variants": large}}
    measured = {
        "batches": list(batches),
        "threads": torch.get_num_threads(),
        "p50_ms": table,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if rejected:
        measured["rejected"] = rejected
    return {**result, "measured": measured}


#: Variants whose median is within this fraction of the fastest's at a batch size are timed again,
#: among themselves: which of them comes first is what the runtime runs, and on a shared machine the
#: first few turns can put a variant 20% slower first.
RANKING_CLOSE = 0.25
#: About this many seconds more of each close variant (at least three turns, time_ranking).
RANKING_SETTLE_S = 0.3


def _settle_close(calls: dict[str, Any], times: dict[str, list[float]]) -> dict[str, list[float]]:
    """`times` (ms per call, by variant) with more samples for the variants whose median is within
    RANKING_CLOSE of the fastest, timed interleaved among themselves; the others are kept as timed."""
    from torchbridge.timing import time_ranking

    medians = {name: statistics.median(values) for name, values in times.items() if values}
    if not medians:
        return times
    best = min(medians.values())
    close = {name: calls[name] for name, median in medians.items() if median <= best * (1 + RANKING_CLOSE)}
    if len(close) < 2:
        return times
    more = time_ranking(close, min(200, int(RANKING_SETTLE_S * 1000.0 / max(best, 1e-3))), best)
    return {name: values + more.get(name, []) for name, values in times.items()}


def _crossing(small: list[float], large: list[float], batches: list[int]) -> int:
    """The batch size from which the variant timed `large` ([ms at batches[0], ms at batches[1]])
    is faster than the one timed `small`, each time taken as linear in the batch size between the
    two measured batches: in [2, batches[1]]."""
    (b0, b1), before, after = batches, small[0] - large[0], small[1] - large[1]
    if after <= before:  # not crossing in between: measurement noise; the large batch decides
        return b1
    point = b0 + (b1 - b0) * (-before) / (after - before)
    return max(2, min(b1, math.ceil(point)))


def _optimize_from_batch(module, golden: Sequence[torch.Tensor], dynamic_dims, fuse: bool = True) -> int:
    """The smallest batch size at which what the C++ runtime runs at load (RuntimeMirror: freeze,
    oneDNN Graph fusion per shape) is faster than the module as exported, timed here in the same
    LibTorch: the runtime runs the optimized module from that batch size up and the other below it.
    1: at every size (also for models too large to measure), 0: at none of MEASURE_BATCHES. Fused
    kernels and oneDNN's layouts cost more than they save on small inputs to a small model."""
    tensors = list(module.parameters()) + list(module.buffers())
    if sum(t.numel() * t.element_size() for t in tensors) > MEASURE_LIMIT_BYTES:
        return 1
    # Both as the runtime has them: loaded back from the archive.
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)

    def load():
        buffer.seek(0)
        return torch.jit.load(buffer).eval()

    from torchbridge import _C

    module = load()
    optimized = RuntimeMirror(load, fuse=fuse)

    def median_ms(fn, inputs, runs=7) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - start)
        return sorted(times)[runs // 2] * 1000.0

    try:
        with torch.inference_mode(), _C.MemoryPool():  # as the runtime runs them (_measured_order)
            for batch in MEASURE_BATCHES:
                inputs = fresh_inputs(golden, dynamic_dims, seed=0, dynamic_size=batch)
                for _ in range(3):  # the profiling executor optimizes on the first calls
                    module(*inputs)
                    optimized(*inputs)
                if median_ms(optimized, inputs) <= median_ms(module, inputs):
                    return batch
    except Exception:  # the runtime finds out too (golden check), and runs the module as loaded
        return 1
    return 0
