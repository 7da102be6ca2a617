"""What `import torchbridge` costs a serving process: import time and peak RSS against `import torch`.

    python benchmarks/import_cost.py [--runs 7]

Each measurement is a fresh interpreter, the two kinds interleaved, medians reported:
  torch        import torch
  torchbridge  import torchbridge; torchbridge.Runtime(path)(x) on a small exported model
               (the import is timed alone; the peak RSS is taken after the call)
and, for scale, `import torchbridge; torchbridge.train` (which loads Lightning). Prints a table with
the CPU and exits 1 when torchbridge's import is over 1.2x torch's, its peak RSS over torch's + 40 MB,
or Lightning or scikit-learn was loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from torchbridge.bench_report import cpu_name

PROBE = r"""
import json, resource, sys, time
start = time.perf_counter()
{imports}
seconds = time.perf_counter() - start
{after}
print(json.dumps({{"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "lightning": "lightning" in sys.modules, "sklearn": "sklearn" in sys.modules}}))
"""

KINDS = {
    "torch": ("import torch", ""),
    "torchbridge": (
        "import torchbridge",
        "import torch\ntorchbridge.Runtime(sys.argv[1])(torch.rand(2, 1, 8, 8))",
    ),
    "torchbridge + train": ("import torchbridge\ntorchbridge.train", ""),
}




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)

    import torch

    import torchbridge as tb

    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "cnn.pt"
        tb.export(tb.models.digits_cnn().eval(), (torch.rand(2, 1, 8, 8),), artifact)
        results: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for _ in range(args.runs):
            for kind, (imports, after) in KINDS.items():
                probe = PROBE.format(imports=imports, after=after)
                out = subprocess.run(
                    [sys.executable, "-c", probe, str(artifact)], capture_output=True, text=True, check=True
                ).stdout
                results[kind].append(json.loads(out.strip().splitlines()[-1]))

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {args.runs} fresh processes per row, medians")
    print(f"{'what':<22} {'import s':>9} {'peak RSS MB':>12}  Lightning  scikit-learn")
    for kind in KINDS:
        lightning = any(r["lightning"] for r in results[kind])
        sklearn = any(r["sklearn"] for r in results[kind])
        print(
            f"{kind:<22} {median(kind, 'seconds'):>9.3f} {median(kind, 'peak_rss_mb'):>12.0f}  "
            f"{'loaded' if lightning else 'no':<9}  {'loaded' if sklearn else 'no'}"
        )
    time_ratio = median("torchbridge", "seconds") / median("torch", "seconds")
    rss_extra = median("torchbridge", "peak_rss_mb") - median("torch", "peak_rss_mb")
    light = not any(r["lightning"] or r["sklearn"] for r in results["torchbridge"])
    print(f"torchbridge / torch import time: {time_ratio:.2f}x; peak RSS +{rss_extra:.0f} MB (Runtime call included)")
    return 0 if time_ratio <= 1.2 and rss_extra <= 40 and light else 1


if __name__ == "__main__":
    sys.exit(main())
