"""format="auto": both formats exported, both timed in the C++ runtime, the faster kept at the
path asked for, with the table in the manifest; the runtime and every front end read the format
from the archive, not from the file name."""

from __future__ import annotations

import subprocess
import sys

import torch
from torch import nn

import torchbridge as tb
from conftest import THREADS, digits, seeded
from torchbridge.artifact import artifact_format, load_manifest
from torchbridge.compare import max_errors


def test_auto_keeps_the_faster_format_and_records_the_table(tmp_path):
    model = seeded(tb.models.digits_cnn)
    path = tmp_path / "cnn.pt"
    artifact = tb.export(model, (digits(4),), path, format="auto")
    selection = artifact.manifest["selection"]
    assert set(selection["p50_ms"]) == {"torchscript", "aoti"} and selection["batches"] == [1, 16]
    assert all(len(t) == 2 and min(t) > 0 for t in selection["p50_ms"].values())
    geomean = {name: (t[0] * t[1]) ** 0.5 for name, t in selection["p50_ms"].items()}
    assert selection["chosen"] == min(geomean, key=geomean.get)
    assert artifact_format(path) == selection["chosen"] == artifact.manifest["format"]
    assert load_manifest(path)["selection"] == selection
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.pt"]  # the staging folder is gone
    runtime = tb.Runtime(path, threads=THREADS)
    x = digits(8)
    with torch.inference_mode():
        assert max_errors(runtime(x), model(x))[1] <= 1e-5
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed


def test_auto_can_put_a_pt2_at_a_pt_path(tmp_path, monkeypatch):
    """The choice forced to the .pt2: the file keeps its .pt name, its records say what it is, the
    rewritten manifest still matches the archive's digests, and every front end runs it."""
    auto = sys.modules["torchbridge.auto"]
    monkeypatch.setattr(
        auto, "time_in_runtime", lambda paths: ({"torchscript": [2.0, 20.0], "aoti": [1.0, 10.0]}, [1, 16])
    )
    model = seeded(tb.models.digits_mlp)
    path = tmp_path / "mlp.pt"
    artifact = tb.export(model, (digits(4),), path, format="auto")
    assert artifact.manifest["selection"]["chosen"] == "aoti" and artifact_format(path) == "aoti"
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.format == "aoti"
    x = digits(5)
    with torch.inference_mode():
        assert max_errors(runtime(x), model(x))[1] <= 1e-5
    done = subprocess.run([str(tb.runtime.cli_path()), str(path), "--selftest"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed


class BranchesOnValues(nn.Module):
    """A branch on a tensor's value: TorchScript scripts it, torch.export refuses it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        y = self.fc(x.flatten(1))
        if bool(y.sum() > 0):
            return y * 2
        return y


def test_auto_falls_back_to_torchscript_and_says_why(tmp_path):
    model = seeded(BranchesOnValues).eval()
    path = tmp_path / "branchy.pt"
    path.write_bytes(b"the user's file")
    artifact = tb.export(model, (digits(4),), path, format="auto")
    selection = artifact.manifest["selection"]
    assert selection["chosen"] == "torchscript" and set(selection["p50_ms"]) == {"torchscript"}
    assert selection["failed"]["aoti"], selection
    assert artifact_format(path) == "torchscript"
    x = digits(3)
    with torch.inference_mode():
        assert max_errors(tb.Runtime(path, threads=THREADS)(x), model(x))[1] <= 1e-5
