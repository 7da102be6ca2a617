"""The `torchbridge` command: pipeline, train, export, verify, info, bench."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
from torch import nn

from torchbridge.errors import ParityError, TorchbridgeError


def resolve_model(spec: str, weights: str | None = None) -> nn.Module:
    """'digits_cnn', 'digits_mlp', a torchvision name, or 'package.module:factory'."""
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
        model = models.create(spec)
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
    )
    return 0 if report["parity"]["passed"] else 1


def cmd_train(args) -> int:
    from torchbridge.data import DigitsDataModule
    from torchbridge.pipeline import claim_output_dir, new_run_dir
    from torchbridge.train import train

    out = claim_output_dir(args.out) if args.out else new_run_dir(prefix="train")
    model = resolve_model(args.model)
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
    options = (
        {"isa": args.isa, "dynamic_range": (1, args.max_batch)} if format_for(args.out, args.format) == "aoti" else {}
    )
    if not options and (args.isa != "native" or args.max_batch != 1024):
        raise TorchbridgeError("--isa and --max-batch apply to the aoti format (.pt2)")
    artifact = export(
        model,
        (example,),
        args.out,
        method=args.method,
        dynamic_dims=[[]] if args.static else None,
        optimize=args.optimize,
        format=args.format,
        **options,
    )
    print(f"wrote {artifact.path} ({artifact.size_bytes / 1024:.1f} KiB, method {artifact.manifest['method']})")
    for spec in artifact.inputs:
        print(f"  input  {spec}")
    for spec in artifact.outputs:
        print(f"  output {spec}")
    for note in artifact.manifest["notes"]:
        print(f"  note: {note}")
    return 0


def cmd_verify(args) -> int:
    from torchbridge.verify import verify

    model = resolve_model(args.model, args.weights) if args.model else None
    try:
        report = verify(model, args.artifact, threads=args.threads, fresh=args.fresh, cli=not args.no_cli)
    except ParityError as error:
        report = error.report
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.table())
    return 0 if report.passed else 1


def cmd_info(args) -> int:
    from torchbridge.export import load_manifest

    manifest = load_manifest(args.artifact)
    if manifest is None:
        print(f"{args.artifact}: exported without torchbridge, no manifest")
        return 0
    print(json.dumps(manifest, indent=2))
    return 0


def cmd_bench(args) -> int:
    from torchbridge.bench import as_dicts, compare_artifacts, ratio_table

    artifacts = {}
    for path in args.artifacts:
        label = Path(path).name
        while label in artifacts:
            label = "_" + label
        artifacts[label] = path
    timings, results = compare_artifacts(
        artifacts, batch_sizes=args.batch_sizes, threads=args.threads, runs=args.runs, warmup=args.warmup
    )
    if args.json:
        print(json.dumps({"artifacts": [vars(t) for t in timings], "latency": as_dicts(results)}, indent=2))
        return 0
    for t in timings:
        print(f"{t.label}: {t.format}, {t.bytes / 1024:.1f} KiB, C++ load {t.load_ms:.1f} ms")
    print(f"C++ runtime, {args.threads} threads, {args.runs} interleaved runs per artifact and batch size")
    print(ratio_table(results, baseline=timings[0].label))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from torchbridge import __version__

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
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bench-runs", type=int, default=50)
    p.add_argument("--no-progress", action="store_true", help="hide Lightning's progress bar")
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
        "--format",
        choices=["torchscript", "aoti"],
        help="artifact format (default: aoti for a .pt2 path, else torchscript)",
    )
    p.add_argument("--isa", choices=["native", "x86-64-v3", "x86-64-v2"], default="native", help="aoti: target CPUs")
    p.add_argument("--max-batch", type=int, default=1024, help="aoti: largest batch the package accepts")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="compare eager, TorchScript and C++ outputs of an artifact", formatter_class=fmt)
    p.add_argument("artifact")
    p.add_argument("--model", help="the eager model (as for export); default: the golden outputs in the artifact")
    p.add_argument("--weights")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fresh", type=int, default=2, help="random input sets besides the golden example")
    p.add_argument("--no-cli", action="store_true", help="skip the torchbridge-run process")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("info", help="print an artifact's manifest", formatter_class=fmt)
    p.add_argument("artifact")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "bench", help="compare artifacts (e.g. model.pt vs model.pt2) in the C++ runtime", formatter_class=fmt
    )
    p.add_argument("artifacts", nargs="+", help="artifacts taking the same inputs; ratios are against the first")
    p.add_argument("--batch-sizes", type=_shape, default=(1, 32), help="comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
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
