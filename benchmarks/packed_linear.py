"""torchbridge::packed_linear (the "rowwise" variant's GEMM on a weight packed once) against
F.linear, per shape, at 1 and 2 threads: medians of --runs calls, best of three passes, in us.
The table in docs/performance.md ("linear layers on a few dozen rows") comes from this script."""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch

import torchbridge  # noqa: F401  (registers the torchbridge operators)
from torchbridge import _C

SHAPES = [
    (32, 64, 64),
    (32, 256, 1024),
    (32, 512, 1024),
    (32, 1024, 1024),
    (128, 256, 1024),
    (128, 1024, 256),
    (1024, 64, 256),
    (1024, 96, 16),
]


def median_us(call, runs: int) -> float:
    for _ in range(runs // 10):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    if not _C.rowwise_available():
        raise SystemExit("this CPU has no AVX2+FMA kernel: packed_linear is aten::linear here")
    op = torch.ops.torchbridge
    print("| rows x K x N | threads | F.linear us | packed us | packed / F.linear |")
    print("|---|---:|---:|---:|---:|")
    torch.manual_seed(0)
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for rows, k, n in SHAPES:
                x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
                packed = op.pack_linear_weight(w)
                linear = partial(torch.nn.functional.linear, x, w, b)
                packed_linear = partial(op.packed_linear, x, w, packed, b)
                aten = min(median_us(linear, args.runs) for _ in range(3))
                ours = min(median_us(packed_linear, args.runs) for _ in range(3))
                print(f"| {rows} x {k} x {n} | {threads} | {aten:.1f} | {ours:.1f} | {ours / aten:.2f} |", flush=True)


if __name__ == "__main__":
    main()
