"""Prove that Python and C++ give the same outputs for one artifact, and when they do not, find the
first layer where they part (diagnose_layers).

Paths compared, on the golden example stored in the artifact plus fresh random inputs:
  eager        the Python model (or, without one, the golden outputs it produced at export)
  torchscript  a .pt loaded by torch.jit.load in this process
  aoti         a .pt2 loaded by torch._inductor.aoti_load_package in this process
  cpp          the C++ runtime through the bindings (torchbridge.Runtime)
  cli          the torchbridge-run process (.npy in, .npy out)
torchscript/aoti vs cpp/cli must agree exactly (same artifact, same thread count); eager vs the
others within the artifact's tolerance.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchbridge.artifact import flatten_outputs, npy_bytes, open_artifact
from torchbridge.compare import default_atol, fresh_inputs, max_errors, run_module, within_tolerance
from torchbridge.errors import ParityError, TorchbridgeError
from torchbridge.hooks import Capture, LayerCall, hooked, record_calls
from torchbridge.mirror import load_in_python
from torchbridge.runtime import Runtime, cli_path, resolve_threads


@dataclass
class Comparison:
    inputs: str  # "golden" or "fresh 1 (batch 3)"
    reference: str
    candidate: str
    output: int
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    passed: bool


@dataclass
class ParityReport:
    artifact: str
    threads: int
    rows: list[Comparison] = field(default_factory=list)
    layers: LayerReport | None = None  # verify(..., layers=True): submodule-by-submodule diagnosis

    @property
    def passed(self) -> bool:
        layers_passed = self.layers is None or self.layers.passed
        return bool(self.rows) and all(r.passed for r in self.rows) and layers_passed

    def worst(self, reference: str, candidate: str) -> tuple[float, float]:
        """(max abs, max rel) over all inputs and outputs of one comparison."""
        rows = [r for r in self.rows if r.reference == reference and r.candidate == candidate]
        return max((r.max_abs for r in rows), default=0.0), max((r.max_rel for r in rows), default=0.0)

    def table(self) -> str:
        header = (
            f"{'inputs':<20} {'reference':<12} {'candidate':<12} {'out':>3} "
            f"{'max abs':>10} {'max rel':>10} {'tolerance':>18}  result"
        )
        lines = [header, "-" * len(header)]
        for r in self.rows:
            tolerance = "exact" if r.rtol == 0 and r.atol == 0 else f"rtol {r.rtol:g} atol {r.atol:.1g}"
            lines.append(
                f"{r.inputs:<20} {r.reference:<12} {r.candidate:<12} {r.output:>3} {r.max_abs:>10.3g} "
                f"{r.max_rel:>10.3g} {tolerance:>18}  {'ok' if r.passed else 'FAIL'}"
            )
        if self.layers is not None:
            lines += ["", self.layers.table(), ""]
        lines.append(f"parity {'PASSED' if self.passed else 'FAILED'} ({self.artifact}, {self.threads} threads)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "threads": self.threads,
            "passed": self.passed,
            "rows": [asdict(r) for r in self.rows],
            "layers": self.layers.as_dict() if self.layers is not None else None,
        }


def run_cli(artifact: Path, inputs: list[torch.Tensor], threads: int, workdir: Path) -> list[torch.Tensor]:
    """Run the torchbridge-run process on `inputs` and read its outputs back."""

    command = [str(cli_path()), str(artifact), "--threads", str(threads)]
    for i, tensor in enumerate(inputs):
        path = workdir / f"input_{i}.npy"
        path.write_bytes(npy_bytes(tensor))
        command += ["--input", str(path)]
    count = len(open_artifact(artifact).manifest["outputs"])
    outputs = [workdir / f"output_{i}.npy" for i in range(count)]
    for path in outputs:
        command += ["--output", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise TorchbridgeError(f"torchbridge-run exited with {result.returncode}: {result.stderr.strip()}")
    return [torch.from_numpy(np.load(p, allow_pickle=False)) for p in outputs]


#: How far from eager a correct path may be, in multiples of eager's own float32 rounding error
#: (measured against a float64 run of the same model on the same inputs): two correct float32
#: programs that sum in different orders each sit about that far from the exact result.
NOISE_MARGIN = 10.0


def float32_noise(model: nn.Module, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """Eager's float32 rounding error on `inputs`: max |float32 - float64| over max |float64|, the
    worst output; 0.0 when the model cannot run in float64 (quantized, or float32 by design)."""
    if not any(t.is_floating_point() for t in outputs):
        return 0.0
    try:
        reference = copy.deepcopy(model).double()
        wide = [t.double() if t.is_floating_point() else t for t in inputs]
        exact = run_module(reference, wide)
    except Exception:
        return 0.0
    if len(exact) != len(outputs):
        return 0.0
    noise = 0.0
    for actual, expected in zip(outputs, exact):
        if actual.is_floating_point() and expected.is_floating_point() and actual.shape == expected.shape:
            noise = max(noise, max_errors(actual.double(), expected)[1])
    return noise if noise < float("inf") else 0.0


def verify(
    model: nn.Module | None,
    artifact: str | os.PathLike,
    threads: int | None = None,
    fresh: int = 2,
    cli: bool = True,
    raise_on_failure: bool = True,
    layers: bool = False,
) -> ParityReport:
    """Compare eager Python, the artifact loaded by torch in Python (TorchScript or AOTInductor)
    and the C++ runtime on one artifact (.pt or .pt2).

    Against eager, each input set is judged at the artifact's rtol or, when larger, NOISE_MARGIN x
    eager's own float32 rounding error on those inputs (float32_noise), with atol that rtol times
    the largest |output|: a correct export of a deep model passes, a changed weight does not.

    model: the eager model the artifact came from; None compares against the golden outputs
      stored in the artifact (the eager outputs at export) on the golden example only.
    threads: intra-op threads for every path (default: torch's current setting).
    fresh: random input sets in addition to the golden example (dynamic dims resized).
    cli: also run the torchbridge-run process.
    layers: also run each submodule of the artifact in C++ on the inputs the eager model gave it
      and compare layer by layer (diagnose_layers below; needs `model`); the table
      names the first layer beyond tolerance, and a failing layer fails the report.
    Raises ParityError (with .report) when any comparison fails, unless raise_on_failure=False.
    """
    if layers and model is None:
        raise TorchbridgeError(
            "layers=True needs the eager model: the layer-wise diagnosis records its submodules' inputs and outputs"
        )
    art = open_artifact(artifact)
    manifest = art.manifest
    if layers and manifest.get("format") == "aoti":
        raise TorchbridgeError(
            f"{art.path}: layers=True needs a TorchScript artifact (.pt); a .pt2 is compiled whole and has no "
            "submodules to run one by one"
        )
    threads = resolve_threads(threads)
    torch.set_num_threads(threads)
    rtol, atol = manifest["tolerance"]["rtol"], manifest["tolerance"]["atol"]
    golden_inputs, golden_outputs = art.golden()
    if model is not None:
        model = model.cpu().eval()

    runtime = Runtime(art.path, threads=threads)
    # The same passes the runtime applied at load, so that TorchScript-in-Python vs C++ stays exact.
    python_path, in_python = load_in_python(art.path, runtime.optimized_from_batch, runtime=runtime)
    # Same warm-up as the C++ runtime, so both profiling executors run their optimized graphs.
    with torch.inference_mode():
        for _ in range(3):
            in_python(*golden_inputs)

    input_sets: list[tuple[str, list[torch.Tensor]]] = [("golden", golden_inputs)]
    dynamic_dims = [[d for d, s in enumerate(spec["shape"]) if s is None] for spec in manifest["inputs"]]
    # A .pt2 accepts dynamic sizes only within the range declared at export.
    specs = manifest["inputs"]
    bounds = [spec["max_shape"][d] for spec, dims in zip(specs, dynamic_dims) for d in dims if "max_shape" in spec]
    largest = min(bounds, default=1 << 30)
    if model is not None:
        for k in range(1, fresh + 1):
            size = min(1 + 2 * k, largest) if dynamic_dims and dynamic_dims[0] else None
            label = f"fresh {k}" + (f" (batch {size})" if size else "")
            input_sets.append((label, list(fresh_inputs(golden_inputs, dynamic_dims, seed=100 + k, dynamic_size=size))))

    report = ParityReport(artifact=str(art.path), threads=threads)
    with tempfile.TemporaryDirectory(prefix="torchbridge-verify-") as workdir:
        for label, inputs in input_sets:
            outputs: dict[str, list[torch.Tensor]] = {}
            outputs["eager"] = run_module(model, inputs) if model is not None else golden_outputs
            # The runtime first: at a new shape it chooses what runs there, and the mirror follows.
            outputs["cpp"] = [t.cpu() for t in runtime.forward(*inputs)]
            with torch.inference_mode():
                outputs[python_path] = run_module(in_python, inputs)
            if cli:
                outputs["cli"] = run_cli(art.path, inputs, threads, Path(workdir))
            # The eager model's own float32 noise on these inputs, and the outputs' scale.
            eager_rtol = rtol
            if model is not None:
                eager_rtol = max(rtol, NOISE_MARGIN * float32_noise(model, inputs, outputs["eager"]))
            floating = [t for t in outputs["eager"] if t.is_floating_point() and t.numel()]
            scale = max((float(t.abs().max()) for t in floating), default=0.0)
            eager_atol = max(atol, eager_rtol * scale)
            checks = [
                ("eager", python_path, eager_rtol, eager_atol),
                ("eager", "cpp", eager_rtol, eager_atol),
                (python_path, "cpp", 0.0, 0.0),
            ]
            if cli:
                checks.append((python_path, "cli", 0.0, 0.0))
            for reference, candidate, r_tol, a_tol in checks:
                expected, actual = outputs[reference], outputs[candidate]
                if len(expected) != len(actual):
                    report.rows.append(
                        Comparison(label, reference, candidate, -1, float("inf"), float("inf"), r_tol, a_tol, False)
                    )
                    continue
                for i, (e, a) in enumerate(zip(expected, actual)):
                    e = e.dequantize() if e.is_quantized else e
                    max_abs, max_rel = max_errors(a, e)
                    passed = within_tolerance(a, e, r_tol, a_tol)
                    report.rows.append(
                        Comparison(label, reference, candidate, i, max_abs, max_rel, r_tol, a_tol, passed)
                    )
    if layers:
        report.layers = diagnose_layers(model, art.path, inputs=golden_inputs, threads=threads, runtime=runtime)
    if raise_on_failure and not report.passed:
        raise ParityError(f"parity failed for {art.path}:\n{report.table()}", report)
    return report


# Layer-wise parity: eager submodules vs the same submodules run by the C++ runtime


@dataclass
class LayerComparison:
    module: str  # qualified name
    call: int
    type_name: str
    max_abs: float | None
    max_rel: float | None
    rtol: float
    atol: float
    status: str  # "ok", "FAIL" or "skip"
    note: str = ""

    @property
    def label(self) -> str:
        return self.module if self.call == 0 else f"{self.module} #{self.call + 1}"


@dataclass
class LayerReport:
    """Submodule-by-submodule comparison, in the order the calls returned (children before the
    containers holding them), so the first FAIL is the innermost layer where outputs part ways."""

    artifact: str
    threads: int
    rows: list[LayerComparison] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[LayerComparison]:
        return [r for r in self.rows if r.status == "FAIL"]

    @property
    def first_failure(self) -> LayerComparison | None:
        failures = self.failures
        return failures[0] if failures else None

    @property
    def compared(self) -> int:
        return sum(r.status != "skip" for r in self.rows)

    @property
    def passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        name_width = max([len("module"), *(len(r.label) for r in self.rows)])
        type_width = max([len("type"), *(len(r.type_name) for r in self.rows)])
        header = (
            f"{'module':<{name_width}}  {'type':<{type_width}}  {'max abs':>10}  {'max rel':>10}  "
            f"{'tolerance':>20}  result"
        )
        lines = [header, "-" * len(header)]
        for r in self.rows:
            max_abs = "-" if r.max_abs is None else f"{r.max_abs:.3g}"
            max_rel = "-" if r.max_rel is None else f"{r.max_rel:.3g}"
            tolerance = f"rtol {r.rtol:g} atol {r.atol:.1g}" if r.status != "skip" else ""
            note = f"  {r.note}" if r.note else ""
            lines.append(
                f"{r.label:<{name_width}}  {r.type_name:<{type_width}}  {max_abs:>10}  {max_rel:>10}  "
                f"{tolerance:>20}  {r.status}{note}"
            )
        skipped = len(self.rows) - self.compared
        first = self.first_failure
        if first is not None:
            detail = (
                f"max abs {first.max_abs:.3g}, max rel {first.max_rel:.3g}" if first.max_abs is not None else first.note
            )
            lines.append(f"first layer beyond tolerance: {first.label} ({first.type_name}), {detail}")
        elif self.compared == 0:
            lines.append("no submodule could be compared (a frozen artifact keeps none; see the notes)")
        else:
            lines.append("every compared layer within tolerance")
        lines.append(
            f"layers {'PASSED' if self.passed else 'FAILED'}: {self.compared} compared, {skipped} skipped, "
            f"{len(self.failures)} beyond tolerance in {self.seconds:.2f} s ({self.artifact}, {self.threads} threads)"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        first = self.first_failure
        return {
            "artifact": self.artifact,
            "threads": self.threads,
            "passed": self.passed,
            "compared": self.compared,
            "first_failure": first.label if first else None,
            "seconds": self.seconds,
            "rows": [{**dataclasses.asdict(r), "label": r.label} for r in self.rows],
        }


def _compare_call(record: LayerCall, runtime, available: set[str], rtol: float) -> LayerComparison:
    def skip(note: str) -> LayerComparison:
        return LayerComparison(record.name, record.call, record.type_name, None, None, rtol, 0.0, "skip", note)

    if record.name not in available:
        return skip("not in the artifact (inlined by tracing or freezing)")
    if record.kwargs or not record.args or not all(isinstance(a, torch.Tensor) for a in record.args):
        kinds = ", ".join(type(a).__name__ for a in record.args or ()) + (" + keywords" if record.kwargs else "")
        return skip(f"called with ({kinds or 'nothing'}); only positional tensor inputs can be replayed")
    try:
        expected = flatten_outputs(record.output)
    except TorchbridgeError:
        return skip(f"returns {type(record.output).__name__}, not tensors")
    if any(t.is_quantized for t in [*record.args, *expected]):
        return skip("quantized tensors do not cross to the C++ runtime (DLPack has no quantized dtypes)")
    atol = default_atol(expected, rtol)
    try:
        # Copies: an in-place submodule (ReLU(inplace=True)) would overwrite the recorded input.
        actual = runtime.forward_submodule(record.name, *[a.clone() for a in record.args])
    except TorchbridgeError as error:
        message = str(error)
        if getattr(error, "code", "") == "input":  # no such submodule or no forward: nothing to compare
            return skip(message)
        return LayerComparison(
            record.name, record.call, record.type_name, None, None, rtol, atol, "FAIL", f"C++ raised: {message}"
        )
    if len(actual) != len(expected):
        return LayerComparison(
            record.name,
            record.call,
            record.type_name,
            float("inf"),
            float("inf"),
            rtol,
            atol,
            "FAIL",
            f"{len(actual)} output(s) in C++, {len(expected)} in Python",
        )
    worst_abs, worst_rel, passed = 0.0, 0.0, True
    for a, e in zip(actual, expected):
        a = a.cpu()
        max_abs, max_rel = max_errors(a, e)
        worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, max_rel)
        passed = passed and within_tolerance(a, e, rtol, atol)
    return LayerComparison(
        record.name, record.call, record.type_name, worst_abs, worst_rel, rtol, atol, "ok" if passed else "FAIL"
    )


def diagnose_layers(
    model: nn.Module,
    artifact: str | os.PathLike,
    inputs: Sequence[torch.Tensor] | None = None,
    threads: int | None = None,
    runtime=None,
    rtol: float | None = None,
) -> LayerReport:
    """Find the first layer where the C++ runtime's output differs from eager PyTorch.

    Forward hooks record every submodule's inputs and outputs while `model` runs `inputs`
    (default: the golden example stored in the artifact); the C++ runtime then runs the same
    submodule of the artifact on the recorded inputs, and the outputs are compared with
    rtol (default: the manifest's) and atol = rtol x the largest |value| of that layer's output.
    Each layer sees the inputs eager gave it, so an error does not spread to later layers.
    Submodules that tracing or freezing inlined, that take non-tensor or keyword arguments, or
    that handle quantized tensors are skipped with a note.
    runtime: an open torchbridge.Runtime on `artifact` to reuse (else one is loaded).
    """
    if not isinstance(model, nn.Module):
        raise TorchbridgeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    art = open_artifact(artifact)
    rtol = float(art.manifest["tolerance"]["rtol"]) if rtol is None else rtol
    threads = resolve_threads(threads)
    started = time.perf_counter()
    if inputs is None:
        inputs, _ = art.golden()
    inputs = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if runtime is None:
        runtime = Runtime(art.path, threads=threads, warmup_runs=0)  # submodules are called once each
    available = set(runtime.submodule_names())

    model = model.cpu().eval()
    submodules = [(name, module) for name, module in model.named_modules() if name]
    recorded = Capture()
    pre, post = record_calls(submodules, True, recorded)
    with hooked(submodules, pre, post), torch.no_grad():
        model(*inputs)

    report = LayerReport(artifact=str(art.path), threads=threads)
    for record in recorded.finished_in_order():
        report.rows.append(_compare_call(record, runtime, available, rtol))
    report.seconds = time.perf_counter() - started
    return report
