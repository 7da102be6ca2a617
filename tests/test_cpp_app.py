"""A C++ application embeds the runtime through find_package(torchbridge) against the installed
pip package, and prints the same outputs as Python."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import torchbridge as tb
from conftest import TwoInTwoOut, digits, seeded

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp_app"


def python_printout(outputs: list[torch.Tensor]) -> list[str]:
    """The app's format: 'output K: dtype[shape]', then one line per row, floats with 6 decimals."""
    lines = []
    for k, y in enumerate(outputs):
        shape = ", ".join(str(d) for d in y.shape)
        lines.append(f"output {k}: {str(y.dtype).removeprefix('torch.')}[{shape}]")
        rows = y.reshape(-1, y.shape[-1] if y.dim() else 1)
        for row in rows.tolist():
            lines.append(" ".join(f"{v:.6f}" if y.is_floating_point() else str(v) for v in row))
    return lines


def close_enough(actual: str, expected: str) -> bool:
    """Same tokens; numbers may differ by one unit in the 6th decimal (printing of float noise)."""
    a, e = actual.split(), expected.split()
    if len(a) != len(e):
        return False
    for x, y in zip(a, e):
        if x == y:
            continue
        try:
            if abs(float(x) - float(y)) > 1.5e-6:
                return False
        except ValueError:
            return False
    return True


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Path:
    build = tmp_path_factory.mktemp("cpp_app_build")
    cmake = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert cmake, "cmake not found"
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    configure = subprocess.run(
        [cmake, "-S", EXAMPLE, "-B", build, "-G", "Ninja", f"-DCMAKE_PREFIX_PATH={tb.cmake_prefix_path}"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run([cmake, "--build", build], capture_output=True, text=True, env=env)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return build / "app"


def run_app(app: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return subprocess.run([str(app), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_app_prints_what_python_computes(app, tmp_path):
    import numpy as np

    model = seeded(tb.models.digits_cnn)
    x = digits(3)
    tb.export(model, (x,), tmp_path / "cnn.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    result = run_app(app, tmp_path / "cnn.pt", tmp_path / "x.npy")
    assert result.returncode == 0, result.stderr
    expected = python_printout(tb.Runtime(tmp_path / "cnn.pt").forward(x))
    actual = result.stdout.splitlines()
    assert len(actual) == len(expected) == 4
    assert all(close_enough(a, e) for a, e in zip(actual, expected)), (actual, expected)


def test_app_runs_the_golden_example_of_a_two_output_model(app, tmp_path):
    model = seeded(TwoInTwoOut)
    artifact = tb.export(model, (digits(2), torch.rand(2, 3)), tmp_path / "two.pt")
    golden_inputs, _ = artifact.golden()
    result = run_app(app, artifact.path)
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = python_printout(list(model(*golden_inputs)))
    actual = result.stdout.splitlines()
    assert len(actual) == len(expected)
    assert all(close_enough(a, e) for a, e in zip(actual, expected)), (actual, expected)


def test_app_reports_a_bad_artifact(app, tmp_path):
    (tmp_path / "bad.pt").write_text("not a model")
    result = run_app(app, tmp_path / "bad.pt")
    assert result.returncode == 1 and "error: " in result.stderr and "expected a zip archive" in result.stderr
