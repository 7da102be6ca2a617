"""The `torchbridge` command: pipeline, train, export, prune, quantize, verify, info, bench, serve, triton.

Long because each of the ten subcommands has its parser and its handler here; a handler only turns
arguments into one library call and prints the result, so nothing in it is shared elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

from torchbridge.errors import ParityError, TorchbridgeError


def resolve_model(spec: str, weights: str | None = None, quantizable: bool = False) -> nn.Module:
    """'digits_cnn', 'digits_mlp', 'digits_lstm', a torchvision name (quantizable=True: its
    torchvision.models.quantization variant), or 'package.module:factory'."""
    from torchbridge import models
    from torchbridge.train import load_weights

    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise TorchbridgeError(f"cannot import model '{spec}': {error}") from error
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(model, nn.Module):
            raise TorchbridgeError(f"'{spec}' gave {type(model).__name__}, expected a torch.nn.Module")
    else:
        model = models.create(spec, quantizable=quantizable)
    if weights:
        load_weights(model, weights)
    return model.eval()


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,1,8,8, got '{text}'") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got '{text}'")
    return shape


def example_input(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """Real digits when the shape is (N, 1, 8, 8) float32, else seeded random values."""
    from torchbridge.data import DigitsDataModule

    if dtype == "float32" and len(shape) == 4 and shape[1:] == (1, 8, 8) and shape[0] <= 360:
        return DigitsDataModule().example_batch(shape[0])
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(getattr(torch, dtype))


def cmd_pipeline(args) -> int:
    from torchbridge.pipeline import run_pipeline

    report = run_pipeline(
        out=args.out,
        model_name=args.model,
        epochs=args.epochs,
        threads=args.threads,
        bench_runs=args.bench_runs,
        progress_bar=not args.no_progress,
        prune=args.prune,
        prune_amount=args.prune_amount,
        prune_steps=args.prune_steps,
        prune_epochs=args.prune_epochs,
        quantize=args.quantize,
        engine=args.engine,
        qat_epochs=args.qat_epochs,
    )
    int8_passed = report["quantization"]["parity"]["passed"] if "quantization" in report else True
    return 0 if report["parity"]["passed"] and int8_passed else 1


def cmd_train(args) -> int:
    from torchbridge.data import DigitsDataModule
    from torchbridge.pipeline import claim_output_dir, new_run_dir
    from torchbridge.train import train

    out = claim_output_dir(args.out) if args.out else new_run_dir(prefix="train")
    model = resolve_model(args.model).train()
    result = train(
        model,
        DigitsDataModule(batch_size=args.batch_size),
        max_epochs=args.epochs,
        lr=args.lr,
        root_dir=out,
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        progress_bar=not args.no_progress,
        detect_anomalies=args.detect_anomalies,
        activation_stats=args.activation_stats,
    )
    weights = out / "weights.pt"
    torch.save(model.state_dict(), weights)
    (out / "train.json").write_text(json.dumps({"model": args.model, **result.as_dict()}, indent=2))
    print(f"test accuracy {result.test_accuracy:.4f}; weights {weights}; checkpoint {result.best_checkpoint}")
    return 0


def cmd_export(args) -> int:
    from torchbridge.export import export, format_for

    model = resolve_model(args.model, args.weights)
    example = example_input(args.input_shape, args.dtype)
    compiled = format_for(args.out, args.format) in ("aoti", "auto")
    options = {"isa": args.isa, "dynamic_range": (1, args.max_batch)} if compiled else {}
    if not options and (args.isa != "native" or args.max_batch != 1024):
        raise TorchbridgeError("--isa and --max-batch apply to the aoti and auto formats (.pt2)")
    artifact = export(
        model,
        (example,),
        args.out,
        method=args.method,
        dynamic_dims=[[]] if args.static else None,
        optimize=args.optimize,
        format=args.format,
        check_runtime=not args.no_runtime_check,
        tune=not args.no_tune,
        **options,
    )
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1024:.1f} KiB, method {artifact.manifest['method']})")
    for spec in artifact.inputs:
        print(f"  input  {spec}")
    for spec in artifact.outputs:
        print(f"  output {spec}")
    for note in artifact.manifest["notes"]:
        print(f"  note: {note}")
    selection = artifact.manifest.get("selection")
    if selection:
        timed = ", ".join(
            f"{name} " + " / ".join(f"{ms:.3g}" for ms in times) + " ms" for name, times in selection["p50_ms"].items()
        )
        batches = "/".join(str(b) for b in selection["batches"])
        print(f"  format auto: chose {selection['chosen']} (C++ runtime p50 at batch {batches}: {timed})")
        for name, why in selection.get("failed", {}).items():
            print(f"  format auto: {name} not possible: {why}")
    return 0


def cmd_quantize(args) -> int:
    import tempfile
    from pathlib import Path

    from torchbridge.data import DigitsDataModule
    from torchbridge.export import export
    from torchbridge.pipeline import cpp_accuracy, new_run_dir
    from torchbridge.quantize import quantize
    from torchbridge.train import evaluate
    from torchbridge.verify import verify

    model = resolve_model(args.model, args.weights, quantizable=args.mode != "dynamic")
    data = DigitsDataModule()
    int8_model = quantize(
        model,
        args.mode,
        data,
        engine=args.engine,
        calibration_batches=args.calibration_batches,
        epochs=args.epochs,
        lr=args.lr,
        root_dir=new_run_dir(prefix="qat") if args.mode == "qat" else "runs/qat",
        progress_bar=not args.no_progress,
    )
    example = data.example_batch(4)
    artifact = export(int8_model, (example,), args.out, quantized_engine=args.engine)
    with tempfile.TemporaryDirectory(prefix="torchbridge-fp32-") as folder:
        fp32_bytes = export(model, (example,), Path(folder) / "fp32.pt").size_bytes
    int8_accuracy = cpp_accuracy(artifact.path, data, args.threads)
    print(f"wrote {artifact.path} ({args.mode} int8, engine {artifact.manifest['quantized_engine']})")
    print(
        f"  size: {artifact.size_bytes / 1024:.1f} KiB (fp32 {fp32_bytes / 1024:.1f} KiB, "
        f"{fp32_bytes / artifact.size_bytes:.2f}x smaller)"
    )
    print(f"  digits test accuracy: fp32 {evaluate(model, data):.4f}, int8 in C++ {int8_accuracy:.4f}")
    try:
        report = verify(int8_model, artifact.path, threads=args.threads, fresh=2)
    except ParityError as error:
        report = error.report
    print(report.table())
    return 0 if report.passed else 1


def cmd_verify(args) -> int:
    from torchbridge.verify import verify

    if args.layers and not args.model:
        raise TorchbridgeError(
            "--layers needs --model (and --weights): the layer-wise diagnosis runs the eager model's submodules"
        )
    model = resolve_model(args.model, args.weights) if args.model else None
    try:
        report = verify(
            model, args.artifact, threads=args.threads, fresh=args.fresh, cli=not args.no_cli, layers=args.layers
        )
    except ParityError as error:
        report = error.report
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.table())
    return 0 if report.passed else 1


def _amount(text: str) -> float | int:
    """'0.5' is a fraction, '100' a count (as in torch.nn.utils.prune)."""
    try:
        return int(text) if text.isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.5 or a count like 100, got '{text}'") from None


def cmd_prune(args) -> int:
    from torchbridge.data import DigitsDataModule
    from torchbridge.pipeline import claim_output_dir, comparison_table, new_run_dir, prune_job

    model = resolve_model(args.model, args.weights)
    example = example_input(args.input_shape, "float32")
    digits = tuple(args.input_shape[1:]) == DigitsDataModule.input_shape
    if args.fine_tune_epochs and not digits:
        raise TorchbridgeError(
            f"fine-tuning trains on the digits (input shape N,1,8,8), not {args.input_shape}; pass --fine-tune-epochs 0"
        )
    out = claim_output_dir(args.out) if args.out else new_run_dir(prefix="prune")
    print(f"torchbridge prune: {args.method}, amount {args.amount}, writing to {out}", flush=True)
    result, report = prune_job(
        model,
        (example,),
        out,
        datamodule=DigitsDataModule() if digits else None,
        method=args.method,
        amount=args.amount,
        steps=args.steps,
        epochs_per_step=args.fine_tune_epochs,
        lr=args.lr,
        importance=args.importance,
        layer_types=args.layers.split(","),
        skip=args.skip,
        dim=args.dim,
        norm=args.norm,
        threads=args.threads,
        bench_runs=args.bench_runs,
        progress_bar=not args.no_progress,
    )
    print(result.table())
    print(comparison_table(report["comparison"]))
    print(f"wrote {out / 'pruned.pt'}, {out / 'report.md'} and {out / 'report.json'}")
    return 0


def cmd_info(args) -> int:
    from torchbridge.artifact import load_manifest

    manifest = load_manifest(args.artifact)
    if manifest is None:
        print(f"{args.artifact}: exported without torchbridge, no manifest")
        return 0
    print(json.dumps(manifest, indent=2))
    return 0


def bench_model(name: str, weights: str | None, input_shape: tuple[int, ...] | None):
    """The model and example input (batch 2) for `torchbridge bench --model`.

    input_shape is one sample's shape (C,H,W for images). Built-in digits models default to
    1,8,8. torchvision names default to 3,224,224: a channel count of 3 gives torchvision's own
    ImageNet architecture (1000 classes, random weights); any other (1,8,8 as `torchbridge export`
    builds it) gives the stem adapted to small images, with 10 classes.
    """
    from torchbridge import models
    from torchbridge.train import load_weights

    digits_shape = (1, 8, 8)
    if name in models.BUILTIN or ":" in name:
        model = resolve_model(name, weights)
        shape = input_shape or digits_shape
    else:
        shape = input_shape or (3, 224, 224)
        imagenet = shape[0] == 3
        model = models.torchvision_model(
            name, num_classes=1000 if imagenet else 10, in_channels=None if imagenet else shape[0]
        )
        if weights:
            load_weights(model, weights)
        model.eval()
    return model, example_input((2, *shape), "float32")


def _bench_paths(text: str) -> list[str]:
    from torchbridge.bench_report import PATHS

    paths = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown or not paths:
        raise argparse.ArgumentTypeError(
            f"unknown path {', '.join(map(repr, unknown)) or repr(text)}: choose from {','.join(PATHS)}"
        )
    return paths


def cmd_bench(args) -> int:
    from torchbridge.bench import bench
    from torchbridge.runtime import resolve_threads
    from torchbridge.timing import as_dicts, compare_artifacts, ratio_table

    def usage(message: str) -> int:
        print(f"torchbridge bench: error: {message}", file=sys.stderr)
        return 2

    for path in args.artifacts:
        if not Path(path).is_file():
            return usage(f"{path}: no such artifact file")
    every_path = args.model or args.paths or args.out
    if every_path:
        if len(args.artifacts) > 1:
            return usage("--model, --paths and --out take at most one artifact (without them: compare artifacts)")
        if args.input_shape and not args.model:
            return usage("--input-shape applies to --model")
        model, example = bench_model(args.model, args.weights, args.input_shape) if args.model else (None, None)
        report = bench(
            model,
            (example,) if model is not None else None,
            artifact=args.artifacts[0] if args.artifacts else None,
            batch_sizes=args.batch_sizes,
            threads=args.threads,
            runs=args.runs or 50,
            warmup=args.warmup,
            paths=args.paths,
            out_dir=args.out,
            name=args.model,
        )
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print(report.table())
            if args.out:
                print(f"wrote {Path(args.out) / 'bench.json'}, bench.md, bench.png")
        return 0

    if not args.artifacts:
        return usage("give artifacts to compare, or --model NAME (or one artifact with --paths/--out)")
    if args.weights or args.input_shape:
        return usage("--weights and --input-shape apply to --model")
    artifacts = {}
    for path in args.artifacts:
        label = Path(path).name
        while label in artifacts:
            label = "_" + label
        artifacts[label] = path
    runs = args.runs or 100
    timings, results = compare_artifacts(
        artifacts, batch_sizes=args.batch_sizes, threads=args.threads, runs=runs, warmup=args.warmup
    )
    if args.json:
        print(json.dumps({"artifacts": [vars(t) for t in timings], "latency": as_dicts(results)}, indent=2))
        return 0
    for t in timings:
        print(f"{t.label}: {t.format}, {t.bytes / 1024:.1f} KiB, C++ load {t.load_ms:.1f} ms")
    print(f"C++ runtime, {resolve_threads(args.threads)} threads, {runs} interleaved runs per artifact and batch size")
    print(ratio_table(results, baseline=timings[0].label))
    return 0


def cmd_serve(args) -> int:
    try:
        from torchbridge.serving import serve
    except ImportError as error:
        raise TorchbridgeError(str(error)) from None

    serve(
        args.artifact,
        host=args.host,
        port=args.port,
        workers=args.workers,
        max_batch_size=args.max_batch_size,
        batch_timeout_ms=args.batch_timeout,
        threads=args.threads,
        timeout_s=args.timeout,
        log_level=args.log_level,
    )
    return 0


def cmd_triton(args) -> int:
    from torchbridge.triton import write_model

    model = write_model(
        args.artifact,
        args.repository,
        name=args.name,
        backend=args.backend,
        max_batch_size=args.max_batch_size,
        instances=args.instances,
        threads=args.threads,
        force=args.force,
    )
    files = ", ".join(sorted(p.name for p in (model.directory / "1").iterdir()))
    print(
        f"wrote {model.directory} ({model.backend}: 1/{{{files}}}, "
        f"config.pbtxt, warmup/); max_batch_size {model.max_batch_size}, {args.instances} instance(s) x "
        f"{model.threads} thread(s)"
    )
    return 0


def add_threads(parser: argparse.ArgumentParser) -> None:
    from torchbridge.runtime import RuntimeOptions

    parser.add_argument(
        "--threads",
        type=int,
        default=RuntimeOptions().threads,
        help="intra-op threads (the runtime's default, 0: LibTorch's own, one per core)",
    )


def build_parser() -> argparse.ArgumentParser:
    from torchbridge.prune import DEFAULT_LAYER_TYPES, IMPORTANCES
    from torchbridge.prune import METHODS as PRUNE_METHODS
    from torchbridge.version import __version__

    parser = argparse.ArgumentParser(
        prog="torchbridge",
        description="Train, export and verify PyTorch models for the torchbridge C++ runtime (torchbridge-run).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"torchbridge {__version__} (torch {torch.__version__})")
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser(
        "pipeline", help="train digits CNN -> export -> verify in C++ -> bench -> report", formatter_class=fmt
    )
    p.add_argument("--out", help="output folder (default: a new runs/pipeline-<time>)")
    p.add_argument("--model", default="digits_cnn", help="digits_cnn, digits_mlp or a torchvision name")
    p.add_argument("--epochs", type=int, default=5)
    add_threads(p)
    p.add_argument("--bench-runs", type=int, default=50)
    p.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")
    p.add_argument("--prune", choices=PRUNE_METHODS, help="add a pruning stage after training (channels: real removal)")
    p.add_argument("--prune-amount", type=_amount, default=0.5, help="fraction (0.5) or count (100) to prune")
    p.add_argument("--prune-steps", type=int, default=2, help="pruning steps, each followed by fine-tuning")
    p.add_argument("--prune-epochs", type=int, default=2, help="fine-tuning epochs after each pruning step")
    p.add_argument("--quantize", choices=["dynamic", "static", "qat"], help="also make and compare an int8 artifact")
    p.add_argument("--engine", choices=["x86", "fbgemm", "qnnpack"], default="x86", help="quantized engine")
    p.add_argument("--qat-epochs", type=int, default=2, help="fine-tuning epochs for --quantize qat")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("train", help="train a model on the digits with Lightning", formatter_class=fmt)
    p.add_argument("--model", default="digits_cnn")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="output folder (default: a new runs/train-<time>)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    p.add_argument("--devices", default="auto", help="Lightning devices: auto, 1, 2, ...")
    p.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ...")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--detect-anomalies", action="store_true", help="stop at the first NaN/Inf, naming the layer")
    p.add_argument(
        "--activation-stats", type=int, default=0, metavar="N", help="log layer output statistics every N steps"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export a model to TorchScript (.pt) or AOTInductor (.pt2)", formatter_class=fmt)
    p.add_argument(
        "--model", default="digits_cnn", help="digits_cnn, digits_mlp, a torchvision name, or module:factory"
    )
    p.add_argument("--weights", help="a .ckpt from train, or a state dict (.pt)")
    p.add_argument("--out", required=True, help="artifact path, e.g. model.pt")
    p.add_argument("--method", choices=["auto", "script", "trace"], default="auto")
    p.add_argument("--input-shape", type=_shape, default=(2, 1, 8, 8), help="example input shape")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--static", action="store_true", help="fixed batch size (default: dim 0 is dynamic)")
    p.add_argument("--optimize", action="store_true", help="freeze + optimize_for_inference when parity holds")
    p.add_argument(
        "--no-runtime-check",
        action="store_true",
        help="TorchScript: skip running the artifact once in torchbridge-run (which finds runtime passes that crash)",
    )
    p.add_argument(
        "--no-tune",
        action="store_true",
        help="TorchScript: skip timing the runtime's CPU variants (the runtime then tries its built-in order)",
    )
    p.add_argument(
        "--format",
        choices=["torchscript", "aoti", "auto"],
        help="artifact format (default: aoti for a .pt2 path, else torchscript); auto: export both, time both in "
        "the C++ runtime, keep the faster",
    )
    p.add_argument("--isa", choices=["native", "x86-64-v3", "x86-64-v2"], default="native", help="aoti: target CPUs")
    p.add_argument("--max-batch", type=int, default=1024, help="aoti: largest batch the package accepts")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "quantize", help="int8-quantize a model on the digits, export it, verify it in C++", formatter_class=fmt
    )
    p.add_argument("--model", default="digits_cnn", help="digits_cnn, digits_mlp, digits_lstm, a torchvision name")
    p.add_argument("--weights", help="a .ckpt from train, or a state dict (.pt)")
    p.add_argument("--mode", choices=["dynamic", "static", "qat"], default="static")
    p.add_argument("--engine", choices=["x86", "fbgemm", "qnnpack"], default="x86", help="quantized engine")
    p.add_argument("--out", required=True, help="int8 artifact path, e.g. model_int8.pt")
    p.add_argument("--calibration-batches", type=int, default=16, help="static: training batches the observers see")
    p.add_argument("--epochs", type=int, default=2, help="qat: fine-tuning epochs")
    p.add_argument("--lr", type=float, default=1e-4, help="qat: fine-tuning learning rate")
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("verify", help="compare eager, TorchScript and C++ outputs of an artifact", formatter_class=fmt)
    p.add_argument("artifact")
    p.add_argument("--model", help="the eager model (as for export); default: the golden outputs in the artifact")
    p.add_argument("--weights")
    add_threads(p)
    p.add_argument("--fresh", type=int, default=2, help="random input sets besides the golden example")
    p.add_argument("--no-cli", action="store_true", help="skip the torchbridge-run process")
    p.add_argument("--json", action="store_true")
    p.add_argument("--layers", action="store_true", help="compare every submodule in C++ with eager (needs --model)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "prune",
        help="prune a model (masks or real channel removal), fine-tune, export, verify, compare",
        formatter_class=fmt,
    )
    p.add_argument(
        "--model", default="digits_cnn", help="digits_cnn, digits_mlp, a torchvision name, or module:factory"
    )
    p.add_argument("--weights", help="a .ckpt from train, or a state dict (.pt)")
    p.add_argument("--method", choices=PRUNE_METHODS, default="channels", help="channels removes them physically")
    p.add_argument("--amount", type=_amount, default=0.5, help="fraction (0.5) or count (100) to prune")
    p.add_argument("--steps", type=int, default=2, help="prune in this many equal steps, fine-tuning after each")
    p.add_argument("--fine-tune-epochs", type=int, default=2, help="epochs on the digits after each step")
    p.add_argument("--lr", type=float, default=3e-3, help="fine-tuning learning rate")
    p.add_argument("--importance", choices=IMPORTANCES, default="l1", help="channel ranking (method channels)")
    p.add_argument("--layers", default=",".join(DEFAULT_LAYER_TYPES), help="layer types to prune: conv, linear")
    p.add_argument("--skip", action="append", default=[], help="module name to leave dense (repeatable)")
    p.add_argument("--dim", type=int, default=0, help="structured methods: the dim whose slices are pruned")
    p.add_argument("--norm", type=float, default=2, help="ln_structured: the n of the Ln norm")
    p.add_argument("--input-shape", type=_shape, default=(2, 1, 8, 8), help="example input shape")
    p.add_argument("--out", help="output folder (default: a new runs/prune-<time>)")
    add_threads(p)
    p.add_argument("--bench-runs", type=int, default=30, help="C++ latency runs per batch size, before and after")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("info", help="print an artifact's manifest", formatter_class=fmt)
    p.add_argument("artifact")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "bench",
        help="every path side by side (eager, TorchScript, LibTorch, C++, CLI, onnxruntime), or compare artifacts",
        description="With --model (or one artifact and --paths/--out): latency, load time, first call, peak RSS "
        "and size of every way to run the model, interleaved in one process; writes bench.json, bench.md and "
        "bench.png with --out. With artifacts only: compare them in the C++ runtime (ratios vs the first).",
        formatter_class=fmt,
    )
    p.add_argument("artifacts", nargs="*", help="artifacts taking the same inputs; ratios are against the first")
    p.add_argument("--model", help="digits_cnn, digits_mlp, a torchvision name (resnet18), or module:factory")
    p.add_argument("--weights", help="a .ckpt from train, or a state dict (.pt), for --model")
    p.add_argument(
        "--input-shape",
        type=_shape,
        help="one sample's shape, e.g. 3,224,224; unset: 1,8,8 for digits models, 3,224,224 for torchvision names "
        "(3 channels: torchvision's ImageNet model; others: its stem adapted as in `torchbridge export`)",
    )
    p.add_argument("--batch-sizes", type=_shape, default=(1, 32), help="comma-separated")
    add_threads(p)
    p.add_argument("--runs", type=int, help="timed runs (rounds) per batch size; unset: 50, or 100 comparing artifacts")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument(
        "--paths",
        type=_bench_paths,
        help="comma-separated, from eager,torchscript,libtorch,cpp,cli,onnxruntime,pt2 (default: all but pt2; "
        "with only an artifact: torchscript,libtorch,cpp,cli)",
    )
    p.add_argument("--out", help="folder for bench.json, bench.md, bench.png (and the exported artifacts)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "serve",
        help="serve an artifact over HTTP (LitServe): JSON, .npy or .npz bodies, dynamic batching",
        description="POST /predict with JSON ({input name: nested lists}), .npy (application/x-npy) or .npz "
        "(application/x-npz) bodies; GET /health (200 after warm-up), /metrics, /info. See docs/serve.md.",
        formatter_class=fmt,
    )
    p.add_argument("artifact", help="a .pt or .pt2 exported by torchbridge")
    p.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "0.0.0.0", "::"])
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="processes, each with its own copy of the model")
    p.add_argument(
        "--threads",
        type=int,
        help="intra-op threads per worker (default: the cores but one, divided by the workers; at least 1)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=1,
        help="rows per dynamic batch: requests are concatenated along dim 0 (1: no batching)",
    )
    p.add_argument("--batch-timeout", type=float, default=5.0, help="ms a batch waits to fill up")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait before 504")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "triton",
        help="write a Triton Inference Server model (config.pbtxt from the manifest) into a repository",
        description="Writes REPOSITORY/NAME/config.pbtxt, 1/model.pt (libtorch), 1/model.pt2 (aoti) or 1/model.py + "
        "the artifact (python: torchbridge's runtime in Triton's Python backend) and warmup/ (the golden example). "
        "Inputs INPUT__i, outputs OUTPUT__i in the manifest's order. See docs/serve.md.",
        formatter_class=fmt,
    )
    p.add_argument("artifact", help="a .pt or .pt2 exported by torchbridge")
    p.add_argument("--repository", required=True, help="the model repository folder (created if missing)")
    p.add_argument("--name", help="model name (default: the artifact's file name without extension)")
    p.add_argument(
        "--backend", choices=["libtorch", "aoti", "python"], help="default: libtorch for a .pt, aoti for a .pt2"
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="0: no batching (dims include the batch)")
    p.add_argument("--instances", type=int, default=1, help="model instances (instance_group count, KIND_CPU)")
    p.add_argument(
        "--threads", type=int, help="intra-op threads per instance (default: this machine's cores / instances)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing model folder of that name")
    p.set_defaults(func=cmd_triton)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TorchbridgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
