"""C++ latency of fp32 and int8 artifacts, measured in one run: the digits CNN (static int8),
ResNet-18 at 3x224x224 (static int8, torchvision's quantizable variant) and an LSTM (dynamic int8),
at batch 1 and 32 with 2 threads.

    python benchmarks/quantize_bench.py [--out docs/quantization-benchmark.md] [--scale 1.0]

Each model is exported three ways: fp32 as exported by default, fp32 with optimize=True (frozen,
optimize_for_inference) and int8. The three run in the C++ runtime (torchbridge.Runtime, the
pybind11 bindings over the same library torchbridge-run uses), interleaved round by round in one
process so a noisy neighbour slows all alike; the figures are medians (p50) and their ratios.
Weights are random (latency does not depend on their values); static models calibrate on real
digits (the CNN) or on seeded random images (ResNet-18; no ImageNet data is downloaded).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import torchbridge as tb
from torchbridge.timing import latency_table, runtime_latencies, speedups

THREADS = 2
BATCHES = (1, 32)


def digits_cnn():
    data = tb.data.DigitsDataModule()
    model = tb.models.digits_cnn().eval()
    return "digits CNN (static)", model, model, "static", data, data.example_batch(4), {1: 400, 32: 200}


def resnet18():
    import torchvision

    fp32 = torchvision.models.resnet18(weights=None).eval()
    quantizable = torchvision.models.quantization.resnet18(weights=None, quantize=False).eval()
    quantizable.load_state_dict(fp32.state_dict())  # the same network, with FloatFunctional skip adds
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.rand(2, 3, 224, 224, generator=generator) for _ in range(2)]
    return "ResNet-18 3x224x224 (static)", fp32, quantizable, "static", calibration, calibration[0][:2], {1: 40, 32: 6}


def lstm():
    model = tb.models.DigitsLSTM(hidden=256, num_layers=2).eval()
    example = tb.data.DigitsDataModule().example_batch(4)
    return "LSTM 2x256 over 8 steps (dynamic)", model, model, "dynamic", None, example, {1: 400, 32: 200}


def measure(make, folder: Path, scale: float) -> dict:
    torch.manual_seed(0)
    title, fp32_model, quantizable, mode, data, example, runs = make()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    int8_model = tb.quantize(quantizable, mode, data, calibration_batches=4, progress_bar=False)
    slug = title.split()[0].lower().replace("-", "")
    artifacts = {
        "fp32": tb.export(fp32_model, (example,), folder / f"{slug}_fp32.pt"),
        "fp32 optimized": tb.export(fp32_model, (example,), folder / f"{slug}_fp32_opt.pt", optimize=True),
        "int8": tb.export(int8_model, (example,), folder / f"{slug}_int8.pt"),
    }
    tb.verify(int8_model, artifacts["int8"].path, threads=THREADS, fresh=1, cli=False)  # raises on a mismatch
    latencies = []
    for batch in BATCHES:
        count = max(3, round(runs[batch] * scale))
        latencies += runtime_latencies(
            {name: art.path for name, art in artifacts.items()},
            batch_sizes=(batch,),
            threads=THREADS,
            runs=count,
            warmup=max(2, count // 10),
        )
    print(f"{title}: {time.perf_counter() - started:.0f} s", flush=True)
    return {
        "title": title,
        "load": (load_before, os.getloadavg()[0]),
        "sizes": {name: art.size_bytes for name, art in artifacts.items()},
        "optimized": artifacts["fp32 optimized"].manifest["optimized"],
        "latencies": latencies,
        "speedup": speedups(latencies, "fp32", "int8"),
        "speedup_vs_optimized": speedups(latencies, "fp32 optimized", "int8"),
    }


def cpu_description() -> str:
    """CPU model and the int8 instructions that decide int8 speed (VNNI, AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    int8 = [flag for flag in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8") if flag in flags]
    return f"{name or platform.machine()} ({', '.join(int8) or 'no int8 extensions'})"


def markdown(results: list[dict], command: str, load: tuple[float, float]) -> str:
    lines = [
        "# C++ latency: fp32 vs int8",
        "",
        f"Measured by `{command}` on {datetime.date.today().isoformat()}: {cpu_description()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, quantized engine x86. Latency is the "
        "median (p50) per call in the C++ runtime, the three artifacts of a model interleaved round by round in "
        "one process; speed-up = fp32 p50 / int8 p50. The machine is shared: the load column gives the 1-minute "
        f"load average before and after each model ({load[0]:.1f} at the start, {load[1]:.1f} at the end of the "
        "run); above the 2 cores, other work competes with the 2 threads measured.",
        "",
        "| model | batch | fp32 ms | fp32 optimized ms | int8 ms | int8 speed-up vs fp32 | vs fp32 optimized | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        p50 = {(r.path, r.batch): r for r in result["latencies"]}
        for batch in BATCHES:
            lines.append(
                f"| {result['title']} | {batch} | {p50[('fp32', batch)].p50_ms:.3f} | "
                f"{p50[('fp32 optimized', batch)].p50_ms:.3f} | {p50[('int8', batch)].p50_ms:.3f} | "
                f"{result['speedup'][batch]:.2f}x | {result['speedup_vs_optimized'][batch]:.2f}x | "
                f"{result['load'][0]:.1f} → {result['load'][1]:.1f} |"
            )
    lines += ["", "| model | fp32 artifact | int8 artifact | smaller by |", "|---|---:|---:|---:|"]
    for result in results:
        sizes = result["sizes"]
        lines.append(
            f"| {result['title']} | {sizes['fp32'] / 1e6:.2f} MB | {sizes['int8'] / 1e6:.2f} MB | "
            f"{sizes['fp32'] / sizes['int8']:.2f}x |"
        )
    lines += ["", "Runs per path (p90 shows the noise of this shared machine):", "", "```"]
    for result in results:
        lines += [result["title"], latency_table(result["latencies"]), ""]
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/quantization-benchmark.md"))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of timed runs")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="torchbridge-qbench-") as folder:
        results = [measure(make, Path(folder), args.scale) for make in (digits_cnn, resnet18, lstm)]
    command = "python benchmarks/quantize_bench.py" + (f" --scale {args.scale:g}" if args.scale != 1.0 else "")
    text = markdown(results, command, (load_before, os.getloadavg()[0]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
