"""The jobs that run the stages in turn and report: the main one (train on the digits, export, verify in
C++, benchmark, write a report), pruning before/after (prune_job) and quantization (quantize_job)."""

from __future__ import annotations

import copy
import datetime
import gzip
import json
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchbridge import models
from torchbridge.compare import tensor_tuple
from torchbridge.data import DigitsDataModule
from torchbridge.errors import TorchbridgeError
from torchbridge.export import export
from torchbridge.prune import CHANNELS, DEFAULT_LAYER_TYPES, PruneResult, prune_and_fine_tune, sparsity_report
from torchbridge.quantize import quantize
from torchbridge.runtime import Runtime, cli_path, resolve_threads
from torchbridge.timing import as_dicts, latency_table, quick_bench, runtime_latencies
from torchbridge.timing import speedups as p50_speedups
from torchbridge.train import evaluate, train
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
    threads: int | None = None,
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
    threads = resolve_threads(threads)
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
    accuracy_cpp = cpp_accuracy(artifact.path, datamodule, threads)
    print(f"test accuracy (C++ runtime): {accuracy_cpp:.4f}")

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
            accuracy_cpp,
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
        "accuracy": {"eager": eager_accuracy, "cpp": accuracy_cpp, "val_best": trained.val_accuracy},
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
    int8_model = quantize(
        model, mode, datamodule, engine=engine, epochs=qat_epochs, root_dir=out / "qat", progress_bar=progress_bar
    )
    int8_artifact = export(int8_model, (datamodule.example_batch(4),), out / "model_int8.pt", quantized_engine=engine)
    parity = verify(int8_model, int8_artifact.path, threads=threads)
    print(parity.table())
    int8_accuracy = cpp_accuracy(int8_artifact.path, datamodule, threads)
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


def cpp_accuracy(artifact, datamodule, threads: int | None = None) -> float:
    """Test accuracy of the artifact run by the C++ runtime on the datamodule's test split."""
    images, labels = datamodule.dataset("test").tensors
    runtime = Runtime(artifact, threads=threads)
    return float((runtime(images).argmax(dim=1) == labels).float().mean())


# Pruning: what it bought


def artifact_sizes(path: str | os.PathLike) -> dict[str, int]:
    """On-disk bytes of an artifact and its gzip-compressed size (level 6, gzip's default):
    TorchScript stores tensors uncompressed, so zeros from unstructured pruning show only here."""
    data = Path(path).read_bytes()
    return {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=6, mtime=0))}


def measure(model: nn.Module, artifact: str | os.PathLike, datamodule=None, threads: int | None = None) -> dict:
    """Parameters, nonzero parameters, conv/linear weight sparsity, artifact bytes and gzip bytes,
    and test accuracy of the eager model and of the C++ runtime when `datamodule` is given."""
    report = sparsity_report(model)
    figures: dict[str, Any] = {
        "artifact": str(artifact),
        "parameters": report.parameters,
        "nonzero_parameters": report.nonzero_parameters,
        "sparsity": report.sparsity,
        **artifact_sizes(artifact),
        "accuracy_eager": None,
        "accuracy_cpp": None,
    }
    if datamodule is not None:
        figures["accuracy_eager"] = evaluate(model.eval(), datamodule)
        figures["accuracy_cpp"] = cpp_accuracy(artifact, datamodule, threads)
    return figures


def compare_pruning(
    before: tuple[nn.Module, str | os.PathLike],
    after: tuple[nn.Module, str | os.PathLike],
    datamodule=None,
    threads: int | None = None,
    runs: int = 30,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 3,
) -> dict[str, Any]:
    """Figures of (model, artifact) before and after pruning, and the C++ runtime latency of both
    artifacts timed interleaved in this process; ratios are after / before (speedup before / after)."""
    threads = resolve_threads(threads)
    figures = {
        "before": measure(*before, datamodule=datamodule, threads=threads),
        "after": measure(*after, datamodule=datamodule, threads=threads),
    }
    latencies = runtime_latencies(
        {"before": Path(before[1]), "after": Path(after[1])},
        batch_sizes=batch_sizes,
        threads=threads,
        runs=runs,
        warmup=warmup,
    )
    for side in ("before", "after"):
        figures[side]["latency_p50_ms"] = {str(r.batch): r.p50_ms for r in latencies if r.path == side}
    b, a = figures["before"], figures["after"]
    figures["ratios"] = {
        "parameters": a["parameters"] / b["parameters"],
        "nonzero_parameters": a["nonzero_parameters"] / b["nonzero_parameters"],
        "bytes": a["bytes"] / b["bytes"],
        "gzip_bytes": a["gzip_bytes"] / b["gzip_bytes"],
        "speedup": {k: b["latency_p50_ms"][k] / a["latency_p50_ms"][k] for k in b["latency_p50_ms"]},
    }
    figures["latency"] = as_dicts(latencies)
    figures["threads"] = threads
    figures["runs"] = runs
    return figures


def comparison_table(figures: dict[str, Any]) -> str:
    """The `compare_pruning` figures as a markdown table."""
    b, a, r = figures["before"], figures["after"], figures["ratios"]

    def accuracy(value):
        return "-" if value is None else f"{value:.4f}"

    rows = [
        ("parameters", f"{b['parameters']:,}", f"{a['parameters']:,}", f"{r['parameters']:.3f}x"),
        (
            "nonzero parameters",
            f"{b['nonzero_parameters']:,}",
            f"{a['nonzero_parameters']:,}",
            f"{r['nonzero_parameters']:.3f}x",
        ),
        ("conv/linear weight sparsity", f"{b['sparsity']:.2%}", f"{a['sparsity']:.2%}", ""),
        ("artifact size", f"{b['bytes'] / 1024:.1f} KiB", f"{a['bytes'] / 1024:.1f} KiB", f"{r['bytes']:.3f}x"),
        (
            "artifact size, gzip",
            f"{b['gzip_bytes'] / 1024:.1f} KiB",
            f"{a['gzip_bytes'] / 1024:.1f} KiB",
            f"{r['gzip_bytes']:.3f}x",
        ),
        ("test accuracy, eager", accuracy(b["accuracy_eager"]), accuracy(a["accuracy_eager"]), ""),
        ("test accuracy, C++", accuracy(b["accuracy_cpp"]), accuracy(a["accuracy_cpp"]), ""),
    ]
    for batch, before_ms in b["latency_p50_ms"].items():
        rows.append(
            (
                f"C++ latency p50, batch {batch}",
                f"{before_ms:.3f} ms",
                f"{a['latency_p50_ms'][batch]:.3f} ms",
                f"{r['speedup'][batch]:.2f}x speedup",
            )
        )
    lines = ["| | before | after | after vs before |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {x} | {y} | {z} |" for name, x, y, z in rows]
    return "\n".join(lines)


def prune_job(
    model: nn.Module,
    example_inputs,
    out: str | os.PathLike,
    datamodule=None,
    method: str = CHANNELS,
    amount: float | int = 0.5,
    steps: int = 2,
    epochs_per_step: int = 2,
    lr: float = 3e-3,
    importance: str = "l1",
    layer_types: Iterable[str | type] = DEFAULT_LAYER_TYPES,
    skip: Iterable[str] = (),
    dim: int = 0,
    norm: float = 2,
    threads: int | None = None,
    bench_runs: int = 30,
    batch_sizes: Sequence[int] = (1, 32),
    progress_bar: bool = False,
) -> tuple[PruneResult, dict[str, Any]]:
    """What `torchbridge prune` does: prune (and fine-tune on `datamodule` when given), export the
    model before and after to `out`/dense.pt and `out`/pruned.pt, prove the pruned artifact's
    C++ parity, compare the two (size, gzip size, sparsity, accuracy, C++ latency) and write
    `out`/report.json and report.md. `model` itself is left dense for 'channels', pruned in
    place for the mask methods (as `prune` does). Raises ParityError when parity fails."""
    threads = resolve_threads(threads)
    out = Path(out)
    example_inputs = tensor_tuple(example_inputs)
    dense = copy.deepcopy(model).eval()
    result = prune_and_fine_tune(
        model,
        datamodule,
        method=method,
        amount=amount,
        steps=steps,
        epochs_per_step=epochs_per_step if datamodule is not None else 0,
        lr=lr,
        example_inputs=example_inputs,
        importance=importance,
        layer_types=layer_types,
        skip=skip,
        dim=dim,
        norm=norm,
        root_dir=out / "fine_tune",
        progress_bar=progress_bar,
        evaluate_accuracy=datamodule is not None,
    )
    dense_artifact = export(dense, example_inputs, out / "dense.pt")
    pruned_artifact = export(result.model, example_inputs, out / "pruned.pt")
    parity = verify(result.model, pruned_artifact.path, threads=threads)
    figures = compare_pruning(
        (dense, dense_artifact.path),
        (result.model, pruned_artifact.path),
        datamodule=datamodule,
        threads=threads,
        runs=bench_runs,
        batch_sizes=batch_sizes,
    )
    report = {
        "method": method,
        "amount": amount,
        "steps": steps,
        "epochs_per_step": epochs_per_step if datamodule is not None else 0,
        "importance": importance if method == CHANNELS else None,
        "skip": list(skip),
        "comparison": figures,
        "fine_tune": result.as_dict(),
        "parity": parity.as_dict(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(
        f"# Pruning: {method}, amount {amount}\n\n"
        f"{steps} step(s), {report['epochs_per_step']} fine-tuning epoch(s) each; C++ latency interleaved in one "
        f"process, {threads} threads, {bench_runs} runs per batch size, medians.\n\n"
        f"{comparison_table(figures)}\n\n## Steps\n\n```\n{result.table()}\n```\n\n"
        f"## Layers after pruning\n\n```\n{(result.channels.table() + chr(10)) if result.channels else ''}"
        f"{result.sparsity.table()}\n```\n\n## Parity of the pruned artifact\n\n```\n{parity.table()}\n```\n"
    )
    return result, report
