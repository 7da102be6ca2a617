"""Prove that Python and C++ give the same outputs for one artifact.

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
import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchbridge.artifact import npy_bytes, open_artifact
from torchbridge.compare import fresh_inputs, max_errors, run_module, within_tolerance
from torchbridge.errors import ParityError, TorchbridgeError
from torchbridge.hooks import LayerReport, diagnose_layers
from torchbridge.mirror import load_in_python
from torchbridge.runtime import Runtime, cli_path


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
      and compare layer by layer (torchbridge.hooks.diagnose_layers; needs `model`); the table
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
    threads = threads or torch.get_num_threads()
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
