"""Timing primitives: interleaved rounds of several callables (time_interleaved), the C++ runtime's
latency over artifacts (runtime_latencies, compare_artifacts), torchbridge-run's own timing
(cli_bench), the pipeline's quick comparison (quick_bench), and their tables. Each path is timed in
rounds that interleave the paths, after warm-up, so a noisy neighbour slows all of them alike; the
medians (p50) and their ratios are the figures to compare."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from torchbridge.errors import TorchbridgeError
from torchbridge.mirror import load_in_python
from torchbridge.runtime import Runtime, cli_path, resolve_threads


@dataclass
class Latency:
    path: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput_per_s: float


def _percentile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(path: str, batch: int, samples_ms: list[float]) -> Latency:
    ordered = sorted(samples_ms)
    mean = statistics.fmean(ordered)
    return Latency(
        path, batch, len(ordered), _percentile(ordered, 0.5), _percentile(ordered, 0.9), mean, batch * 1000.0 / mean
    )


#: Calls per turn when ranking variants or artifacts of one model (export's timing, format="auto"):
#: the first call of a turn is not recorded. It brings that variant's weights back into the caches
#: the others evicted, as they stay when one of them serves: with one call per turn, a model whose
#: weights fill the caches is timed cold every time, which evens out variants that differ in how
#: fast they read warm weights, and the ranking follows noise.
RANKING_TURN = 3
#: A ranking turn's untimed calls last at least this long, and its timed calls about as long: after
#: the other variants ran, a small model's first calls run several times slower on a shared machine
#: (its weights out of the caches) and rank variants by how they recover, not by how they serve.
RANKING_WARM_S = 0.01


def ranking_turn(call_ms: float) -> int:
    """Calls per turn (time_interleaved's block) when ranking variants whose call takes about
    `call_ms`: RANKING_TURN, or more for a call short enough that RANKING_TURN - 1 timed ones take
    under RANKING_WARM_S."""
    return 1 + max(RANKING_TURN - 1, math.ceil(RANKING_WARM_S * 1000.0 / max(call_ms, 1e-3)))


def time_ranking(calls: dict[str, Callable[[], object]], runs: int, call_ms: float) -> dict[str, list[float]]:
    """time_interleaved for ranking variants of one model: at least `runs` timed calls each (and
    at least three turns), in turns of ranking_turn(call_ms) calls warmed for RANKING_WARM_S."""
    block = ranking_turn(call_ms)
    return time_interleaved(calls, runs=max(runs, 3 * (block - 1)), warmup=0, block=block, warm_s=RANKING_WARM_S)


def time_interleaved(
    paths: dict[str, Callable[[], object]], runs: int, warmup: int, block: int = 1, warm_s: float = 0.0
) -> dict[str, list[float]]:
    """Run every path `warmup` times, then round-robin turns until each has `runs` timed calls; ms
    per call. A turn is one call (block=1), or `block` calls in a row of which the first is not
    recorded: thread pools keep spinning for a while after a call (OpenMP's briefly), and a
    neighbour's spinning threads would otherwise slow the next path's call. warm_s: a turn's untimed
    calls go on until this long has passed, for what takes longer than a call to settle after the
    other paths ran (onnxruntime's threads spin for tens of milliseconds; on a shared machine the
    caches take several calls of a small model to hold its weights again)."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in paths}
    timed = block - 1 if block > 1 else 1
    for _ in range(-(-runs // timed)):
        for name, fn in paths.items():
            began = time.perf_counter()
            if block > 1 or warm_s > 0:
                fn()
                while len(paths) > 1 and time.perf_counter() - began < warm_s:
                    fn()
            for _ in range(timed):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: values[:runs] for name, values in samples.items()}


def cli_bench(artifact: Path, batch: int, runs: int, warmup: int, threads: int) -> dict:
    """`torchbridge-run --bench --json` in its own process (random inputs from the manifest)."""
    command = [str(cli_path()), str(artifact), "--bench", str(runs), "--warmup", str(warmup)]
    command += ["--batch", str(batch), "--threads", str(threads), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise TorchbridgeError(f"torchbridge-run --bench failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)


def cli_latency(result: dict, batch: int) -> Latency:
    """The `cli` row from torchbridge-run --bench --json output."""
    bench = result["bench"]
    return Latency(
        "cli", batch, bench["runs"], bench["p50_ms"], bench["p90_ms"], bench["mean_ms"], bench["throughput_per_s"]
    )


def quick_bench(
    model: nn.Module | None,
    artifact: str | Path,
    batch_sizes=(1, 32),
    threads: int | None = None,
    runs: int = 50,
    warmup: int = 10,
) -> list[Latency]:
    """p50/p90 latency of eager PyTorch, the artifact loaded by torch in Python (TorchScript for a
    .pt, AOTInductor for a .pt2), the C++ runtime through the bindings (interleaved in this
    process) and the torchbridge-run process, per batch size."""
    threads = resolve_threads(threads)
    artifact = Path(artifact)
    torch.set_num_threads(threads)
    runtime = Runtime(artifact, threads=threads)
    python_path, in_python = load_in_python(artifact)
    results: list[Latency] = []
    for batch in batch_sizes:
        inputs = runtime.example_inputs(dynamic_size=batch, seed=0)
        paths: dict[str, Callable[[], object]] = {}
        if model is not None:
            model.eval()
            paths["eager"] = lambda inputs=inputs: model(*inputs)
        paths[python_path] = lambda inputs=inputs: in_python(*inputs)
        paths["cpp"] = lambda inputs=inputs: runtime.forward(*inputs)
        with torch.inference_mode():
            samples = time_interleaved(paths, runs, warmup)
        results += [summarize(name, batch, values) for name, values in samples.items()]
        results.append(cli_latency(cli_bench(artifact, batch, runs, warmup, threads), batch))
    return results


@dataclass
class ArtifactTiming:
    """One artifact in compare_artifacts: its file, format, size and C++ load time."""

    label: str
    path: str
    format: str
    bytes: int
    load_ms: float


def compare_artifacts(
    artifacts: dict[str, str | Path],
    batch_sizes=(1, 32),
    threads: int | None = None,
    runs: int = 100,
    warmup: int = 10,
) -> tuple[list[ArtifactTiming], list[Latency]]:
    """Latency of several artifacts (e.g. model.pt and model.pt2) through the C++ runtime, the
    calls interleaved in one process so that every artifact sees the same machine load.

    artifacts: label -> path; every artifact must take the same inputs (random, from the first
    one's manifest). Returns each artifact's load time and size, and p50/p90 per batch size.
    """
    threads = resolve_threads(threads)
    if not artifacts:
        raise TorchbridgeError("compare_artifacts needs at least one artifact")
    torch.set_num_threads(threads)
    runtimes: dict[str, Runtime] = {}
    timings: list[ArtifactTiming] = []
    for label, path in artifacts.items():
        start = time.perf_counter()
        runtimes[label] = Runtime(path, threads=threads)
        load_ms = (time.perf_counter() - start) * 1000.0
        timings.append(ArtifactTiming(label, str(path), runtimes[label].format, Path(path).stat().st_size, load_ms))
    first = next(iter(runtimes.values()))
    results: list[Latency] = []
    for batch in batch_sizes:
        inputs = first.example_inputs(dynamic_size=batch, seed=0)
        paths = {label: (lambda rt=rt, inputs=inputs: rt.forward(*inputs)) for label, rt in runtimes.items()}
        samples = time_interleaved(paths, runs, warmup)
        results += [summarize(label, batch, values) for label, values in samples.items()]
    return timings, results


def ratio_table(results: list[Latency], baseline: str) -> str:
    """p50 of every path and its ratio to `baseline` at the same batch size (< 1: faster)."""
    base = {r.batch: r.p50_ms for r in results if r.path == baseline}
    width = max([len("path")] + [len(r.path) for r in results])
    header = f"vs {baseline}"
    lines = [f"{'path':<{width}} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'samples/s':>11}  {header}"]
    for r in results:
        ratio = r.p50_ms / base[r.batch] if base.get(r.batch) else float("nan")
        lines.append(
            f"{r.path:<{width}} {r.batch:>5} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} {r.throughput_per_s:>11.1f}  "
            f"{ratio:>{len(header)}.2f}"
        )
    return "\n".join(lines)


def runtime_latencies(
    artifacts: dict[str, str | Path], batch_sizes=(1, 32), threads: int | None = None, runs: int = 50, warmup: int = 10
) -> list[Latency]:
    """p50/p90 latency of several artifacts (e.g. fp32 and int8) in the C++ runtime through the
    bindings, interleaved in this process per batch size (compare_artifacts without the load figures)."""
    threads = resolve_threads(threads)
    return compare_artifacts(artifacts, batch_sizes=batch_sizes, threads=threads, runs=runs, warmup=warmup)[1]


def speedups(results: list[Latency], baseline: str, candidate: str) -> dict[int, float]:
    """Per batch size, baseline p50 / candidate p50 (above 1: the candidate is faster)."""
    p50 = {(r.path, r.batch): r.p50_ms for r in results}
    batches = [b for (path, b) in p50 if path == candidate and (baseline, b) in p50]
    return {b: p50[(baseline, b)] / p50[(candidate, b)] for b in batches}


def latency_table(results: list[Latency]) -> str:
    width = max([12, *(len(r.path) for r in results)])
    lines = [f"{'path':<{width}} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'samples/s':>11}"]
    for r in results:
        lines.append(f"{r.path:<{width}} {r.batch:>5} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} {r.throughput_per_s:>11.1f}")
    return "\n".join(lines)


def as_dicts(results: list[Latency]) -> list[dict]:
    return [asdict(r) for r in results]
