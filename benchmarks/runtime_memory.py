"""Where the C++ runtime's memory goes call by call (Linux): peak resident memory of each forward
through the bindings, the peak reset before every call (/proc/self/clear_refs), and how much of
what stays resident glibc hands back on malloc_trim (freed activations kept in its heap).

    python benchmarks/runtime_memory.py                  # ResNet-18, batch 1 then 32, 2 threads, fused
    python benchmarks/runtime_memory.py --no-fuse

Per call: "peak +MB" is the call's VmHWM over the resident set before it; the first call at a
new input shape runs the frozen module once unfused for the profiling executor, then compiles the
fused kernels (oneDNN Graph), so it is the one to compare with the later calls.
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
import warnings
from pathlib import Path

import torch
import torchvision

import torchbridge as tb
from torchbridge._warnings import expected_deprecations

warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")


def memory_mb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            fields[line.split(":")[0]] = int(line.split()[1]) // 1024
    return fields


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-fuse", action="store_true")
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    with tempfile.TemporaryDirectory(prefix="torchbridge-memory-") as scratch:
        path = Path(scratch) / "resnet18.pt"
        with expected_deprecations(), torch.no_grad():
            tb.export(model, (torch.randn(1, 3, 224, 224),), path, method="trace")
        del model
        before = memory_mb()["VmRSS"]
        runtime = tb.Runtime(path, threads=args.threads, fuse=not args.no_fuse)
        print(f"load ({runtime.optimization}): +{memory_mb()['VmRSS'] - before} MB resident")
        for batch in args.batch:
            x = torch.randn(batch, 3, 224, 224)
            for call in range(args.calls):
                libc.malloc_trim(0)
                reset_peak()
                resident = memory_mb()["VmRSS"]
                outputs = runtime(x)
                del outputs
                after = memory_mb()
                libc.malloc_trim(0)
                trimmed = memory_mb()["VmRSS"]
                print(
                    f"batch {batch:3d} call {call}: resident before {resident} MB, "
                    f"peak +{after['VmHWM'] - resident} MB, after {after['VmRSS']} MB, "
                    f"{after['VmRSS'] - trimmed} MB of it returned by malloc_trim"
                )


if __name__ == "__main__":
    main()
