"""Many threads on one Runtime, and long runs: no errors, no wrong answers, no leaks.

CI runs reduced counts; the full ones (8 threads x 1000 calls; 10,000 calls and 200 load/destroy
cycles for the leak check) with TORCHBRIDGE_STRESS=full or benchmarks/leaks.py.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import torch

import torchbridge as tb

FULL = os.environ.get("TORCHBRIDGE_STRESS") == "full"
ROOT = Path(__file__).resolve().parents[1]


def test_threads_share_one_runtime_at_mixed_and_new_batch_sizes(cnn_artifact):
    """8 threads call one Runtime at random batch sizes from 1 to 40, so new shapes are compiled
    (oneDNN Graph, the per-shape check) while other threads run: every output must match eager."""
    model, path = cnn_artifact
    runtime = tb.Runtime(path)
    calls = 1000 if FULL else 60
    sizes = list(range(1, 41))
    generator = torch.Generator().manual_seed(0)
    inputs = {n: torch.rand(n, 1, 8, 8, generator=generator) for n in sizes}
    with torch.no_grad():
        expected = {n: model(x) for n, x in inputs.items()}
    errors: list[str] = []
    mismatches: list[str] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        order = random.Random(seed)
        start.wait()
        for _ in range(calls):
            n = order.choice(sizes)
            try:
                out = runtime(inputs[n])
            except Exception as error:  # noqa: BLE001 - every failure is a finding here
                errors.append(f"batch {n}: {error}")
                continue
            scale = expected[n].abs().max().item()
            if not torch.allclose(out, expected[n], rtol=0, atol=1e-5 * max(scale, 1e-6)):
                mismatches.append(f"batch {n}: max diff {(out - expected[n]).abs().max().item():.3g}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"{len(errors)} of {8 * calls} calls raised: {errors[:3]}"
    assert not mismatches, f"{len(mismatches)} of {8 * calls} calls differ from eager: {mismatches[:3]}"


def test_no_leak_over_calls_and_load_destroy_cycles(cnn_artifact):
    """benchmarks/leaks.py in a process of its own: RSS drift under 1 % over the measured calls
    and load/destroy cycles, after a warm-up."""
    _, path = cnn_artifact
    counts = [] if FULL else ["--calls", "2000", "--cycles", "40"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "leaks.py"), str(path), *counts],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
