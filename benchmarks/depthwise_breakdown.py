"""Where the time goes in a depthwise-convolution CNN on the CPU: the C++ runtime's variant (run
in Python through RuntimeMirror, the same LibTorch passes) against onnxruntime, by kind of
operation, from each library's own profiler.

    python benchmarks/depthwise_breakdown.py                              # efficientnet_b0, batch 32, 1 thread
    python benchmarks/depthwise_breakdown.py --model mobilenet_v3_large --batch 1 --threads 2

Random-weight torchvision model (seed 0), 3x224x224, exported with tb.export's defaults (the
variant order measured at export). Convolutions are split by kind (depthwise: groups == in
channels; pointwise: 1x1; other), so that the two libraries' kernels compare one kind to one kind.
Prints a table of ms per forward (median over --runs profiled forwards) and writes it as JSON
beside --out when given.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torchvision

import torchbridge as tb
from torchbridge.bench import machine_info, onnx_export, onnx_session
from torchbridge.mirror import load_in_python


def conv_kinds(model: torch.nn.Module) -> list[str]:
    """Each Conv2d of the model in forward order: depthwise, pointwise or other."""
    kinds = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            if module.groups > 1 and module.groups == module.in_channels:
                kinds.append("conv depthwise")
            elif module.kernel_size == (1, 1):
                kinds.append("conv pointwise")
            else:
                kinds.append("conv other")
    return kinds


def torch_breakdown(fn, inputs, runs: int, kinds: list[str]) -> dict[str, float]:
    """ms per forward by kind, from torch.profiler's self CPU time of each aten op call."""
    per_run = []
    for _ in range(runs):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn(*inputs)
        totals: dict[str, float] = collections.defaultdict(float)
        conv_index = 0
        events = sorted(prof.events(), key=lambda e: e.time_range.start)
        for event in events:
            if event.cpu_parent is not None and not event.cpu_parent.name.startswith("forward"):
                continue  # counted in its top-level op
            name = event.name
            ours = name in ("torchbridge::pointwise_conv", "torchbridge::depthwise_conv")
            if (name.startswith("aten::") and "conv" in name) or ours:
                kind = kinds[conv_index % len(kinds)] if kinds else "conv"
                conv_index += 1
            elif name.startswith("aten::"):
                kind = name[len("aten::"):].rstrip("_")
            elif name.startswith("forward") or name.startswith("[") or name.startswith("<"):
                continue
            else:
                # oneDNN Graph's fused partitions (LlgaPartition_N: convolutions with what follows them)
                kind = "oneDNN Graph partitions" if name.startswith("LlgaPartition") else name
            totals[kind] += event.cpu_time_total / 1000.0
        per_run.append(totals)
    keys = set().union(*per_run)
    return {k: statistics.median(r.get(k, 0.0) for r in per_run) for k in keys}


def ort_breakdown(path: Path, inputs, threads: int, runs: int, kinds: list[str], scratch: Path) -> dict[str, float]:
    session = onnx_session(path, threads, profile_prefix=str(scratch / "ort"))
    feed = {session.get_inputs()[0].name: inputs[0].numpy()}
    for _ in range(runs + 2):
        session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run: list[dict[str, float]] = []
    current: dict[str, float] = collections.defaultdict(float)
    conv_index = 0
    for event in nodes:
        op = event["args"].get("op_name", "?")
        if op in ("Conv", "FusedConv"):
            if conv_index and conv_index % len(kinds) == 0:
                per_run.append(current)
                current = collections.defaultdict(float)
            kind = kinds[conv_index % len(kinds)]
            conv_index += 1
        else:
            kind = op
        current[kind] += event["dur"] / 1000.0
    per_run.append(current)
    per_run = per_run[-runs:]
    keys = set().union(*per_run)
    return {k: statistics.median(r.get(k, 0.0) for r in per_run) for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval()
    kinds = conv_kinds(model)
    x = torch.randn(args.batch, 3, 224, 224)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        artifact = tb.export(model, (x[:2],), scratch / "model.pt")
        runtime = tb.Runtime(artifact.path, threads=args.threads)
        runtime(x)
        variant = runtime.variant_at(x)
        _, mirror = load_in_python(artifact.path, runtime.optimized_from_batch, runtime=runtime)
        with torch.inference_mode():
            mirror(x)
            ours = torch_breakdown(mirror, (x,), args.runs, kinds)
        onnx_path = scratch / "model.onnx"
        onnx_export(model, (x[:2],), [[0]], onnx_path)
        theirs = ort_breakdown(onnx_path, (x,), args.threads, args.runs, kinds, scratch)
    rows = sorted(set(ours) | set(theirs), key=lambda k: -(ours.get(k, 0) + theirs.get(k, 0)))
    info = machine_info(args.threads)
    cpu = info.get("cpu", "")
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s), {cpu}; C++ runtime variant: {variant}")
    print(f"{'operation':28s} {'C++ variant ms':>15s} {'onnxruntime ms':>15s}")
    for key in rows:
        print(f"{key:28s} {ours.get(key, 0):15.2f} {theirs.get(key, 0):15.2f}")
    print(f"{'total (kernels)':28s} {sum(ours.values()):15.2f} {sum(theirs.values()):15.2f}")
    if args.out:
        table = {"args": vars(args), "variant": variant, "cpu": info, "torchbridge": ours, "onnxruntime": theirs}
        args.out.write_text(json.dumps(table, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
