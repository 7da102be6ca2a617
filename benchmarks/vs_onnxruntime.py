"""Where the time goes in ResNet-18 on the CPU: the C++ runtime (torchbridge-run, oneDNN Graph
fusion) against onnxruntime (MLAS), layer by layer, from each library's own timers.

    python benchmarks/vs_onnxruntime.py                      # 1 and 2 threads, batch 1 (under a minute)
    python benchmarks/vs_onnxruntime.py --threads 2 --runs 50

Writes docs/vs_onnxruntime.md and .json. Random-weight torchvision ResNet-18 (seed 0), 3x224x224.
- torchbridge-run: p50 of `--bench` (a run of its own), then a second run under ONEDNN_VERBOSE=1,
  which prints every oneDNN Graph partition execute and every primitive inside it with its time:
  median per position over the last forwards.
- onnxruntime: p50 of InferenceSession.run (a session of its own), then a session with
  enable_profiling, whose per-node kernel times give the same breakdown.
The 20 convolutions run in the same order in both, so they are compared one to one; the time a
side spends beyond its kernels is the TorchScript interpreter, LibTorch's oneDNN Graph bridge and
the aten ops left between partitions (onnxruntime: its executor).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

import torchbridge as tb
from torchbridge._warnings import expected_deprecations
from torchbridge.bench import machine_info, onnx_export, onnx_session
from torchbridge.runtime import cli_path
from torchbridge.timing import cli_bench, time_interleaved

warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
OUT = Path(__file__).resolve().parent.parent / "docs"


def runtime_side(artifact: Path, threads: int, runs: int) -> dict:
    """torchbridge-run's p50, then its kernels under ONEDNN_VERBOSE (median per position)."""
    p50 = cli_bench(artifact, 1, runs, 10, threads)["bench"]["p50_ms"]
    command = [str(cli_path()), str(artifact), "--bench", str(runs), "--warmup", "10", "--threads", str(threads)]
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    verbose = subprocess.run([*command, "--json"], capture_output=True, text=True, check=True, env=env)
    lines = verbose.stdout.splitlines()
    traced_p50 = json.loads("\n".join(x for x in lines if not x.startswith("onednn_verbose")))["bench"]["p50_ms"]
    execs = [line.split(",") for line in lines if line.startswith("onednn_verbose,v1,") and ",exec," in line]
    # A forward ends with the partition holding the classifier (aten::linear).
    ends = [i for i, f in enumerate(execs) if f[2] == "graph" and "aten::linear" in f[7]]
    forwards = [execs[a + 1 : b + 1] for a, b in zip(ends[-runs - 1 : -1], ends[-runs:])]
    if not forwards or len({len(f) for f in forwards}) != 1:
        raise SystemExit("could not split ONEDNN_VERBOSE output into forwards of equal length")
    steps = []
    for j, first in enumerate(forwards[0]):
        graph = first[2] == "graph"
        steps.append(
            {
                "level": "partition" if graph else "primitive",
                "kind": first[6] if graph else first[5],
                "what": first[7] if graph else next((x for x in first if x.startswith("mb")), first[6]),
                "ms": statistics.median(float(f[j][-1]) for f in forwards),
            }
        )
    return {"p50_ms": p50, "traced_p50_ms": traced_p50, "steps": steps}


def onnxruntime_side(onnx_path: Path, x: torch.Tensor, threads: int, runs: int, scratch: Path) -> dict:
    plain = onnx_session(onnx_path, threads)
    feed = {plain.get_inputs()[0].name: x.numpy()}
    times = time_interleaved({"onnxruntime": lambda: plain.run(None, feed)}, runs, warmup=10)["onnxruntime"]
    profiled = onnx_session(onnx_path, threads, profile_prefix=str(scratch / "ort_profile"))
    for _ in range(10 + runs):
        profiled.run(None, feed)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    traced = [event["dur"] / 1e3 for event in events if event.get("name") == "model_run"][-runs:]
    per_node: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[(event["name"][: -len("_kernel_time")], event["args"].get("op_name", "?"))].append(event["dur"])
    steps = [{"kind": op, "what": name, "ms": statistics.median(d[-runs:]) / 1e3} for (name, op), d in per_node.items()]
    return {"p50_ms": statistics.median(times), "traced_p50_ms": statistics.median(traced), "steps": steps}


def compare(threads: int, runs: int, artifact: Path, onnx_path: Path, x: torch.Tensor, scratch: Path) -> dict:
    ours = runtime_side(artifact, threads, runs)
    peer = onnxruntime_side(onnx_path, x, threads, runs, scratch)
    our_convs = [s for s in ours["steps"] if s["level"] == "primitive" and s["kind"] == "convolution"]
    peer_convs = [s for s in peer["steps"] if s["kind"] == "Conv"]
    partitions = [s for s in ours["steps"] if s["level"] == "partition"]
    primitives = [s for s in ours["steps"] if s["level"] == "primitive"]
    summary = {
        "threads": threads,
        "runtime_p50_ms": ours["p50_ms"],
        "onnxruntime_p50_ms": peer["p50_ms"],
        "ratio": ours["p50_ms"] / peer["p50_ms"],
        "runtime_traced_p50_ms": ours["traced_p50_ms"],
        "onnxruntime_traced_p50_ms": peer["traced_p50_ms"],
        "runtime_partitions_ms": sum(s["ms"] for s in partitions),
        "runtime_primitives_ms": sum(s["ms"] for s in primitives),
        "onnxruntime_nodes_ms": sum(s["ms"] for s in peer["steps"]),
        "runtime_convolutions_ms": sum(s["ms"] for s in our_convs),
        "onnxruntime_convolutions_ms": sum(s["ms"] for s in peer_convs),
        "partitions": len(partitions),
        "convolutions": [
            {
                "shape": ours_conv["what"].split("_iw")[0],
                "runtime_ms": ours_conv["ms"],
                "onnxruntime_ms": peer_conv["ms"],
            }
            for ours_conv, peer_conv in zip(our_convs, peer_convs)
        ]
        if len(our_convs) == len(peer_convs)
        else [],
        "runtime_steps": ours["steps"],
        "onnxruntime_steps": peer["steps"],
    }
    return summary


def markdown(results: list[dict], meta: dict) -> str:
    lines = [
        "# ResNet-18 on the CPU: the C++ runtime and onnxruntime, layer by layer",
        "",
        f"Measured on {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, "
        f"{meta['date']}; batch 1, {meta['runs']} timed forwards per side. "
        "Regenerate: `python benchmarks/vs_onnxruntime.py`.",
        "",
        "| threads | torchbridge-run p50 ms | onnxruntime p50 ms | ratio "
        "| convolutions ms: runtime / onnxruntime (ratio) | all kernels ms: runtime primitives / onnxruntime nodes "
        "| runtime partitions ms | traced p50 ms: runtime / onnxruntime |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        conv_ratio = r["runtime_convolutions_ms"] / r["onnxruntime_convolutions_ms"]
        lines.append(
            f"| {r['threads']} | {r['runtime_p50_ms']:.2f} | {r['onnxruntime_p50_ms']:.2f} | {r['ratio']:.3f} "
            f"| {r['runtime_convolutions_ms']:.2f} / {r['onnxruntime_convolutions_ms']:.2f} ({conv_ratio:.3f}) "
            f"| {r['runtime_primitives_ms']:.2f} / {r['onnxruntime_nodes_ms']:.2f} | {r['runtime_partitions_ms']:.2f} "
            f"| {r['runtime_traced_p50_ms']:.2f} / {r['onnxruntime_traced_p50_ms']:.2f} |"
        )
    lines += [
        "",
        "p50 and ratio: each side timed on its own, tracer off. Kernel times come from a second run with each "
        "library's tracer on (ONEDNN_VERBOSE=1; onnxruntime's enable_profiling), median per kernel over the "
        "forwards: for the runtime the oneDNN primitives (convolutions, pooling, matmul, reorders) and the oneDNN "
        "Graph partition executes around them (a partition's time includes the verbose printing of its "
        "primitives), for onnxruntime its nodes. The traced p50 is that run's own p50: the tracers slow both "
        "sides a little.",
        "",
    ]
    for r in results:
        if not r["convolutions"]:
            continue
        lines += [
            f"## The 20 convolutions, {r['threads']} thread(s)",
            "",
            f"Sum: runtime {r['runtime_convolutions_ms']:.2f} ms, "
            f"onnxruntime {r['onnxruntime_convolutions_ms']:.2f} ms.",
            "",
            "| # | oneDNN problem | runtime ms | onnxruntime ms | runtime / onnxruntime |",
            "|---:|---|---:|---:|---:|",
        ]
        for i, conv in enumerate(r["convolutions"]):
            lines.append(
                f"| {i} | `{conv['shape']}` | {conv['runtime_ms']:.3f} | {conv['onnxruntime_ms']:.3f} "
                f"| {conv['runtime_ms'] / conv['onnxruntime_ms']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import onnxruntime

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    results = []
    with tempfile.TemporaryDirectory(prefix="torchbridge-vs-ort-") as scratch_name:
        scratch = Path(scratch_name)
        artifact, onnx_path = scratch / "resnet18.pt", scratch / "resnet18.onnx"
        print("exporting ResNet-18 (TorchScript artifact and ONNX)", file=sys.stderr)
        with expected_deprecations(), torch.no_grad():
            tb.export(model, (x,), artifact, method="trace")
            onnx_export(model, (x,), [[0]], onnx_path)
        for threads in args.threads:
            print(f"measuring at {threads} thread(s)", file=sys.stderr)
            results.append(compare(threads, args.runs, artifact, onnx_path, x, scratch))
    machine = machine_info(max(args.threads))
    meta = {
        "cpu": machine["cpu"],
        "cores": machine["cores"],
        "torch": machine["torch"],
        "onnxruntime": onnxruntime.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": args.runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_onnxruntime.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    text = markdown(results, meta)
    (args.out / "vs_onnxruntime.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
