"""The model zoo: does every model a user may bring run right through torchbridge's default path?

    python benchmarks/zoo.py --subset fast        # 20 models spanning every family and output structure (CI)
    python benchmarks/zoo.py --jobs 2 --work-dir /tmp/zoo   # the full zoo, 167 models (hours on 2 cores)
    python benchmarks/zoo.py --jobs 2 --work-dir /tmp/zoo --resume   # after an interruption: the rest
    python benchmarks/zoo.py --family nn,transformers --pt2 --speed --threads 2
    python benchmarks/zoo.py --models tv.resnet18,hf.bert --out /tmp/zoo.md
    python benchmarks/zoo.py --one timm.resnet18 --mode default     # one model in this process (debugging)

Needs timm==1.0.31 and transformers==5.23.0 besides requirements-dev.txt. Nothing is downloaded:
every model has random weights (benchmarks/zoo_models.py lists them and the wrappers some need).

Each model runs in a subprocess of its own, so a crash, hang or OOM costs one row (--timeout,
default 600 s per step; "timeout" and "crashed (SIGNAL)" are results like any other):
1. build it (torch.manual_seed(0), eval) and an example at batch 2; over 60 M parameters it is
   skipped and listed as skipped by size;
2. tb.export(model, example, "model.pt") with default arguments (method auto);
3. tb.Runtime(path) with default options at batch 2, 1 and 3, on fresh inputs of the same kind,
   against eager model(*inputs) under no_grad: max rel = the largest, over output tensors, of
   max|cpp - eager| / max|eager|; then tb.verify(model, path) as a user runs it (--no-verify skips
   it). PASS: export worked, every batch ran, max rel <= 1e-4, and verify passed;
4. when 3 fails (or crashes), tb.Runtime(path, optimize=False) in a new process at the same
   batches: "fast path only" when that passes, "everywhere" when it fails too.
--pt2: PT2_MODELS are also exported to .pt2 (torch.export + AOTInductor, minutes per model; own
  timeout --pt2-timeout) and run by tb.Runtime at batch 2 (and 1, 3 when dynamic); INT8_MODELS are
  quantized with tb.quantize(model, mode="dynamic"), exported to .pt and run by tb.Runtime, compared
  with the int8 model in eager (<= 1e-4) and with the float model (<= 0.1).
--speed: p50 at batch 1 of eager, tb.Runtime and onnxruntime (torch.onnx.export, CPU provider),
  --threads threads each (default 1), interleaved, after warm-up. Speed steps run one at a time.
Correctness steps use torch's default thread count (--jobs N > 1 runs N models at once, each with
cores / N threads). Writes docs/zoo.md and docs/zoo.json (--out), rewritten after every model;
prints one line per model; exits 1 when any model fails. Logs and artifacts go to --work-dir;
--report-only docs/zoo.json rewrites the report from its JSON without running anything.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_models as zm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPORT_BATCH = 2
BATCHES = (2, 1, 3)
REL_TOL = 1e-4  # C++ runtime against eager, fp32
INT8_FLOAT_TOL = 0.1  # dynamic int8 against the float model: quantization error, not a runtime error
MODES = ("default", "plain", "pt2", "int8", "speed")

# ------------------------------------------------------------------------------------ comparisons


def flatten(value) -> list[torch.Tensor]:
    """Every tensor in a (nested) output, in order; None and other non-tensors are skipped. Dicts
    (and Hugging Face ModelOutputs, which are dicts) contribute their values in insertion order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in flatten(item)]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in flatten(item)]
    return []


def tensor_rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected| (NaN matching NaN counts as equal); inf for a shape or
    dtype mismatch, or a difference where `expected` is all zeros."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return math.inf
    if actual.is_quantized:
        actual = actual.dequantize()
    if expected.is_quantized:
        expected = expected.dequantize()
    if expected.numel() == 0:
        return 0.0
    a, e = actual.detach().cpu().double(), expected.detach().double()
    same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    diff = float(torch.where(same, torch.zeros_like(a), (a - e).abs()).nan_to_num(nan=math.inf).max())
    finite = e[torch.isfinite(e)]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    if scale > 0:
        return diff / scale
    return 0.0 if diff == 0 else math.inf


def max_rel(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> tuple[float, str]:
    """The largest tensor_rel over the outputs, and which output and shapes it was."""
    if len(actual) != len(expected):
        raise ValueError(f"the C++ runtime returned {len(actual)} tensor(s), the eager model {len(expected)}")
    worst, where = 0.0, ""
    for i, (a, e) in enumerate(zip(actual, expected)):
        rel = tensor_rel(a, e)
        if rel > worst or (i == 0 and rel == 0.0):
            worst = rel
            where = f"output {i}: cpp {tuple(a.shape)} {a.dtype}, eager {tuple(e.shape)} {e.dtype}"
    return worst, where


def eager(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return flatten(model(*inputs))


def first_line(error: BaseException) -> str:
    """The error's type and the first line of its message; its traceback goes to the step's log."""
    traceback.print_exception(error, file=sys.stderr)
    name = type(error).__name__
    if name == "Error" and type(error).__module__.startswith("torchbridge"):
        name = "TorchbridgeError"  # torchbridge._C.Error, as torchbridge exports it
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{name}: {lines[0] if lines else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------- the worker


class Recorder:
    """The result a worker writes, saved after every stage: a crash or a timeout leaves what was
    done and the stage it happened in."""

    def __init__(self, path: Path | None, row: dict):
        self.path, self.row = path, row

    def stage(self, name: str) -> None:
        self.row["stage"] = name
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.row, indent=1, default=str))
        os.replace(temporary, self.path)


def import_torchbridge():
    """torchbridge, retried for a few minutes: a concurrent `pip install .` replaces it briefly."""
    for attempt in range(10):
        try:
            import torchbridge

            return torchbridge
        except ImportError as error:
            if attempt == 9:
                raise
            print(f"import torchbridge failed ({error}); retrying in 30 s", file=sys.stderr, flush=True)
            time.sleep(30)


def build_model(spec: zm.ModelSpec):
    torch.manual_seed(0)
    return spec.build().eval()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def run_batches(tb, path: Path, model, spec, rec: Recorder, key: str, batches=BATCHES, reference=None, **options):
    """tb.Runtime(path, **options) at each batch size against eager `model` (and, for int8, also
    against the float `reference`). Fills rec.row[key]; returns whether it passed."""
    section = rec.row[key] = {"options": options, "batches": {}, "error": None, "passed": False}

    def fail(stage: str, message: str) -> None:
        if section["error"] is None:
            section["error"] = {"stage": stage, "message": message}
        rec.save()

    rec.stage(f"{key}: load")
    try:
        start = time.perf_counter()
        runtime = tb.Runtime(path, **options)
        section["load_s"] = round(time.perf_counter() - start, 2)
    except Exception as error:
        fail("load", first_line(error))
        return False
    for attribute in ("optimization", "optimized_from_batch"):
        try:
            section[attribute] = getattr(runtime, attribute)
        except Exception as error:
            section[attribute] = f"? ({first_line(error)})"
    for batch in batches:
        entry = section["batches"][str(batch)] = {}
        inputs = zm.make_inputs(spec.inputs, batch, seed=100 + batch)
        rec.stage(f"{key}: eager b{batch}")
        try:
            expected = eager(model, inputs)
            floats = eager(reference, inputs) if reference is not None else None
        except Exception as error:
            entry["error"] = f"eager model: {first_line(error)}"
            fail(f"eager b{batch}", entry["error"])
            continue
        rec.stage(f"{key}: run b{batch}")
        try:
            start = time.perf_counter()
            actual = runtime.forward(*inputs)
            entry["first_call_ms"] = round((time.perf_counter() - start) * 1000, 2)
            entry["max_rel"], entry["worst"] = max_rel(actual, expected)
            if floats is not None:
                entry["max_rel_vs_float"], _ = max_rel(actual, floats)
        except Exception as error:
            entry["error"] = first_line(error)
            fail(f"run b{batch}", entry["error"])
            continue
        if entry["max_rel"] > REL_TOL:
            fail(f"parity b{batch}", f"max rel {entry['max_rel']:.3g} > {REL_TOL:g} ({entry['worst']})")
        if floats is not None and entry["max_rel_vs_float"] > INT8_FLOAT_TOL:
            fail(f"parity b{batch}", f"int8 vs float max rel {entry['max_rel_vs_float']:.3g} > {INT8_FLOAT_TOL:g}")
    try:  # what the runtime ended up running at each shape it met (it may fall back per shape)
        section["optimization_at_load"], section["optimization"] = section["optimization"], runtime.optimization
    except Exception as error:
        section["optimization_after_runs"] = f"? ({first_line(error)})"
    section["passed"] = section["error"] is None
    rec.save()
    return section["passed"]


def artifact_path(work_dir: Path, name: str, suffix: str) -> Path:
    return work_dir / "artifacts" / f"{name}{suffix}"


def mode_default(tb, spec, rec: Recorder, work_dir: Path, args) -> None:
    row = rec.row
    rec.stage("size")
    count, counted = zm.parameter_count(spec)
    if count is not None and count > zm.SIZE_LIMIT:
        row.update(status="skipped", params=count, params_counted=counted)
        return
    rec.stage("build")
    model = build_model(spec)
    row["params"] = count_params(model)
    if row["params"] > zm.SIZE_LIMIT:
        row.update(status="skipped", params_counted="built")
        return
    example = zm.make_inputs(spec.inputs, EXPORT_BATCH, seed=0)
    path = artifact_path(work_dir, spec.name, ".pt")
    rec.stage("export")
    try:
        start = time.perf_counter()
        artifact = tb.export(model, example, path)
        row["export"] = {
            "method": artifact.manifest.get("method"),
            "seconds": round(time.perf_counter() - start, 1),
            "notes": artifact.manifest.get("notes", []),
            "optimize_from_batch": artifact.manifest.get("runtime", {}).get("optimize_from_batch"),
        }
    except Exception as error:
        row.update(status="fail", cause={"stage": "export", "message": first_line(error)})
        return
    passed = run_batches(tb, path, model, spec, rec, "default")
    if passed and not getattr(args, "no_verify", False):
        passed = verify_step(tb, model, path, rec)
    row["status"] = "pass" if passed else "fail"
    row["cause"] = None if passed else row["default"]["error"]


def verify_step(tb, model, path: Path, rec: Recorder) -> bool:
    """tb.verify as a user runs it (golden example + 2 fresh input sets, eager / TorchScript in
    Python / C++): its own tolerance, and TorchScript-in-Python vs C++ bit for bit."""
    rec.stage("verify")
    section = rec.row["verify"] = {"passed": False}
    try:
        start = time.perf_counter()
        report = tb.verify(model, path, fresh=2, cli=False, raise_on_failure=False)
        section.update(passed=report.passed, seconds=round(time.perf_counter() - start, 1))
        section["eager_cpp_max_rel"] = report.worst("eager", "cpp")[1]
        failures = [r for r in report.rows if not r.passed]
        if failures:
            r = failures[0]
            message = (
                f"{r.inputs}: {r.reference} vs {r.candidate} output {r.output} max rel {r.max_rel:.3g} "
                f"(rtol {r.rtol:g}, atol {r.atol:.3g})"
            )
            rec.row["default"]["error"] = {"stage": "verify", "message": message}
    except Exception as error:
        rec.row["default"]["error"] = {"stage": "verify", "message": first_line(error)}
    rec.save()
    return bool(section["passed"])


def mode_plain(tb, spec, rec: Recorder, work_dir: Path, args) -> None:
    path = artifact_path(work_dir, spec.name, ".pt")
    if not path.exists():
        raise SystemExit(f"{path} is missing: the default step exports it")
    passed = run_batches(tb, path, build_model(spec), spec, rec, "plain", optimize=False)
    rec.row["status"] = "pass" if passed else "fail"


def mode_pt2(tb, spec, rec: Recorder, work_dir: Path, args) -> None:
    model = build_model(spec)
    path = artifact_path(work_dir, spec.name, ".pt2")
    rec.stage("pt2 export")
    try:
        start = time.perf_counter()
        artifact = tb.export(model, zm.make_inputs(spec.inputs, EXPORT_BATCH, seed=0), path)
        rec.row["pt2_export_s"] = round(time.perf_counter() - start, 1)
    except Exception as error:
        rec.row.update(status="fail", pt2={"error": {"stage": "pt2 export", "message": first_line(error)}})
        return
    dynamic = artifact.manifest["inputs"][0]["shape"][0] is None
    passed = run_batches(tb, path, model, spec, rec, "pt2", batches=BATCHES if dynamic else (EXPORT_BATCH,))
    rec.row["pt2"]["dynamic"] = dynamic
    rec.row["status"] = "pass" if passed else "fail"


def mode_int8(tb, spec, rec: Recorder, work_dir: Path, args) -> None:
    model = build_model(spec)
    rec.stage("int8 quantize")
    try:
        quantized = tb.quantize(model, mode="dynamic")
        path = artifact_path(work_dir, spec.name, ".int8.pt")
        rec.stage("int8 export")
        tb.export(quantized, zm.make_inputs(spec.inputs, EXPORT_BATCH, seed=0), path)
    except Exception as error:
        rec.row.update(status="fail", int8={"error": {"stage": rec.row["stage"], "message": first_line(error)}})
        return
    passed = run_batches(tb, path, quantized, spec, rec, "int8", reference=model)
    rec.row["status"] = "pass" if passed else "fail"


def onnx_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def mode_speed(tb, spec, rec: Recorder, work_dir: Path, args) -> None:
    from torchbridge.timing import time_interleaved

    torch.set_num_threads(args.threads)
    model = build_model(spec)
    inputs = zm.make_inputs(spec.inputs, 1, seed=7)
    expected = eager(model, inputs)
    speed = rec.row["speed"] = {"threads": args.threads, "runs": args.runs, "warmup": args.warmup}
    paths = {"eager": lambda: eager(model, inputs)}

    path = artifact_path(work_dir, spec.name, ".pt")
    rec.stage("speed: C++")
    try:
        if not path.exists():
            tb.export(model, zm.make_inputs(spec.inputs, EXPORT_BATCH, seed=0), path)
        runtime = tb.Runtime(path, threads=args.threads)
        speed["cpp_max_rel"], _ = max_rel(runtime.forward(*inputs), expected)
        paths["cpp"] = lambda: runtime.forward(*inputs)
    except Exception as error:
        speed["cpp_error"] = first_line(error)

    rec.stage("speed: onnx export")
    onnx_path = artifact_path(work_dir, spec.name, ".onnx")
    try:
        names = [f"input_{i}" for i in range(len(inputs))]
        torch.onnx.export(
            model, inputs, str(onnx_path), dynamo=True, external_data=False, verbose=False, input_names=names
        )
        session = onnx_session(onnx_path, args.threads)
        feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
        outputs = [torch.from_numpy(o) for o in session.run(None, feed)]
        speed["ort_max_rel"], _ = max_rel(outputs, expected)
        paths["onnxruntime"] = lambda: session.run(None, feed)
    except Exception as error:
        speed["ort_error"] = first_line(error)

    rec.stage("speed: timing")
    samples = time_interleaved(paths, args.runs, args.warmup)
    for name, values in samples.items():
        speed[f"{name}_p50_ms"] = round(statistics.median(values), 3)
    rec.row["status"] = "pass"


MODE_FUNCTIONS = {"default": mode_default, "plain": mode_plain, "pt2": mode_pt2, "int8": mode_int8, "speed": mode_speed}


def build_stamp(tb) -> str:
    """When the installed native module was built (the runtime may be rebuilt during a long run)."""
    try:
        mtime = Path(tb._C.__file__).stat().st_mtime
        return datetime.datetime.fromtimestamp(mtime).isoformat(timespec="seconds")
    except Exception:
        return "unknown"


def worker(args) -> int:
    spec = zm.find(args.one)
    rec = Recorder(Path(args.json_out) if args.json_out else None, {"name": spec.name, "mode": args.mode})
    rec.stage("import")
    tb = import_torchbridge()
    rec.row["torchbridge_build"] = build_stamp(tb)
    rec.row["cpu"] = cpu_label(cpu_info())
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="torchbridge-zoo-"))
    (work_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        MODE_FUNCTIONS[args.mode](tb, spec, rec, work_dir, args)
    except Exception as error:  # building the model, quantizing, ...: a failure of this step at this stage
        error = {"stage": rec.row.get("stage"), "message": first_line(error)}
        rec.row["status"] = "fail"
        if args.mode == "default":
            rec.row["cause"] = error
        else:
            section = rec.row.setdefault(args.mode, {})
            section.update(passed=False, error=section.get("error") or error)
    rec.row["seconds"] = round(time.perf_counter() - start, 1)
    rec.row["stage"] = "done"
    rec.row["complete"] = True
    rec.save()
    if not args.json_out:
        print(json.dumps(rec.row, indent=1, default=str))
    return 0


# ---------------------------------------------------------------------------------------- the driver


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


#: Imported once by the fork server that starts every step: a step then starts in a fraction of a
#: second instead of the ~10 s these imports take. torchbridge itself is imported by each step, so
#: every step runs the build installed at the time.
PRELOAD = ["torch", "numpy", "torchvision", "lightning", "timm", "transformers", "zoo_models"]
_context = None
_running: set[int] = set()  # process groups of the steps in flight, killed if the driver is interrupted
_stopping = threading.Event()  # set on an interrupt: rows of the steps killed then are not results


def step_context():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def step_main(options: dict, log: str, threads: int | None) -> None:
    """A step's process: its own session (a timeout kills what it started too), output to `log`."""
    os.setsid()
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    if threads:
        torch.set_num_threads(threads)
    sys.exit(worker(argparse.Namespace(**options)))


def run_step(spec: zm.ModelSpec, mode: str, args, work_dir: Path, timeout: int, threads: int | None) -> dict:
    """One step in a process of its own; its row, with "outcome" = "complete", "timeout" or "crashed (...)"."""
    json_out = work_dir / "rows" / f"{spec.name}.{mode}.json"
    log = work_dir / "logs" / f"{spec.name}.{mode}.log"
    json_out.unlink(missing_ok=True)
    options = {"one": spec.name, "mode": mode, "json_out": str(json_out), "work_dir": str(work_dir)}
    options.update(threads=args.threads, runs=args.runs, warmup=args.warmup, no_verify=args.no_verify)
    start = time.perf_counter()
    process = step_context().Process(target=step_main, args=(options, str(log), threads), daemon=False)
    process.start()
    _running.add(process.pid)
    process.join(timeout)
    timed_out = process.is_alive()
    if timed_out:
        kill_group(process.pid)  # the step and what it started (inductor's compile workers)
        process.join()
    _running.discard(process.pid)
    code = process.exitcode
    try:
        row = json.loads(json_out.read_text())
    except (OSError, ValueError):
        row = {"name": spec.name, "mode": mode, "stage": "start"}
    row["wall_s"] = round(time.perf_counter() - start, 1)
    row["log"] = str(log)
    if timed_out:
        row["outcome"] = "timeout"
        row["crash"] = {
            "stage": row.get("stage"),
            "message": f"no result after {timeout} s (in stage {row.get('stage')})",
        }
    elif row.get("complete"):
        row["outcome"] = "complete"
    else:
        what = signal_name(-code) if code < 0 else f"exit {code}"
        row["outcome"] = f"crashed ({what})"
        row["crash"] = {
            "stage": row.get("stage"),
            "message": f"crashed ({what}) in stage {row.get('stage')}: {last_line(log)}",
        }
    return row


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_model(spec: zm.ModelSpec, args, work_dir: Path, threads: int | None, extra_modes: list[str]) -> dict:
    """Every step of one model; the merged row."""
    start = time.perf_counter()
    row = run_step(spec, "default", args, work_dir, args.timeout, threads)
    if row["outcome"].startswith("crashed"):  # once more: a crash may come from a concurrent reinstall
        first = row
        row = run_step(spec, "default", args, work_dir, args.timeout, threads)
        row.setdefault("notes", []).append(f"first attempt {first['outcome']} in stage {first.get('stage')}; retried")
    row.update(family=spec.family, group=spec.group, wrapper=spec.wrapper, input=zm.describe_inputs(spec.inputs))
    row["model_notes"] = spec.notes
    if row["outcome"] != "complete":
        row["status"] = row["outcome"]
        row["cause"] = row.pop("crash")
    exported = bool(row.get("export"))
    if row["status"] != "pass" and row["status"] != "skipped" and exported:
        plain = run_step(spec, "plain", args, work_dir, args.timeout, threads)
        row["plain"] = plain.get("plain") or {}
        if plain["outcome"] != "complete":
            row["plain"].update(passed=False, error=plain["crash"])
    if row["status"] != "skipped":
        for mode in extra_modes:
            step = run_step(spec, mode, args, work_dir, args.pt2_timeout if mode == "pt2" else args.timeout, threads)
            section = step.get(mode) or {}
            if step["outcome"] != "complete":
                section.update(passed=False, error=step["crash"])
            if mode == "pt2":
                section["export_s"] = step.get("pt2_export_s")
            section["wall_s"] = step["wall_s"]
            row[mode] = section
    row["verdict"] = verdict(row)
    row["total_s"] = round(time.perf_counter() - start, 1)
    if not args.keep_artifacts:
        for path in (work_dir / "artifacts").glob(f"{spec.name}.*"):
            path.unlink(missing_ok=True)
    return row


def verdict(row: dict) -> str:
    status = row["status"]
    if status == "pass":
        return "PASS"
    if status == "skipped":
        return "skipped (> 60 M)"
    head = "FAIL" if status == "fail" else status.upper()
    if not row.get("export"):  # failed before or in tb.export
        stage = (row.get("cause") or {}).get("stage") or "export"
        return f"{head}: {stage}"
    plain = row.get("plain") or {}
    return f"{head}: fast path only" if plain.get("passed") else f"{head}: everywhere"


def failed(row: dict) -> bool:
    bad = row["status"] not in ("pass", "skipped")
    return bad or any(row.get(mode) and not row[mode].get("passed") for mode in ("pt2", "int8"))


# --------------------------------------------------------------------------------------------- report


def cpu_info() -> dict:
    from torchbridge.bench_report import cpu_name

    info = {"model": cpu_name(), "cores": os.cpu_count()}
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"):
        info[flag] = flag in flags
    info["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def cpu_label(info: dict) -> str:
    """The CPU of one row, short: its name and torch's CPU capability there."""
    return f"{info['model']}, torch CPU capability {info['torch_capability']}"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "torchvision", "timm", "transformers", "onnxruntime", "torchbridge"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "cpp", "python"], capture_output=True, text=True
        )
        found["git"] = commit.stdout.strip() + (
            " + uncommitted changes in cpp/ or python/" if dirty.stdout.strip() else ""
        )
    except OSError:
        found["git"] = "unknown"
    return found


def rel(value) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0"
    return "inf" if math.isinf(value) else f"{value:.1e}"


def cell(text, limit: int = 170) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def batch_cell(section: dict | None, batch: int) -> str:
    entry = (section or {}).get("batches", {}).get(str(batch))
    if entry is None:
        return "—"
    if "error" in entry:
        return "error"
    return rel(entry.get("max_rel"))


def section_summary(section: dict | None) -> str:
    if not section:
        return "—"
    values = [e["max_rel"] for e in section.get("batches", {}).values() if "max_rel" in e]
    worst = f" (max {rel(max(values))})" if values else ""
    if section.get("passed"):
        return f"pass{worst}"
    error = section.get("error") or {}
    return f"fail{worst}: {error.get('stage', '?')}"


def cause_text(row: dict) -> str:
    cause = row.get("cause")
    if not cause:
        return ""
    return f"{cause.get('stage')}: {cause.get('message')}"


def cause_key(row: dict) -> str:
    cause = row.get("cause") or {}
    stage = re.sub(r" ?b\d+$", "", str(cause.get("stage", "")))
    message = re.sub(r"0x[0-9a-f]+", "0x…", str(cause.get("message", "")))
    message = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", message)
    message = re.sub(r"\(output N:.*\)$", "", message).strip()
    return f"{stage}: {message[:150]}"


def rows_by_cpu(rows: list[dict], meta: dict) -> list[str]:
    """A line naming the rows that ran on another CPU than the header's (each row records its own)."""
    header = cpu_label(meta["cpu"])
    others: dict[str, list[str]] = {}
    for r in rows:
        if r.get("cpu") and r["cpu"] != header:
            others.setdefault(r["cpu"], []).append(r["name"])
    return [
        f"Rows from another CPU, {cpu} ({len(names)}): {', '.join(names)}.  " for cpu, names in sorted(others.items())
    ]


def write_report(rows: list[dict], meta: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str) + "\n")
    cpu, v = meta["cpu"], meta["versions"]
    flags = ", ".join(f"{f} {'yes' if cpu.get(f) else 'no'}" for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile"))
    lines = [
        "# Model zoo: every model through the default path",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; wall time {meta['wall_min']:.1f} min"
        + ("" if meta.get("finished") else f" (in progress: {len(rows)} of {meta['planned']} models)")
        + "  ",
        f"CPU: {cpu['model']}, {cpu['cores']} cores; {flags}; torch CPU capability {cpu['torch_capability']}  ",
        *rows_by_cpu(rows, meta),
        f"torch {v['torch']}, torchvision {v['torchvision']}, timm {v['timm']}, transformers {v['transformers']}, "
        f"onnxruntime {v['onnxruntime']}; torchbridge {v['torchbridge']} (git {v['git']}; native module built "
        f"{', '.join(meta['builds']) or '?'})  ",
        f"Threads: correctness steps {meta['correctness_threads']}; speed steps {meta['threads']}.",
        "",
        "Per model, each step in a process of its own: build it with random weights (seed 0, eval), export it with "
        "`tb.export(model, example_at_batch_2, 'model.pt')` (default arguments, method auto), run "
        "`tb.Runtime(path)` (default options) at batch 2, 1 and 3 on fresh inputs and compare with eager "
        "`model(*inputs)` under no_grad. max rel = the largest, over output tensors, of max|cpp - eager| / "
        f"max|eager| (inf: shape or dtype differs); then `tb.verify(model, path)`. **PASS**: every batch ran, "
        f"max rel <= {REL_TOL:g} and verify passed. When the "
        "default fails after export, `tb.Runtime(path, optimize=False)` runs the same batches: "
        "**fast path only** when that passes, **everywhere** when it fails too. Models over 60 M parameters "
        "are skipped. Regenerate with the command above; `--one NAME` reruns one model in-process.",
        "",
        "Columns: *export / load s*: seconds in `tb.export` and in `tb.Runtime(path)` (which warms up at load); "
        '*optimization*: `rt.optimization` ("from batch N (as loaded below ...)": batches below N run the '
        "module as loaded, so at batch 1-3 the fused path is not exercised for those models; \"; from batch N: "
        'X": batches from N on try variant X first, measured faster there at export); *b2, b1, b3*: max rel '
        "at each batch "
        "(error: the call raised); *optimize=False*: the rerun, when there was one.",
        "",
        "## Totals",
        "",
        "| family | passed | total | % | failed before or in export | failed, fast path only | failed everywhere "
        "| (of the failures: timeout / crash) | skipped (> 60 M) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for family in [*zm.FAMILIES, "all"]:
        members = [r for r in rows if family in ("all", r["family"])]
        if not members:
            continue
        ran = [r for r in members if r["status"] != "skipped"]
        passed = sum(r["status"] == "pass" for r in ran)
        fast = sum(r["verdict"].endswith("fast path only") for r in ran)
        everywhere = sum(r["verdict"].endswith(": everywhere") for r in ran)
        broken = sum(r["status"] not in ("pass", "fail") for r in ran)
        export = len(ran) - passed - fast - everywhere
        percent = f"{100 * passed / len(ran):.0f} %" if ran else "—"
        name = "**all**" if family == "all" else family
        lines.append(
            f"| {name} | {passed} | {len(ran)} | {percent} | {export} | {fast} | {everywhere} | {broken} "
            f"| {len(members) - len(ran)} |"
        )
    failures = [r for r in rows if r["status"] not in ("pass", "skipped")]
    if failures:
        lines += ["", "## Failures by cause", ""]
        groups: dict[str, list[str]] = {}
        for r in failures:
            groups.setdefault(cause_key(r), []).append(f"{r['name']} ({r['verdict'].split(': ')[-1]})")
        for key, names in sorted(groups.items(), key=lambda item: -len(item[1])):
            lines.append(f"- {len(names)} x `{cell(key, 240)}`: {', '.join(names)}")
    whole: dict[str, list[str]] = {}
    for r in rows:
        text = str((r.get("default") or {}).get("optimization") or "")
        if text and not parse_optimization(text)[0].startswith("freeze+onednn_graph"):
            whole.setdefault(whole_model_reason(parse_optimization(text)[0]), []).append(r["name"])
    if whole:
        lines += [
            "",
            "## Models the runtime does not fuse at any shape",
            "",
            "What load applied instead of oneDNN Graph fusion (`rt.optimization`, op lists masked), and why:",
            "",
        ]
        for why, names in sorted(whole.items(), key=lambda item: -len(item[1])):
            lines.append(f"- {len(names)} x `{cell(why, 240)}`: {', '.join(names)}")
    fallbacks: dict[str, list[str]] = {}
    for r in rows:
        for batch, variant, why in parse_optimization(str((r.get("default") or {}).get("optimization", "")))[1]:
            fallbacks.setdefault(fallback_reason(why), []).append(f"{r['name']} (b{batch}: ran {variant})")
    if fallbacks:
        lines += [
            "",
            "## Fast-path fallbacks",
            "",
            "Shapes at which the default runtime did not run oneDNN Graph fusion (from `rt.optimization` after the "
            "runs, grouped by why the first variant was dropped); the rows may still pass, on the variant it fell "
            "back to.",
            "",
        ]
        for why, names in sorted(fallbacks.items(), key=lambda item: -len(item[1])):
            lines.append(f"- {len(names)} x `{cell(why, 200)}`: {', '.join(names)}")
    for family in zm.FAMILIES:
        members = [r for r in rows if r["family"] == family]
        if not members:
            continue
        lines += [
            "",
            f"## {family}",
            "",
            "| model | group | params (M) | input | method | export / load s | optimization | b2 | b1 | b3 "
            "| optimize=False | result | failure cause |",
            "|---|---|---:|---|---|---:|---|---:|---:|---:|---|---|---|",
        ]
        for r in members:
            if r["status"] == "skipped":
                continue
            default = r.get("default")
            params = f"{r['params'] / 1e6:.1f}" if r.get("params") else "?"
            method = (r.get("export") or {}).get("method", "—")
            lines.append(
                f"| {r['name']} | {r['group']} | {params} | {r['input']} | {method} | {seconds(r)} "
                f"| {optimization_cell(default)} | {batch_cell(default, 2)} "
                f"| {batch_cell(default, 1)} | {batch_cell(default, 3)} | {section_summary(r.get('plain'))} "
                f"| {r['verdict']} | {cell(cause_text(r))} |"
            )
        skipped = [r for r in members if r["status"] == "skipped"]
        if skipped:
            listed = ", ".join(f"{r['name']} ({r['params'] / 1e6:.1f} M)" for r in skipped)
            lines += ["", f"Skipped by size (> 60 M parameters, counted without building them): {listed}."]
    extra = [r for r in rows if r.get("pt2") or r.get("int8")]
    if extra:
        lines += [
            "",
            "## .pt2 (AOTInductor) and dynamic int8",
            "",
            f"`.pt2`: `tb.export(model, example, 'model.pt2')`, then `tb.Runtime` at batch 2 (and 1, 3 when dynamic), "
            f"PASS at max rel <= {REL_TOL:g}. int8: `tb.quantize(model, mode='dynamic')` exported to .pt, run by "
            f"`tb.Runtime`; max rel against the int8 model in eager (PASS <= {REL_TOL:g}) and against the float model "
            f"(PASS <= {INT8_FLOAT_TOL:g}, the quantization error).",
            "",
            "| model | .pt2 export s | .pt2 b2 | b1 | b3 | .pt2 result | int8 vs int8 eager (max) "
            "| int8 vs float (max) | int8 result |",
            "|---|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        for r in extra:
            pt2, int8 = r.get("pt2"), r.get("int8")
            int8_values = [e for e in ((int8 or {}).get("batches") or {}).values() if "max_rel" in e]
            vs_int8 = rel(max(e["max_rel"] for e in int8_values)) if int8_values else "—"
            vs_float = rel(max(e["max_rel_vs_float"] for e in int8_values)) if int8_values else "—"
            lines.append(
                f"| {r['name']} | {(pt2 or {}).get('export_s') or '—'} | {batch_cell(pt2, 2)} | {batch_cell(pt2, 1)} "
                f"| {batch_cell(pt2, 3)} | {cell(section_text(pt2), 120)} | {vs_int8} | {vs_float} "
                f"| {cell(section_text(int8), 120)} |"
            )
    timed = [r for r in rows if r.get("speed")]
    if timed:
        lines += [
            "",
            f"## Speed: batch 1, {meta['threads']} thread(s), p50 ms",
            "",
            f"Median of {meta['runs']} interleaved calls per path after {meta['warmup']} warm-up calls. C++: "
            "`tb.Runtime(path, threads=N)`; onnxruntime: `torch.onnx.export(..., dynamo=True)`, CPU provider, "
            "same intra-op threads.",
            "",
            "| model | eager | C++ | onnxruntime | C++ / eager | C++ / onnxruntime | note |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in timed:
            s = r["speed"]
            eager_ms, cpp_ms, ort_ms = s.get("eager_p50_ms"), s.get("cpp_p50_ms"), s.get("onnxruntime_p50_ms")
            notes = [f"C++: {s['cpp_error']}" if s.get("cpp_error") else ""]
            notes.append(f"ORT: {s['ort_error']}" if s.get("ort_error") else "")
            if s.get("error"):
                notes.append(f"{s['error'].get('stage')}: {s['error'].get('message')}")
            lines.append(
                f"| {r['name']} | {ms(eager_ms)} | {ms(cpp_ms)} | {ms(ort_ms)} | {ratio(cpp_ms, eager_ms)} "
                f"| {ratio(cpp_ms, ort_ms)} | {cell('; '.join(n for n in notes if n), 200)} |"
            )
    lines += ["", "## Wrappers: what a user needs to write", ""]
    lines.append(
        "Models that take tensors and return tensors, tuples, lists or dicts go in as they are (torchvision "
        "classification and segmentation, timm, the nn models). The others get the thinnest wrapper that does "
        "(benchmarks/zoo_models.py):"
    )
    lines.append("")
    for name, (_, text) in zm.WRAPPERS.items():
        lines.append(f"- `{name}`: {text}")
    lines += [
        f"- torchvision detection models are built with `min_size=max_size={zm.TV_DETECTION_SIZE}` "
        "(SSD models have their size built in); with random weights they may detect nothing, so their outputs "
        "can be empty tensors.",
        "- Hugging Face models come from small configs (hidden 64, 2 layers, 2 heads, vocab 1000, sequence "
        f"{zm.SEQ}; decoders with `use_cache=False`); attention masks are all ones.",
        "- nn models: " + "; ".join(f"{r.name}: {r.notes[0]}" for r in zm.nn_specs()) + ".",
    ]
    out.write_text("\n".join(lines) + "\n")


# "; at [2, 3, 224, 224]: " (one input) or "; at ([2, 32], [2, 32]): " (several)
FALLBACK = re.compile(r"; at \(?((?:\[[\d, ]*\](?:, )?)+)\)?: ")


def parse_optimization(text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """rt.optimization as (what load applied, [(batch, variant run, why), ...] per shape that fell back)."""
    parts = FALLBACK.split(text)
    base = re.sub(r" \(as loaded below[^)]*\)", "", parts[0])
    fallbacks = []
    for shapes, rest in zip(parts[1::2], parts[2::2]):
        batch = re.match(r"\[(\d+)", shapes)
        variant, _, why = rest.partition(" (")
        fallbacks.append((int(batch.group(1)) if batch else -1, variant, why[:-1] if why.endswith(")") else why))
    return base, fallbacks


def optimization_cell(section: dict | None) -> str:
    text = (section or {}).get("optimization")
    if not text:
        return "—"
    base, fallbacks = parse_optimization(str(text))
    if fallbacks:
        base += "; fell back at " + ", ".join(f"b{batch} to {variant}" for batch, variant, _ in fallbacks)
    return cell(base, 120)


def whole_model_reason(base: str) -> str:
    """What load applied, with the ops a model selects by value masked: the key models are grouped by."""
    return re.sub(r"selects by value \([^)]*\)", "selects by value (...)", base)


def fallback_reason(why: str) -> str:
    """The first variant's failure, numbers masked: the key fallbacks are grouped by."""
    first = re.split(r"; (?=[a-z_]+ (?:raised|differs))", why)[0]
    first = re.sub(r"max rel [\d.e+-]+", "max rel N", first)
    return re.sub(r"\(output \d+, ", "(output N, ", first)


def seconds(row: dict) -> str:
    export = (row.get("export") or {}).get("seconds")
    load = (row.get("default") or {}).get("load_s")
    if export is None:
        return "—"
    return f"{export:.0f} / {load:.0f}" if load is not None else f"{export:.0f} / —"


def section_text(section: dict | None) -> str:
    if not section:
        return "—"
    if section.get("passed"):
        return "PASS"
    error = section.get("error") or {}
    return f"FAIL {error.get('stage', '?')}: {error.get('message', '')}"


def ms(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def ratio(a, b) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def select(args) -> list[zm.ModelSpec]:
    families = tuple(f.strip() for f in args.family.split(",")) if args.family else zm.FAMILIES
    unknown = set(families) - set(zm.FAMILIES)
    if unknown:
        raise SystemExit(f"unknown family {', '.join(sorted(unknown))}; choose from {', '.join(zm.FAMILIES)}")
    specs = zm.all_specs(families)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        chosen = [s for s in specs if s.name in wanted or s.name.split(".", 1)[1] in wanted]
        missing = [m for m in wanted if not any(m in (s.name, s.name.split(".", 1)[1]) for s in chosen)]
        if missing:
            raise SystemExit(f"no model named {', '.join(missing)} in families {', '.join(families)}")
        return chosen
    if args.subset == "fast":
        return [s for s in specs if s.name in zm.FAST]
    return specs


def progress_line(index: int, total: int, row: dict) -> str:
    detail = ""
    if row["status"] == "pass":
        values = [e.get("max_rel", 0) for e in row["default"]["batches"].values()]
        optimization = optimization_cell(row["default"])
        detail = f"{row['export']['method']}, max rel {rel(max(values))}, {optimization}"
    elif row["status"] != "skipped":
        detail = cause_text(row)[:150]
    for mode in ("pt2", "int8", "speed"):
        if row.get(mode):
            detail += f"; {mode}: {'ok' if row[mode].get('passed') or mode == 'speed' else 'FAIL'}"
    return f"[{index:>3}/{total}] {row['name']:<42} {row['verdict']:<30} {row['total_s']:7.1f}s  {detail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=("fast", "full"), default="full")
    parser.add_argument("--family", help=f"comma-separated, from {','.join(zm.FAMILIES)}")
    parser.add_argument("--models", help="comma-separated names: tv.resnet18, hf.bert (a bare name: every family's)")
    parser.add_argument("--pt2", action="store_true", help="also .pt2 (PT2_MODELS) and dynamic int8 (INT8_MODELS)")
    parser.add_argument("--speed", action="store_true", help="eager / C++ / onnxruntime p50 at batch 1")
    parser.add_argument("--threads", type=int, default=1, help="threads of the speed steps")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per path in a speed step")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up calls per path in a speed step")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per step of a model")
    parser.add_argument("--pt2-timeout", type=int, default=1800, help="seconds for a .pt2 step")
    parser.add_argument("--jobs", type=int, default=1, help="models at once (correctness only; not with --speed)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "zoo.md"), help="the report; its .json beside it")
    parser.add_argument("--work-dir", help="logs, rows and artifacts (default: a new folder under /tmp)")
    parser.add_argument("--keep-artifacts", action="store_true")
    parser.add_argument("--no-verify", action="store_true", help="skip tb.verify after the batch checks")
    parser.add_argument("--one", metavar="NAME", help="run one step of one model in this process")
    parser.add_argument("--mode", choices=MODES, default="default", help="the step --one runs")
    parser.add_argument("--json-out", help="where --one writes its row (default: stdout)")
    parser.add_argument("--resume", action="store_true", help="keep the models --work-dir has finished already")
    parser.add_argument("--report-only", metavar="JSON", help="rewrite --out from a zoo.json, running nothing")
    args = parser.parse_args()
    if args.one:
        return worker(args)
    if args.report_only:
        data = json.loads(Path(args.report_only).read_text())
        write_report(data["rows"], data["meta"], Path(args.out))
        return 1 if any(failed(r) for r in data["rows"]) else 0
    if args.resume and not args.work_dir:
        raise SystemExit("--resume needs the --work-dir of the run to resume")
    if args.speed and args.jobs > 1:
        raise SystemExit("--speed times models one at a time: use --jobs 1")

    specs = select(args)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="torchbridge-zoo-"))
    for folder in ("rows", "logs", "artifacts"):
        (work_dir / folder).mkdir(parents=True, exist_ok=True)
    threads = None  # torch's default in every step
    correctness_threads = f"torch's default ({torch.get_num_threads()} intra-op threads)"
    if args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        correctness_threads = f"{threads} per model, {args.jobs} models at once"
    out = Path(args.out)
    meta = {
        "command": "python benchmarks/zoo.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_info(),
        "versions": versions(),
        "threads": args.threads,
        "correctness_threads": correctness_threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "planned": len(specs),
        "work_dir": str(work_dir),
        "builds": [],
        "finished": False,
    }
    print(f"{len(specs)} models; logs and rows in {work_dir}; report {out}", flush=True)
    explicit = bool(args.models)

    def extra_modes(spec: zm.ModelSpec) -> list[str]:
        modes = []
        if args.pt2 and (explicit or spec.name in zm.PT2_MODELS):
            modes.append("pt2")
        if args.pt2 and spec.name in zm.INT8_MODELS:
            modes.append("int8")
        if args.speed:
            modes.append("speed")
        return modes

    start = time.perf_counter()
    rows: dict[str, dict] = {}
    lock = threading.Lock()
    done = 0

    def one(spec: zm.ModelSpec) -> None:
        nonlocal done
        finished = work_dir / "rows" / f"{spec.name}.row.json"
        try:
            if args.resume and finished.exists():
                row = json.loads(finished.read_text())
                row.setdefault("notes", []).append("kept from an earlier run (--resume)")
            else:
                row = run_model(spec, args, work_dir, threads, extra_modes(spec))
                if _stopping.is_set():
                    return
                finished.write_text(json.dumps(row, indent=1, default=str))
        except Exception as error:  # a bug here, not in the model: keep going, say so
            traceback.print_exc()
            row = {"name": spec.name, "family": spec.family, "group": spec.group, "input": "", "status": "error"}
            row.update(verdict="HARNESS ERROR", cause={"stage": "harness", "message": first_line(error)}, total_s=0)
        with lock:
            done += 1
            rows[spec.name] = row
            print(progress_line(done, len(specs), row), flush=True)
            build = row.get("torchbridge_build")
            if build and build not in meta["builds"]:
                meta["builds"].append(build)
            meta["wall_min"] = (time.perf_counter() - start) / 60
            write_report([rows[s.name] for s in specs if s.name in rows], meta, out)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        list(pool.map(one, specs))
    except KeyboardInterrupt:
        _stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in list(_running):
            kill_group(pid)
        raise
    pool.shutdown()
    meta["finished"] = True
    meta["wall_min"] = (time.perf_counter() - start) / 60
    ordered = [rows[s.name] for s in specs]
    write_report(ordered, meta, out)
    bad = [r["name"] for r in ordered if failed(r)]
    print(f"{len(ordered) - len(bad)} of {len(ordered)} models without failures; {meta['wall_min']:.1f} min; {out}")
    if len(meta["builds"]) > 1:
        print(f"note: the native module was rebuilt during the run ({', '.join(meta['builds'])})")
    if not args.keep_artifacts:
        shutil.rmtree(work_dir / "artifacts", ignore_errors=True)
    skipped = sum(row["status"] == "skipped" for row in ordered)
    print(f"zoo: {len(ordered) - len(bad) - skipped} passed, {len(bad)} failed, {skipped} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
