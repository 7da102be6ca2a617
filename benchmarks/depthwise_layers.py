"""torchbridge::depthwise_conv (the "channels_last" variant's depthwise kernel) against ATen's
channels-last depthwise convolution (oneDNN), one layer at a time, on the depthwise shapes of
MobileNetV3 and EfficientNet-B0 at batch 1 and a few at batch 32: median ms of --runs calls, in a
memory pool as the runtime runs them. The single-layer figures in docs/performance.md ("The
depthwise kernel on an AVX-512 CPU, and at batch 32") come from this script.

    python benchmarks/depthwise_layers.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

import torchbridge  # noqa: F401  (registers the torchbridge operators)
from torchbridge import _C

# (batch, channels, image side, kernel, stride); padding kernel // 2
SHAPES = [
    (1, 960, 7, 5, 1),
    (1, 1152, 7, 5, 1),
    (1, 672, 14, 5, 1),
    (1, 672, 14, 5, 2),
    (1, 480, 14, 3, 1),
    (1, 120, 28, 5, 1),
    (1, 240, 28, 5, 2),
    (1, 144, 56, 3, 2),
    (1, 64, 112, 3, 2),
    (1, 32, 112, 3, 1),
    (32, 96, 112, 3, 2),
    (32, 144, 56, 3, 1),
    (32, 144, 56, 5, 2),
    (32, 672, 14, 5, 1),
    (32, 1152, 7, 5, 1),
]


def median_ms(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200, help="calls per layer at batch 1 (a tenth at batch 32)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s)\n")
    print("| shape (N x C x H x W, kernel / stride) | kernel ms | ATen ms | kernel / ATen |")
    print("|---|---:|---:|---:|")
    for batch, channels, side, kernel, stride in SHAPES:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, channels, side, side, generator=generator).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(channels, 1, kernel, kernel, generator=generator)
        bias = torch.randn(channels, generator=generator)
        packed = torch.ops.torchbridge.pack_depthwise_weight(weight)
        pad = kernel // 2
        runs = args.runs if batch == 1 else max(3, args.runs // 20)
        with torch.inference_mode(), _C.MemoryPool():
            kernel_op = torch.ops.torchbridge.depthwise_conv
            ours = median_ms(partial(kernel_op, x, weight, packed, bias, [stride, stride], [pad, pad]), runs)
            aten = median_ms(partial(torch.nn.functional.conv2d, x, weight, bias, stride, pad, 1, channels), runs)
        shape = f"{batch}x{channels}x{side}x{side}, {kernel}x{kernel} / {stride}"
        print(f"| {shape} | {ours:.4f} | {aten:.4f} | {ours / aten:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
