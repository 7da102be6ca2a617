"""ResNet-18 on a CUDA GPU: the C++ runtime (CUDA graphs on and off) against eager PyTorch and a
CUDA-graph replay written in Python, fp16 and fp32, at batch 1 and 256.

    python benchmarks/gpu.py                      # writes docs/bench_gpu.{json,md} (about a minute)
    python benchmarks/gpu.py --batches 1 8 --runs 50 --out /tmp/gpu

Random-weight torchvision ResNet-18, 3x224x224, exported once with torchbridge.export (fp32
TorchScript); the runtime converts inputs and weights to fp16 itself (precision="fp16"). Python
paths take their inputs on the GPU in the dtype they run in; the runtime paths take fp32 inputs on
the GPU (the conversion is timed). Each call is followed by torch.cuda.synchronize(); the paths
run interleaved in turns (torchbridge.timing.time_interleaved), p50 in ms. torchbridge-run times
itself in its own process (--bench, inputs on the device) and also reports the figure with the
copies from and to the host.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch
import torchvision

import torchbridge as tb
from torchbridge.runtime import cli_path
from torchbridge.timing import time_interleaved

TARGETS = {1: 0.4, 256: 3.0}  # ms, C++ runtime fp16 (issue 6)


def python_graph(model: torch.nn.Module, x: torch.Tensor):
    """torch.cuda.graphs capture of the eager model, replayed from Python (the reference the C++
    runtime's graphs are measured against)."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_y = model(static_x)

    def replay():
        static_x.copy_(x)
        graph.replay()
        return static_y.clone()

    return replay


def synced(fn):
    def call():
        out = fn()
        torch.cuda.synchronize()
        return out

    return call


def cli(path: Path, batch: int, precision: str, runs: int, graphs: bool) -> dict:
    command = [str(cli_path()), str(path), "--device", "cuda", "--precision", precision, "--batch", str(batch)]
    command += ["--bench", str(runs), "--warmup", "20", "--json"] + ([] if graphs else ["--no-cuda-graphs"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"torchbridge-run failed ({result.returncode}): {result.stderr.strip()}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path("docs/bench_gpu"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    workdir = Path(tempfile.mkdtemp(prefix="tb-gpu-"))
    path = workdir / "resnet18.pt"
    tb.export(model, (torch.randn(2, 3, args.image, args.image),), path)
    half = torchvision.models.resnet18().eval()
    half.load_state_dict(model.state_dict())
    half = half.cuda().half().to(memory_format=torch.channels_last)
    full = model.cuda().to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True  # as the runtime sets it

    rows = []
    for batch in args.batches:
        x32 = torch.randn(batch, 3, args.image, args.image, device="cuda")
        x16 = x32.half().contiguous(memory_format=torch.channels_last)
        x32cl = x32.contiguous(memory_format=torch.channels_last)
        runtimes = {
            (precision, graphs): tb.Runtime(
                path, device="cuda", precision=precision, cuda_graphs=graphs, warmup_batches=[batch]
            )
            for precision in ("fp16", "fp32")
            for graphs in (True, False)
        }

        def eager(m, x):
            def call():
                with torch.inference_mode():
                    return m(x)

            return call

        paths = {
            "eager fp16 (Python, channels-last)": eager(half, x16),
            "CUDA graph replay fp16 (Python)": python_graph(half, x16),
            "C++ runtime fp16, CUDA graphs (default)": lambda rt=runtimes["fp16", True], x=x32: rt(x),
            "C++ runtime fp16, --no-cuda-graphs": lambda rt=runtimes["fp16", False], x=x32: rt(x),
            "eager fp32 (Python, channels-last)": eager(full, x32cl),
            "C++ runtime fp32, CUDA graphs (default)": lambda rt=runtimes["fp32", True], x=x32: rt(x),
            "C++ runtime fp32, --no-cuda-graphs": lambda rt=runtimes["fp32", False], x=x32: rt(x),
        }
        times = time_interleaved({name: synced(fn) for name, fn in paths.items()}, runs=args.runs, warmup=20)
        with torch.inference_mode():
            reference = full(x32cl).float()
            y16 = runtimes["fp16", True](x32)
        scale = reference.abs().max().item()
        agreement = {
            "fp16_max_rel_to_fp32_eager": (y16 - reference).abs().max().item() / scale,
            "fp16_top1_same": float((y16.argmax(1) == reference.argmax(1)).float().mean().item()),
        }
        for name, values in times.items():
            rows.append({"batch": batch, "path": name, "p50_ms": statistics.median(values), "runs": len(values)})
        for precision in ("fp16", "fp32"):
            for graphs in (True, False):
                report = cli(path, batch, precision, args.runs, graphs)
                name = f"torchbridge-run {precision}" + ("" if graphs else " --no-cuda-graphs")
                rows.append(
                    {
                        "batch": batch,
                        "path": name,
                        "p50_ms": report["bench"]["p50_ms"],
                        "runs": report["bench"]["runs"],
                        "host_copies_p50_ms": report["bench"]["host_copies_p50_ms"],
                        "optimization": report["optimization"],
                    }
                )
        rows.append({"batch": batch, "path": "agreement", **agreement})
        for rt in runtimes.values():
            rows.append({"batch": batch, "path": "optimization", "precision": rt.precision, "value": rt.optimization})
        del runtimes
        torch.cuda.empty_cache()

    gpu = torch.cuda.get_device_name()
    meta = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpu": platform.processor() or platform.machine(),
        "image": args.image,
        "runs": args.runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(meta, rows, args.batches))
    print(render(meta, rows, args.batches))


def render(meta: dict, rows: list[dict], batches: list[int]) -> str:
    lines = [
        "# ResNet-18 on the GPU",
        "",
        f"{meta['gpu']}, torch {meta['torch']} (CUDA {meta['cuda']}, cuDNN {meta['cudnn']}); random-weight "
        f"torchvision ResNet-18, 3x{meta['image']}x{meta['image']}, p50 of {meta['runs']} calls per path, "
        "each followed by a device synchronize. Regenerate with `python benchmarks/gpu.py` on a GPU machine.",
        "",
        "| path | " + " | ".join(f"batch {b} p50 ms" for b in batches) + " |",
        "| --- | " + " | ".join("---:" for _ in batches) + " |",
    ]
    timed = [r for r in rows if "p50_ms" in r]
    names = list(dict.fromkeys(r["path"] for r in timed))
    for name in names:
        cells = []
        for b in batches:
            found = [r for r in timed if r["path"] == name and r["batch"] == b]
            cells.append(f"{found[0]['p50_ms']:.3f}" if found else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "torchbridge-run with its inputs on the host and outputs copied back (p50 ms):", ""]
    for r in timed:
        if "host_copies_p50_ms" in r:
            lines.append(f"- {r['path']}, batch {r['batch']}: {r['host_copies_p50_ms']:.3f}")
    lines += ["", "Targets (C++ runtime fp16, CUDA graphs, through the bindings and torchbridge-run):", ""]
    for b in batches:
        if b not in TARGETS:
            continue
        for name in ("C++ runtime fp16, CUDA graphs (default)", "torchbridge-run fp16"):
            found = [r for r in timed if r["path"] == name and r["batch"] == b]
            if found:
                value = found[0]["p50_ms"]
                verdict = "met" if value <= TARGETS[b] else f"MISSED by {value / TARGETS[b] - 1:.0%}"
                lines.append(f"- batch {b}, {name}: {value:.3f} ms (target <= {TARGETS[b]} ms): {verdict}")
    lines += ["", "fp16 against fp32 eager on the same inputs:", ""]
    for r in rows:
        if r["path"] == "agreement":
            lines.append(
                f"- batch {r['batch']}: max |diff| / max |fp32| = {r['fp16_max_rel_to_fp32_eager']:.1e}, "
                f"same top-1 for {r['fp16_top1_same']:.0%}"
            )
    lines += ["", "What the runtime applied at load:", ""]
    seen = set()
    for r in rows:
        if r["path"] == "optimization" and (r["precision"], r["value"]) not in seen:
            seen.add((r["precision"], r["value"]))
            lines.append(f"- {r['precision']}: {r['value']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
