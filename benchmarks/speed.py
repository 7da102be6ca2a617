"""Every path side by side (tb.bench) on two models; regenerates the reports in docs/bench/.

    python benchmarks/speed.py                      # both models, 2 threads, batch 1 and 32 (5-15 min on 2 cores)
    python benchmarks/speed.py --only digits_cnn --runs 20 --out /tmp/bench    # a quick check

Writes docs/bench/digits_cnn/ and docs/bench/resnet18/ (bench.json, bench.md, bench.png), each the
same as `torchbridge bench --model NAME --paths eager,torchscript,libtorch,cpp,cli,onnxruntime,pt2
--batch-sizes 1,32 --threads 2 --out DIR` (with the runs below):

- digits_cnn: the digits CNN with random weights (seed 0; latency does not depend on training),
  input 1x8x8 (the example is real digits), 200 interleaved rounds per batch size after 20 warm-up;
- resnet18: torchvision's ResNet-18 with random weights, ImageNet shape 3x224x224, 1000 classes,
  30 rounds after 5 warm-up.

Paths: eager, torchscript, libtorch, cpp (bindings), cli (torchbridge-run), onnxruntime and pt2
(the C++ runtime on an AOTInductor export; compiling ResNet-18 takes a minute or two). The exported
artifacts (.pt, .onnx, .pt2) are deleted afterwards, their sizes stay in bench.json
(--keep-artifacts keeps them).

Run it on a quiet machine: every path is timed round-robin in one process so that noise hits all
alike, but on a 2-core machine shared with other jobs two OpenMP threads wait on each other
whenever one is descheduled, and p50s scatter by 2-10x. bench.md records the load average at the
start and the end of each run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import torchbridge as tb
from torchbridge.cli import bench_model

PATHS = ["eager", "torchscript", "libtorch", "cpp", "cli", "onnxruntime", "pt2"]
# name -> (runs, warm-up); bench_model builds each as `torchbridge bench --model NAME` does.
MODELS = {"digits_cnn": (200, 20), "resnet18": (30, 5)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/bench", help="one folder per model is written under it")
    parser.add_argument("--only", choices=sorted(MODELS), action="append", help="run only this model (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--runs", type=int, help="override the rounds per batch size of every model")
    parser.add_argument("--warmup", type=int, help="override the warm-up calls of every model")
    parser.add_argument("--no-pt2", action="store_true", help="skip the AOTInductor export (minutes for ResNet-18)")
    parser.add_argument("--keep-artifacts", action="store_true", help="keep model.pt, model.onnx, model.pt2")
    args = parser.parse_args()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    paths = [p for p in PATHS if not (args.no_pt2 and p == "pt2")]
    for name in args.only or list(MODELS):
        runs, warmup = MODELS[name]
        out = Path(args.out) / name
        print(f"== {name} -> {out}", file=sys.stderr, flush=True)
        torch.manual_seed(0)
        model, example = bench_model(name, None, None)
        report = tb.bench(
            model,
            (example,),
            batch_sizes=batch_sizes,
            threads=args.threads,
            runs=args.runs or runs,
            warmup=args.warmup if args.warmup is not None else warmup,
            paths=paths,
            out_dir=out,
            name=name,
        )
        if not args.keep_artifacts:
            for artifact in ("model.pt", "model.onnx", "model.pt2"):
                (out / artifact).unlink(missing_ok=True)
        print(f"\n{name}\n{report.table()}\nwrote {out}/bench.json, bench.md, bench.png\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
