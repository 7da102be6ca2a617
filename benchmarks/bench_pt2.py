"""Measurements behind the .pt2 (AOTInductor) path; each writes a Markdown and a JSON file.

    python benchmarks/bench_pt2.py settings --out docs   # freezing / max-autotune / ISA: compile s, size, latency
    python benchmarks/bench_pt2.py formats --out docs    # .pt vs .pt2, fp32 and int8: compile s, size, accuracy, speed

Latencies come from the C++ runtime (torchbridge.timing.compare_artifacts): every artifact of one
model is loaded in one process and the calls are interleaved, so machine noise hits all alike;
compare the ratios, not the absolute numbers, across runs. Takes 10-20 minutes on 2 cores.
--threads defaults to 1: on a 2-core machine shared with other jobs, two OpenMP threads wait on
each other whenever one is descheduled, and p50s scatter by 2-10x between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import torchbridge as tb
from torchbridge._warnings import expected_deprecations
from torchbridge.runtime import cli_path
from torchbridge.timing import compare_artifacts, ratio_table

THREADS = 1  # set from --threads


def machine() -> str:
    name = torch.cpu.get_capabilities().get("cpu_name", platform.processor())
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}, {THREADS} threads"


def digits_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return tb.models.digits_cnn().eval()


def resnet18() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def trained_digits_cnn(workdir: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tb.models.digits_cnn()
    tb.train(model, tb.data.DigitsDataModule(), max_epochs=5, root_dir=workdir / "train", progress_bar=False)
    return model.eval()


def selftest_emulating_avx2(path: Path) -> bool:
    """torchbridge-run --selftest with oneDNN and ATen limited to AVX2, as on an AVX2-only CPU
    (the package's own kernels still run on this CPU: this checks the prepacked oneDNN weights)."""
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    result = subprocess.run([str(cli_path()), str(path), "--selftest"], capture_output=True, text=True, env=env)
    return result.returncode == 0


def settings(out: Path, runs: int) -> None:
    variants = {
        "no freezing": {"inductor_configs": {"freezing": False}},
        "freezing (default)": {},
        "freezing + max-autotune": {"inductor_configs": {"max_autotune": True}},
        "freezing, threads fixed at compile": {"inductor_configs": {"cpp.dynamic_threads": False}},
        "isa x86-64-v3": {"isa": "x86-64-v3"},
        "isa x86-64-v2": {"isa": "x86-64-v2"},
    }
    models = {
        "digits_cnn": (digits_cnn, (1, 1, 8, 8), (1, 32)),
        "resnet18": (resnet18, (1, 3, 64, 64), (1, 8)),
    }
    report = {"machine": machine(), "runs": runs, "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        for model_name, (make, shape, batches) in models.items():
            model = make()
            example = torch.rand(2, *shape[1:])
            artifacts, rows = {}, []
            for label, options in variants.items():
                path = Path(folder) / f"{model_name}-{len(artifacts)}.pt2"
                artifact = tb.export(model, (example,), path, **options)
                artifacts[label] = path
                rows.append(
                    {
                        "variant": label,
                        "compile_s": artifact.manifest["aoti"]["compile_seconds"],
                        "bytes": artifact.size_bytes,
                        "cpu_isa": artifact.manifest["aoti"]["cpu_isa"],
                        "selftest_as_avx2": selftest_emulating_avx2(path) if "isa" in options else None,
                    }
                )
                print(model_name, rows[-1], flush=True)
            timings, latencies = compare_artifacts(artifacts, batch_sizes=batches, threads=THREADS, runs=runs)
            report["models"][model_name] = {
                "variants": rows,
                "latency": [vars(r) for r in latencies],
                "table": ratio_table(latencies, baseline="freezing (default)"),
            }
            print(report["models"][model_name]["table"], flush=True)
    write(out / "aoti_settings", report, settings_markdown(report))


def settings_markdown(report: dict) -> str:
    lines = ["# AOTInductor settings, measured", "",
             f"`python benchmarks/bench_pt2.py settings` on {report['machine']}; "
             f"C++ runtime, {report['runs']} interleaved runs per artifact and batch size, p50.", ""]  # fmt: skip
    for name, data in report["models"].items():
        lines += [f"## {name}", "", "| variant | compile s | package KiB | AOTI_CPU_ISA | selftest as AVX2 CPU |"]
        lines += ["|---|---:|---:|---|---|"]
        for row in data["variants"]:
            avx2 = {None: "", True: "passed", False: "FAILED"}[row["selftest_as_avx2"]]
            lines.append(
                f"| {row['variant']} | {row['compile_s']:.1f} | {row['bytes'] / 1024:.0f} | {row['cpu_isa']} | {avx2} |"
            )
        lines += ["", "```", data["table"], "```", ""]
    return "\n".join(lines)


def fx_int8(model: torch.nn.Module, example: torch.Tensor, calibration) -> torch.nn.Module:
    """The TorchScript-side int8 baseline: FX graph mode static quantization (torch.ao, x86)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with expected_deprecations():
        torch.backends.quantized.engine = "x86"
        prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (example,))
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
        return convert_fx(prepared)


def formats(out: Path, runs: int) -> None:
    report = {"machine": machine(), "runs": runs, "models": {}}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = tb.data.DigitsDataModule()
        images, labels = data.dataset("test").tensors
        train_images = data.dataset("train").tensors[0]
        cases = {
            "digits_cnn": (trained_digits_cnn(folder), images[:4], train_images[:512].split(64), (1, 32)),
            "resnet18": (resnet18(), torch.rand(4, 3, 64, 64), torch.rand(64, 3, 64, 64).split(16), (1, 8)),
        }
        for name, (model, example, calibration, batches) in cases.items():
            paths, rows = {}, []
            started = time.perf_counter()
            quantized = tb.aoti.quantize_int8(model, (example,), calibration)
            quantize_s = time.perf_counter() - started
            exports = [
                ("fp32 .pt", model, f"{name}.pt"),
                ("fp32 .pt2", model, f"{name}.pt2"),
                ("int8 .pt", fx_int8(model, example, calibration), f"{name}_int8.pt"),
                ("int8 .pt2", quantized, f"{name}_int8.pt2"),
            ]
            for label, model_to_export, file_name in exports:
                started = time.perf_counter()
                artifact = tb.export(model_to_export, (example,), folder / file_name)
                seconds = time.perf_counter() - started
                paths[label] = artifact.path
                row = {"artifact": label, "export_s": round(seconds, 1), "bytes": artifact.size_bytes}
                if artifact.manifest["format"] == "aoti":
                    row["compile_s"] = artifact.manifest["aoti"]["compile_seconds"]
                if label == "int8 .pt2":
                    row["quantize_s"] = round(quantize_s, 1)
                if name == "digits_cnn":
                    logits = tb.Runtime(artifact.path, threads=THREADS)(images)
                    row["accuracy"] = float((logits.argmax(dim=1) == labels).float().mean())
                rows.append(row)
                print(name, row, flush=True)
            timings, latencies = compare_artifacts(paths, batch_sizes=batches, threads=THREADS, runs=runs)
            for row, timing in zip(rows, timings):
                row["load_ms"] = round(timing.load_ms, 1)
            p50 = {(r.path, r.batch): r.p50_ms for r in latencies}
            ratios = {
                f"{kind} .pt2/.pt batch {b}": round(p50[(f"{kind} .pt2", b)] / p50[(f"{kind} .pt", b)], 3)
                for kind in ("fp32", "int8")
                for b in batches
            }
            report["models"][name] = {
                "artifacts": rows,
                "latency": [vars(r) for r in latencies],
                "ratios": ratios,
                "table": ratio_table(latencies, baseline="fp32 .pt"),
            }
            print(report["models"][name]["table"], ratios, flush=True)
    write(out / "bench_pt2", report, formats_markdown(report))


def formats_markdown(report: dict) -> str:
    lines = ["# .pt vs .pt2 in the C++ runtime, measured", "",
             f"`python benchmarks/bench_pt2.py formats` on {report['machine']}; {report['runs']} interleaved runs per "
             "artifact and batch size, p50. int8 .pt: FX graph mode static quantization (torch.ao, x86 engine), "
             "TorchScript. int8 .pt2: PT2E with torchao's X86InductorQuantizer, AOTInductor.", ""]  # fmt: skip
    for name, data in report["models"].items():
        lines += [f"## {name}", "", "| artifact | export s | of which AOTI compile s | KiB | C++ load ms | accuracy |"]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for row in data["artifacts"]:
            accuracy = f"{row['accuracy']:.4f}" if "accuracy" in row else ""
            compile_s = f"{row['compile_s']:.1f}" if "compile_s" in row else ""
            lines.append(
                f"| {row['artifact']} | {row['export_s']:.1f} | {compile_s} | {row['bytes'] / 1024:.0f} | "
                f"{row['load_ms']:.1f} | {accuracy} |"
            )
        lines += ["", "```", data["table"], "```", ""]
        lines += ["p50 ratios (< 1: .pt2 faster): " + ", ".join(f"{k} **{v:.2f}**" for k, v in data["ratios"].items())]
        lines.append("")
    return "\n".join(lines)


def write(stem: Path, report: dict, markdown: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(markdown)
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["settings", "formats"])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    {"settings": settings, "formats": formats}[args.what](args.out, args.runs)


if __name__ == "__main__":
    main()
