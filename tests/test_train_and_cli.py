"""Training through Lightning and the `torchbridge` command, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import torchbridge as tb
from conftest import THREADS


def torchbridge_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchbridge", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=900
    )


def test_digits_split_is_fixed_and_real():
    data = tb.data.DigitsDataModule()
    sizes = {split: len(data.dataset(split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    images, labels = data.dataset("test").tensors
    assert images.shape == (360, 1, 8, 8) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert set(labels.tolist()) == set(range(10))
    again = tb.data.DigitsDataModule().dataset("test").tensors[1]
    assert torch.equal(labels, again)


def test_train_reaches_useful_accuracy_and_checkpoints(tmp_path):
    model = tb.models.digits_cnn()
    result = tb.train(model, tb.data.DigitsDataModule(), max_epochs=3, root_dir=tmp_path, progress_bar=False)
    assert result.test_accuracy >= 0.90, result
    assert result.best_checkpoint and (tmp_path / "logs").is_dir()
    assert not model.training
    # The checkpoint reloads into a fresh model with the same accuracy.
    fresh = tb.models.digits_cnn()
    from torchbridge.train import load_weights

    load_weights(fresh, result.best_checkpoint)
    assert tb.evaluate(fresh) == pytest.approx(result.test_accuracy, abs=1e-6)


@pytest.mark.parametrize("name", ["digits_mlp"])
def test_cli_train_export_verify_info(tmp_path, name):
    train = torchbridge_cli("train", "--model", name, "--epochs", "2", "--out", tmp_path / "train", "--no-progress")
    assert train.returncode == 0, train.stderr
    assert "test accuracy" in train.stdout
    weights = tmp_path / "train" / "weights.pt"
    export = torchbridge_cli("export", "--model", name, "--weights", weights, "--out", tmp_path / "m.pt")
    assert export.returncode == 0, export.stderr
    assert "input  x: float32[?, 1, 8, 8]" in export.stdout
    verify = torchbridge_cli("verify", tmp_path / "m.pt", "--model", name, "--weights", weights, "--threads", THREADS)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "parity PASSED" in verify.stdout
    info = torchbridge_cli("info", tmp_path / "m.pt")
    assert json.loads(info.stdout)["model"] == "DigitsMLP"


def test_cli_verify_fails_with_the_wrong_weights(tmp_path):
    assert torchbridge_cli("export", "--model", "digits_mlp", "--out", tmp_path / "m.pt").returncode == 0
    other = tb.models.digits_mlp()
    torch.save(other.state_dict(), tmp_path / "other.pt")
    verify = torchbridge_cli("verify", tmp_path / "m.pt", "--model", "digits_mlp", "--weights", tmp_path / "other.pt")
    assert verify.returncode == 1
    assert "parity FAILED" in verify.stdout


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    result = torchbridge_cli("verify", tmp_path / "absent.pt")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "no such artifact" in result.stderr
    assert "Traceback" not in result.stderr
    result = torchbridge_cli("export", "--model", "no_such_model", "--out", tmp_path / "x.pt")
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_pipeline_writes_report_and_never_clobbers(tmp_path):
    out = tmp_path / "run"
    result = torchbridge_cli("pipeline", "--out", out, "--epochs", "2", "--bench-runs", "5", "--no-progress")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"writing to {out}" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["passed"] and report["selftest"]["passed"]
    assert report["accuracy"]["eager"] > 0.8
    assert report["accuracy"]["cpp"] == pytest.approx(report["accuracy"]["eager"], abs=1e-9)
    assert {row["path"] for row in report["latency"]} == {"eager", "torchscript", "cpp", "cli"}
    assert "parity PASSED" in (out / "report.md").read_text()
    before = (out / "report.json").read_bytes()

    again = torchbridge_cli("pipeline", "--out", out, "--epochs", "1", "--no-progress")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert (out / "report.json").read_bytes() == before

    default = torchbridge_cli("pipeline", "--epochs", "1", "--bench-runs", "3", "--no-progress", cwd=tmp_path)
    assert default.returncode == 0, default.stderr[-3000:]
    runs = list((tmp_path / "runs").glob("pipeline-*"))
    assert len(runs) == 1 and (runs[0] / "report.md").is_file()
