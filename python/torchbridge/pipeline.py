"""The main job: train on the digits, export, verify in C++, benchmark, and write a report."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from torchbridge import models
from torchbridge.bench import as_dicts, latency_table, quick_bench, runtime_latencies
from torchbridge.bench import speedups as p50_speedups
from torchbridge.data import DigitsDataModule
from torchbridge.errors import TorchbridgeError
from torchbridge.export import export
from torchbridge.runtime import Runtime, cli_path
from torchbridge.train import train
from torchbridge.verify import verify


def new_run_dir(base: str | Path = "runs", prefix: str = "pipeline") -> Path:
    """A fresh folder runs/pipeline-YYYYmmdd-HHMMSS[-N]; never one that already exists."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = Path(base) / f"{prefix}-{stamp}"
    n = 2
    while candidate.exists():
        candidate = Path(base) / f"{prefix}-{stamp}-{n}"
        n += 1
    candidate.mkdir(parents=True)
    return candidate


def claim_output_dir(out: str | Path | None) -> Path:
    if out is None:
        return new_run_dir()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TorchbridgeError(f"{out} already holds files; refusing to overwrite an earlier run (choose a new --out)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _step(number: int, total: int, text: str) -> None:
    print(f"\n[{number}/{total}] {text}", flush=True)


def run_pipeline(
    out: str | Path | None = None,
    model_name: str = "digits_cnn",
    epochs: int = 5,
    threads: int = 2,
    bench_runs: int = 50,
    batch_sizes: tuple[int, ...] = (1, 32),
    progress_bar: bool = True,
    quantize: str | None = None,
    engine: str = "x86",
    qat_epochs: int = 2,
    prune: str | None = None,
    prune_amount: float | int = 0.5,
    prune_steps: int = 2,
    prune_epochs: int = 2,
) -> dict[str, Any]:
    """Train, export, verify and benchmark `model_name`.

    prune: a method of torchbridge.prune ('channels', 'l1_unstructured', ...) adds a stage after
    training: prune by `prune_amount` in `prune_steps` steps with `prune_epochs` of fine-tuning each;
    the pruned model is what the later stages export, verify and benchmark.
    quantize: "dynamic", "static" or "qat" adds a stage that makes an int8 artifact and compares its
    accuracy, size and C++ latency with fp32.
    """
    out = claim_output_dir(out)
    total = 5 + bool(prune) + bool(quantize)
    print(f"torchbridge pipeline: writing to {out}", flush=True)

    _step(1, total, f"train {model_name} on the scikit-learn digits for {epochs} epochs (Lightning)")
    datamodule = DigitsDataModule()
    model = models.create(model_name, quantizable=quantize in ("static", "qat"))
    trained = train(model, datamodule, max_epochs=epochs, root_dir=out / "train", progress_bar=progress_bar)
    print(f"test accuracy (eager): {trained.test_accuracy:.4f}")

    eager_accuracy, pruning = trained.test_accuracy, None
    if prune:
        from torchbridge.prune import comparison_table, prune_job

        _step(2, total, f"prune: {prune}, amount {prune_amount}, {prune_steps} step(s) of {prune_epochs} epoch(s)")
        pruned, pruning = prune_job(
            model,
            (datamodule.example_batch(4),),
            out / "prune",
            datamodule=datamodule,
            method=prune,
            amount=prune_amount,
            steps=prune_steps,
            epochs_per_step=prune_epochs,
            threads=threads,
            bench_runs=bench_runs,
            batch_sizes=batch_sizes,
            progress_bar=progress_bar,
        )
        model, eager_accuracy = pruned.model, pruned.accuracy_after
        print(comparison_table(pruning["comparison"]))
    first = 3 if prune else 2

    _step(first, total, "export TorchScript with manifest and golden example")
    artifact = export(model, (datamodule.example_batch(4),), out / "model.pt")
    print(
        f"{artifact.path}: {artifact.size_bytes / 1024:.1f} KiB, method {artifact.manifest['method']}, "
        f"inputs {', '.join(map(str, artifact.inputs))}"
    )

    _step(first + 1, total, f"verify Python vs C++ (bindings and torchbridge-run), {threads} threads")
    parity = verify(model, artifact.path, threads=threads)
    print(parity.table())
    selftest = subprocess.run(
        [str(cli_path()), str(artifact.path), "--selftest", "--json"], capture_output=True, text=True
    )
    if selftest.returncode != 0:
        raise TorchbridgeError(f"torchbridge-run --selftest failed: {selftest.stderr.strip()}")
    runtime = Runtime(artifact.path, threads=threads)
    images, labels = datamodule.dataset("test").tensors
    cpp_accuracy = float((runtime(images).argmax(dim=1) == labels).float().mean())
    print(f"test accuracy (C++ runtime): {cpp_accuracy:.4f}")

    _step(first + 2, total, f"benchmark: {bench_runs} runs per path, batch sizes {', '.join(map(str, batch_sizes))}")
    latencies = quick_bench(model, artifact.path, batch_sizes=batch_sizes, threads=threads, runs=bench_runs)
    print(latency_table(latencies))

    int8 = None
    if quantize:
        _step(
            first + 3, total, f"quantize to int8 ({quantize}, engine {engine}) -> export -> verify -> compare with fp32"
        )
        int8 = _quantize_stage(
            model,
            datamodule,
            artifact,
            cpp_accuracy,
            out,
            mode=quantize,
            engine=engine,
            qat_epochs=qat_epochs,
            threads=threads,
            bench_runs=bench_runs,
            batch_sizes=batch_sizes,
            progress_bar=progress_bar,
        )

    _step(total, total, "report")
    report = {
        "model": model_name,
        "epochs": epochs,
        "accuracy": {"eager": eager_accuracy, "cpp": cpp_accuracy, "val_best": trained.val_accuracy},
        "artifact": {"path": str(artifact.path), "bytes": artifact.size_bytes, "manifest": artifact.manifest},
        "parity": parity.as_dict(),
        "selftest": json.loads(selftest.stdout)["selftest"],
        "latency": as_dicts(latencies),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": threads,
        },
        "checkpoint": trained.best_checkpoint,
    }
    if int8 is not None:
        report["quantization"] = int8
    if pruning is not None:
        report["pruning"] = pruning
    (out / "report.json").write_text(json.dumps(report, indent=2))
    markdown = _markdown(report, parity.table(), latency_table(latencies))
    if pruning is not None:
        markdown += f"\n## Pruning ({prune}, amount {prune_amount})\n\n{comparison_table(pruning['comparison'])}\n"
    (out / "report.md").write_text(markdown)
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    return report


def _quantize_stage(
    model,
    datamodule,
    fp32_artifact,
    fp32_accuracy: float,
    out: Path,
    *,
    mode: str,
    engine: str,
    qat_epochs: int,
    threads: int,
    bench_runs: int,
    batch_sizes: tuple[int, ...],
    progress_bar: bool,
) -> dict[str, Any]:
    """int8 copy of the trained model: export, parity, C++ accuracy, size and C++ latency vs fp32."""
    from torchbridge.quantize import quantize

    int8_model = quantize(
        model, mode, datamodule, engine=engine, epochs=qat_epochs, root_dir=out / "qat", progress_bar=progress_bar
    )
    int8_artifact = export(int8_model, (datamodule.example_batch(4),), out / "model_int8.pt", quantized_engine=engine)
    parity = verify(int8_model, int8_artifact.path, threads=threads)
    print(parity.table())
    images, labels = datamodule.dataset("test").tensors
    int8_accuracy = float((Runtime(int8_artifact.path, threads=threads)(images).argmax(dim=1) == labels).float().mean())
    latencies = runtime_latencies(
        {"fp32": fp32_artifact.path, "int8": int8_artifact.path}, batch_sizes, threads=threads, runs=bench_runs
    )
    speedups = p50_speedups(latencies, "fp32", "int8")
    sizes = {"fp32": fp32_artifact.size_bytes, "int8": int8_artifact.size_bytes}
    print(f"test accuracy (C++ runtime): fp32 {fp32_accuracy:.4f}, int8 {int8_accuracy:.4f}")
    print(f"artifact: fp32 {sizes['fp32'] / 1024:.1f} KiB, int8 {sizes['int8'] / 1024:.1f} KiB")
    print(latency_table(latencies))
    return {
        "mode": mode,
        "engine": engine,
        "accuracy": {"fp32": fp32_accuracy, "int8": int8_accuracy},
        "artifact": {"path": str(int8_artifact.path), "bytes": sizes["int8"], "manifest": int8_artifact.manifest},
        "bytes": sizes,
        "size_ratio": sizes["fp32"] / sizes["int8"],
        "parity": parity.as_dict(),
        "parity_table": parity.table(),
        "latency": as_dicts(latencies),
        "latency_table": latency_table(latencies),
        "speedup": {str(batch): ratio for batch, ratio in speedups.items()},
    }


def _quantization_markdown(int8: dict[str, Any]) -> str:
    accuracy, sizes = int8["accuracy"], int8["bytes"]
    speedups = ", ".join(f"batch {batch}: {ratio:.2f}x" for batch, ratio in int8["speedup"].items())
    return f"""
## Int8 quantization ({int8["mode"]}, engine {int8["engine"]})

| | fp32 | int8 |
|---|---|---|
| test accuracy, C++ runtime | {accuracy["fp32"]:.4f} | {accuracy["int8"]:.4f} |
| artifact size | {sizes["fp32"] / 1024:.1f} KiB | {sizes["int8"] / 1024:.1f} KiB ({int8["size_ratio"]:.2f}x smaller) |
| parity (int8 eager vs TorchScript vs C++) | | {"passed" if int8["parity"]["passed"] else "FAILED"} |

C++ latency, fp32 and int8 artifacts interleaved in one process (p50 fp32 / p50 int8: {speedups}):

```
{int8["latency_table"]}
```

```
{int8["parity_table"]}
```
"""


def _markdown(report: dict[str, Any], parity_table: str, latency_table: str) -> str:
    accuracy = report["accuracy"]
    machine = report["machine"]
    int8 = _quantization_markdown(report["quantization"]) if "quantization" in report else ""
    return f"""# torchbridge pipeline report

Model `{report["model"]}`, {report["epochs"]} epochs on the scikit-learn digits (360 test images).

| | value |
|---|---|
| test accuracy, eager PyTorch | {accuracy["eager"]:.4f} |
| test accuracy, C++ runtime | {accuracy["cpp"]:.4f} |
| artifact | `{report["artifact"]["path"]}`, {report["artifact"]["bytes"] / 1024:.1f} KiB |
| parity | {"passed" if report["parity"]["passed"] else "FAILED"} |
| selftest (torchbridge-run) | {"passed" if report["selftest"]["passed"] else "FAILED"} |

## Parity

```
{parity_table}
```

## Latency

Measured in one run on {machine["processor"]}, {machine["platform"]}, torch {machine["torch"]},
{machine["threads"]} threads; eager, TorchScript and the C++ bindings interleaved in one process,
`torchbridge-run` in its own.

```
{latency_table}
```
{int8}"""
