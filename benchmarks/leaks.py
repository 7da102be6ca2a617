"""Leak check: RSS drift over many forward calls, and over many load/destroy cycles of a Runtime.

    python benchmarks/leaks.py ARTIFACT [--calls 10000] [--cycles 200] [--max-drift 0.01]

Each phase warms up first (the first calls and loads grow caches: oneDNN kernels, the allocator's
pools, LibTorch's one-time state), then measures the resident set size from /proc before and after
the measured calls; drift = (after - before) / before. Prints one line per phase and exits 1 when a
drift exceeds --max-drift. The CI runs reduced counts (tests/test_stress.py); the figures in
docs/trust.md come from the full counts.
"""

from __future__ import annotations

import argparse
import gc
import sys

import torch

import torchbridge as tb


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--max-drift", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    failed = False

    runtime = tb.Runtime(args.artifact, threads=args.threads)
    inputs = runtime.example_inputs(2)
    warmup = max(100, args.calls // 10)
    for _ in range(warmup):
        runtime(*inputs)
    gc.collect()
    before = rss_bytes()
    for _ in range(args.calls):
        runtime(*inputs)
    gc.collect()
    after = rss_bytes()
    drift = (after - before) / before
    failed |= drift > args.max_drift
    print(
        f"forward: {args.calls} calls after {warmup} warm-up: RSS {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB, drift {drift:+.2%}"
    )
    del runtime

    warm_cycles = max(10, args.cycles // 10)
    for _ in range(warm_cycles):
        tb.Runtime(args.artifact, threads=args.threads)(*inputs)
    gc.collect()
    before = rss_bytes()
    for _ in range(args.cycles):
        tb.Runtime(args.artifact, threads=args.threads)(*inputs)
    gc.collect()
    after = rss_bytes()
    drift = (after - before) / before
    failed |= drift > args.max_drift
    per_cycle = (after - before) / max(args.cycles, 1) / 1024
    print(
        f"load/destroy: {args.cycles} cycles after {warm_cycles} warm-up: RSS {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MiB, drift {drift:+.2%} ({per_cycle:+.1f} KiB per cycle)"
    )
    print("leaks: " + ("FAIL" if failed else "ok") + f" (max drift {args.max_drift:.0%})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
