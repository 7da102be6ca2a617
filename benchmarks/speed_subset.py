"""The speed subset: the C++ runtime (default tb.export + tb.Runtime) against onnxruntime and eager
PyTorch on the model kinds users bring, at 1 and 2 threads, batch 1 and 32, fp32.

    python benchmarks/speed_subset.py                         # 8 models x 2 thread counts (about 20-40 min on 2 cores)
    python benchmarks/speed_subset.py --models mlp,lstm --threads 1 --runs 20 --out /tmp/speed.md
    python benchmarks/speed_subset.py --threads 1 --pt2     # also the .pt2 (AOTInductor) path: compiles per model

Each model goes through tb.bench (paths eager, cpp, onnxruntime; interleaved round-robin after
warm-up, medians) once per thread count, in a process of its own; cpp is `tb.Runtime(path)` on the
artifact tb.export writes with its defaults, onnxruntime the CPU provider on torch.onnx.export's
graph with the same intra-op threads. Writes --out (default docs/speed.md) and its .json beside it:
p50 per path, C++ / onnxruntime and C++ / eager per model, and their geometric means per thread
count and batch size, with the CPU named. Run it on a quiet machine: the figures are only as good as
the machine is idle (the report records the load average).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_models as zm  # noqa: E402


class TokenEncoder(nn.Module):
    """nn.Embedding + 4 TransformerEncoderLayers (d 256, 4 heads, ffn 1024, batch_first)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(1000, 256)
        layer = nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)

    def forward(self, ids):
        return self.encoder(self.embed(ids))


def _tv(name: str):
    import torchvision

    return lambda: getattr(torchvision.models, name)(), lambda b: (torch.randn(b, 3, 224, 224),)


def _zoo(name: str):
    spec = zm.find(name)
    return spec.build, lambda b: zm.make_inputs(spec.inputs, b, seed=7)


#: name -> (build, inputs at a batch size, description)
MODELS = {
    "resnet18": (*_tv("resnet18"), "torchvision resnet18, 3x224x224"),
    "mobilenet_v3_large": (*_tv("mobilenet_v3_large"), "torchvision mobilenet_v3_large, 3x224x224"),
    "efficientnet_b0": (*_tv("efficientnet_b0"), "torchvision efficientnet_b0, 3x224x224"),
    "transformer_encoder": (
        TokenEncoder,
        lambda b: (torch.randint(0, 1000, (b, 128)),),
        "4-layer nn.TransformerEncoder, d 256, seq 128 (token ids through nn.Embedding)",
    ),
    "lstm": (
        lambda: nn.LSTM(256, 256, num_layers=2, batch_first=True),
        lambda b: (torch.randn(b, 64, 256),),
        "2-layer nn.LSTM 256, seq 64",
    ),
    "mlp": (
        lambda: nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)),
        lambda b: (torch.randn(b, 512),),
        "3-layer MLP 512-1024-1024-10",
    ),
    "hf.bert": (*_zoo("hf.bert"), "Hugging Face BERT (the zoo's small config, seq 32)"),
    "hf.distilbert": (*_zoo("hf.distilbert"), "Hugging Face DistilBERT (the zoo's small config, seq 32)"),
}


def run_one(name: str, threads: int, batches: list[int], runs: int, warmup: int, work: Path, pt2: bool) -> dict:
    """One model at one thread count, in this process: tb.bench's p50 per path and batch."""
    import torchbridge as tb

    build, inputs, _ = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    report = tb.bench(
        model,
        inputs(2),
        batch_sizes=batches,
        threads=threads,
        runs=runs,
        warmup=warmup,
        paths=PATHS + (["pt2"] if pt2 else []),
        out_dir=work,
        progress=False,
        name=name,
    )
    p50 = {f"{path}@{b}": report.p50(path, b) for path in PATHS + ["pt2"] for b in batches if report.p50(path, b)}
    cpp = report.info("cpp")
    runs = {}
    if (work / "model.pt").exists():
        # What the C++ runtime ran at each batch: the variant order export measured.
        runtime = tb.Runtime(work / "model.pt", threads=threads)
        with torch.inference_mode():
            for b in batches:
                example = runtime.example_inputs(dynamic_size=b, seed=0)
                runtime.forward(*example)
                runs[str(b)] = runtime.variant_at(*example)
        # What export measured and chose (the variant order, the batch where it splits, its table).
        chosen = (runtime.manifest or {}).get("runtime", {})
        keys = ("variants", "large_batches", "optimize_from_batch", "measured")
        ranking = {k: chosen[k] for k in keys if k in chosen}
    else:
        ranking = {}
    return {
        "p50_ms": p50,
        "skipped": report.skipped,
        "cpp_note": cpp.note if cpp else None,
        "cpp_runs": runs,
        "export_ranking": ranking,
    }


PATHS = ["eager", "cpp", "onnxruntime"]


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def render(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Speed subset: C++ runtime vs onnxruntime vs eager",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; wall time {meta['wall_min']:.1f} min; load average at start / end "
        f"{meta['load_start']} / {meta['load_end']}  ",
        f"CPU: {meta['cpu']}  ",
        f"torch {torch.__version__}; onnxruntime {meta['onnxruntime']}; torchbridge git {meta['git']}",
        "",
        "Each model through `tb.bench(model, example, paths=['eager', 'cpp', 'onnxruntime'])` (interleaved "
        f"round-robin, {meta['runs']} rounds after {meta['warmup']} warm-up, p50 ms), a process per model and "
        "thread count; cpp is the default `tb.export` + `tb.Runtime`, fp32.",
    ]
    for threads in meta["threads"]:
        for batch in meta["batches"]:
            lines += [
                "",
                f"## {threads} thread(s), batch {batch}",
                "",
                "| model | eager ms | C++ ms | onnxruntime ms | C++ / onnxruntime | C++ / eager | .pt2 ms "
                "| .pt2 / onnxruntime | note |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            vs_ort, vs_eager, pt2_ort = [], [], []
            for row in rows:
                if row["threads"] != threads:
                    continue
                p = row.get("p50_ms", {})
                e, c, o = p.get(f"eager@{batch}"), p.get(f"cpp@{batch}"), p.get(f"onnxruntime@{batch}")
                r_o = c / o if c and o else None
                r_e = c / e if c and e else None
                a = p.get(f"pt2@{batch}")
                r_a = a / o if a and o else None
                vs_ort.append(r_o)
                vs_eager.append(r_e)
                pt2_ort.append(r_a)
                note = row.get("error") or "; ".join(f"{k}: {v}" for k, v in row.get("skipped", {}).items())
                if row.get("cpp_runs", {}).get(str(batch)):
                    note = f"C++ runs {row['cpp_runs'][str(batch)]}" + (f"; {note}" if note else "")
                lines.append(
                    f"| {MODELS[row['model']][2]} | {fmt(e)} | {fmt(c)} | {fmt(o)} | {fmt(r_o, 2)} | {fmt(r_e, 2)} "
                    f"| {fmt(a)} | {fmt(r_a, 2)} | {note[:160]} |"
                )
            lines.append(
                f"| **geometric mean** | | | | **{fmt(geomean(vs_ort), 2)}** | **{fmt(geomean(vs_eager), 2)}** | "
                f"| {fmt(geomean(pt2_ort), 2)} | |"
            )
    return "\n".join(lines) + "\n"


def describe_cpu(cpu: dict) -> str:
    flags = ", ".join(
        f"{flag} {'yes' if cpu[flag] else 'no'}" for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile")
    )
    return f"{cpu['model']}, {cpu['cores']} cores; {flags}; torch CPU capability {cpu['torch_capability']}"


def fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "speed.md"))
    parser.add_argument("--pt2", action="store_true", help="also the C++ runtime on an AOTInductor .pt2 (compiles)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # NAME:THREADS, run in this process, JSON on stdout
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.one:
        name, threads = args.one.split(":")
        with tempfile.TemporaryDirectory() as work:
            row = run_one(name, int(threads), batches, args.runs, args.warmup, Path(work), args.pt2)
            print(json.dumps(row))
        return 0

    from zoo import cpu_info

    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    threads_list = [int(t) for t in args.threads.split(",")]
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    meta = {
        "command": "python benchmarks/speed_subset.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": describe_cpu(cpu_info()),
        "onnxruntime": ort_version,
        "git": git.stdout.strip() or "unknown",
        "threads": threads_list,
        "batches": batches,
        "runs": args.runs,
        "warmup": args.warmup,
        "load_start": round(os.getloadavg()[0], 2),
    }
    start = time.time()
    rows = []
    out = Path(args.out)
    for threads in threads_list:
        for name in models:
            command = [sys.executable, __file__, "--one", f"{name}:{threads}", "--batches", args.batches]
            command += ["--runs", str(args.runs), "--warmup", str(args.warmup)] + (["--pt2"] if args.pt2 else [])
            began = time.time()
            done = subprocess.run(command, capture_output=True, text=True)
            row = {"model": name, "threads": threads, "seconds": round(time.time() - began, 1)}
            if done.returncode == 0:
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                tail = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                row["error"] = f"exit {done.returncode}: {tail}"
            rows.append(row)
            p = row.get("p50_ms", {})
            shown = ", ".join(f"{k} {v:.3f}" for k, v in p.items() if v is not None) or row.get("error", "")
            print(f"{name:22s} {threads} thread(s) {row['seconds']:7.1f}s  {shown}", flush=True)
            meta.update(wall_min=(time.time() - start) / 60, load_end=round(os.getloadavg()[0], 2))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(render(rows, meta))
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
