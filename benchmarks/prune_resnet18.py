"""C++ latency of ResNet-18 (ImageNet shape, random weights): dense vs channel-pruned vs masked.

    python benchmarks/prune_resnet18.py --threads 2 1 --out docs/prune_benchmark

Three artifacts of torchvision's resnet18 (3x224x224 inputs, 1000 classes, random weights: the
speed of a forward pass does not depend on what the weights learned):
  dense     the model as built
  channels  50 % of the channels removed by torchbridge.prune_channels (torch-pruning, L1)
  masked    50 % of every conv/linear weight zeroed by torchbridge.prune (l1_unstructured,
            permanent), tensors still dense
Each is exported with torchbridge.export and checked with torchbridge.verify; then the C++ runtime
(the bindings, the same LibTorch torchbridge-run uses) times the three interleaved in one process,
at batch 1 and 32, so machine noise hits all of them alike. Ratios are dense p50 / variant p50.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import torchbridge as tb
from torchbridge.pipeline import artifact_sizes
from torchbridge.prune import parameter_count, prune, prune_channels, sparsity_report
from torchbridge.timing import as_dicts, runtime_latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/prune_benchmark", help="writes OUT.md and OUT.json")
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="one timed run per thread count")
    parser.add_argument("--runs-batch1", type=int, default=60)
    parser.add_argument("--runs-batch32", type=int, default=8)
    parser.add_argument("--workdir", default="runs/prune_benchmark", help="where the artifacts are written")
    args = parser.parse_args()

    import torchvision

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads[0])
    torch.manual_seed(0)
    dense = torchvision.models.resnet18(weights=None).eval()
    example = torch.rand(1, 3, 224, 224)

    channels = prune_channels(dense, (example,), amount=args.amount).model
    masked = copy.deepcopy(dense)
    prune(masked, "l1_unstructured", amount=args.amount)
    models = {"dense": dense, "channels": channels, "masked": masked}

    workdir = Path(args.workdir)
    variants = {}
    for name, model in models.items():
        artifact = tb.export(model, (example,), workdir / f"resnet18_{name}.pt")
        parity = tb.verify(model, artifact.path, threads=args.threads[0], fresh=1)
        report = sparsity_report(model)
        variants[name] = {
            "artifact": str(artifact.path),
            "parameters": parameter_count(model),
            "nonzero_parameters": report.nonzero_parameters,
            "sparsity": report.sparsity,
            **artifact_sizes(artifact.path),
            "parity": parity.passed,
            "max_abs_error_vs_eager": parity.worst("eager", "cpp")[0],
        }
        print(f"{name}: exported, parity {'passed' if parity.passed else 'FAILED'}", flush=True)

    artifacts = {name: Path(row["artifact"]) for name, row in variants.items()}
    timings = {}
    for threads in args.threads:
        latencies = runtime_latencies(artifacts, batch_sizes=(1,), threads=threads, runs=args.runs_batch1)
        latencies += runtime_latencies(artifacts, batch_sizes=(32,), threads=threads, runs=args.runs_batch32, warmup=1)
        p50 = {(r.path, r.batch): r.p50_ms for r in latencies}
        timings[str(threads)] = {
            "load_average_1min_after": os.getloadavg()[0],
            "speedup": {
                name: {str(batch): p50[("dense", batch)] / p50[(name, batch)] for batch in (1, 32)} for name in variants
            },
            "latency": as_dicts(latencies),
        }
        print(f"{threads} thread(s): timed", flush=True)

    result = {
        "command": " ".join(["python benchmarks/prune_resnet18.py", *sys.argv[1:]]),
        "model": "torchvision resnet18, random weights, input 3x224x224, 1000 classes",
        "amount": args.amount,
        "runs": {"batch1": args.runs_batch1, "batch32": args.runs_batch32},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            # Other work on a shared machine stalls the threads of a parallel region: read ratios.
            "load_average_1min_start": load_before,
        },
        "date": datetime.date.today().isoformat(),
        "seconds": round(time.perf_counter() - started, 1),
        "variants": variants,
        "threads": timings,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        "# Pruning benchmark: ResNet-18 in the C++ runtime",
        "",
        f"`{result['command']}`, {result['date']}, {result['seconds']:.0f} s: {result['model']}; "
        f"amount {result['amount']:.0%}; {machine['processor']} ({machine['cpus']} CPUs), {machine['platform']}, "
        f"torch {machine['torch']}; 1-minute load average {machine['load_average_1min_start']:.1f} at the start.",
        "",
        "| variant | parameters | nonzero | weight sparsity | artifact | gzip | parity |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in result["variants"].items():
        lines.append(
            f"| {name} | {row['parameters']:,} | {row['nonzero_parameters']:,} | {row['sparsity']:.1%} "
            f"| {row['bytes'] / 2**20:.1f} MiB | {row['gzip_bytes'] / 2**20:.1f} MiB "
            f"| {'passed' if row['parity'] else 'FAILED'} |"
        )
    for threads, timing in result["threads"].items():
        p50 = {(r["path"], r["batch"]): r for r in timing["latency"]}
        lines += [
            "",
            f"C++ runtime (torchbridge.Runtime), {threads} thread(s), the three artifacts interleaved in one "
            f"process; p50 (p90) of {result['runs']['batch1']} runs at batch 1 and {result['runs']['batch32']} at "
            f"batch 32; load average {timing['load_average_1min_after']:.1f} after.",
            "",
            "| variant | batch 1 p50 (p90) | speedup | batch 32 p50 (p90) | speedup |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in result["variants"]:
            one, many = p50[(name, 1)], p50[(name, 32)]
            lines.append(
                f"| {name} | {one['p50_ms']:.1f} ms ({one['p90_ms']:.0f}) | {timing['speedup'][name]['1']:.2f}x "
                f"| {many['p50_ms']:.0f} ms ({many['p90_ms']:.0f}) | {timing['speedup'][name]['32']:.2f}x |"
            )
    lines += [
        "",
        "speedup = dense p50 / variant p50, measured in the same run. `channels`: 50 % of the channels "
        "removed physically (torch-pruning's dependency graph keeps residual additions and BatchNorms "
        "consistent; the classifier keeps its 1000 outputs). `masked`: 50 % of every conv/linear weight "
        "set to zero, shapes unchanged, so dense kernels do the same work. A p90 far above the p50 marks "
        "runs slowed by other work on the machine.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
