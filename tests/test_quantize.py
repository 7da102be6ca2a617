"""Int8 quantization: dynamic, static and QAT models export to TorchScript, and the C++ runtime
gives exactly the outputs Python gets from the same artifact; accuracy and size hold on the digits."""

from __future__ import annotations

import json
import re
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchbridge as tb
from conftest import THREADS, digits, requires_torchvision, reseal, run_cli, seeded
from test_train_and_cli import torchbridge_cli
from torchbridge.quantize import fusion_groups

USAGE = 2  # torchbridge-run's exit status for an option or artifact requirement it cannot meet


def assert_exact_cpp_parity(model: nn.Module, path, cli: bool = True, fresh: int = 2) -> tb.ParityReport:
    """Same artifact in Python (torch.jit.load) and in C++ (bindings, torchbridge-run): integer
    kernels are deterministic, so the outputs must be bit-identical; eager int8 vs the artifact
    within the manifest's tolerance."""
    report = tb.verify(model, path, threads=THREADS, fresh=fresh, cli=cli)
    assert report.passed, report.table()
    exact = [r for r in report.rows if r.reference == "torchscript"]
    assert {r.candidate for r in exact} == ({"cpp", "cli"} if cli else {"cpp"})
    assert all(r.max_abs == 0.0 for r in exact), report.table()
    return report


def cpp_accuracy(path, data: tb.data.DigitsDataModule) -> float:
    images, labels = data.dataset("test").tensors
    return float((tb.Runtime(path, threads=THREADS)(images).argmax(dim=1) == labels).float().mean())


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    data = tb.data.DigitsDataModule()
    torch.manual_seed(0)
    model = tb.models.digits_cnn()
    tb.train(model, data, max_epochs=3, root_dir=tmp_path_factory.mktemp("train"), progress_bar=False)
    fp32 = tb.export(model, (digits(),), tmp_path_factory.mktemp("fp32") / "fp32.pt")
    return model, data, cpp_accuracy(fp32.path, data)


def test_static_int8_loses_at_most_one_point_and_matches_python_exactly(trained_cnn, tmp_path):
    model, data, fp32_accuracy = trained_cnn
    int8 = tb.quantize(model, "static", data, progress_bar=False)

    artifact = tb.export(int8, (digits(),), tmp_path / "int8.pt")
    assert artifact.manifest["quantized_engine"] == "x86"
    int8_accuracy = cpp_accuracy(artifact.path, data)
    print(f"digits CNN test accuracy in C++: fp32 {fp32_accuracy:.4f}, static int8 {int8_accuracy:.4f}")
    assert fp32_accuracy >= 0.9
    assert int8_accuracy >= fp32_accuracy - 0.01
    assert_exact_cpp_parity(int8, artifact.path)
    selftest = run_cli(artifact.path, "--selftest", "--threads", THREADS)
    assert selftest.returncode == 0 and "selftest passed" in selftest.stdout, selftest.stderr
    # Fused and converted: int8 conv+relu modules, no float conv or batch norm left.
    layers = str(int8)
    assert "QuantizedConvReLU2d(" in layers and "QuantizedLinearReLU(" in layers
    assert " Conv2d(" not in layers and "BatchNorm2d(" not in layers


def test_qat_loses_at_most_half_a_point_and_leaves_the_float_model_alone(trained_cnn, tmp_path):
    model, data, fp32_accuracy = trained_cnn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    int8 = tb.quantize(model, "qat", data, epochs=1, root_dir=tmp_path / "qat", progress_bar=False)

    artifact = tb.export(int8, (digits(),), tmp_path / "qat.pt")
    int8_accuracy = cpp_accuracy(artifact.path, data)
    print(f"digits CNN test accuracy in C++: fp32 {fp32_accuracy:.4f}, QAT int8 {int8_accuracy:.4f}")
    assert int8_accuracy >= fp32_accuracy - 0.005
    assert_exact_cpp_parity(int8, artifact.path, cli=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any("fake_quant" in name or "activation_post_process" in name for name, _ in model.named_modules())


@pytest.mark.parametrize("width, at_least", [(32, 2.6), (96, 3.5)])
def test_int8_artifact_is_smaller(tmp_path, width, at_least):
    """Weights shrink 4x; the rest of the archive (TorchScript code and its debug tables, zip
    records, golden example, manifest, the SHA-256 digest of each record) does not. At the default
    width 32 (85k parameters) that rest is about 36 KiB of each artifact (the int8 one has 55
    records, 5.5 KiB of digests), so the ratio is about 2.8; at width 96 weights dominate."""
    model = seeded(lambda: tb.models.DigitsCNN(width=width))
    fp32 = tb.export(model, (digits(),), tmp_path / "fp32.pt")
    int8 = tb.quantize(model, "static", tb.data.DigitsDataModule(), calibration_batches=2, progress_bar=False)
    quantized = tb.export(int8, (digits(),), tmp_path / "int8.pt")
    ratio = fp32.size_bytes / quantized.size_bytes
    print(f"width {width}: fp32 {fp32.size_bytes} B, int8 {quantized.size_bytes} B, {ratio:.2f}x smaller")
    assert ratio >= at_least


def test_dynamic_lstm_scripts_and_runs_in_cpp(tmp_path):
    model = seeded(lambda: tb.models.DigitsLSTM(hidden=64, num_layers=2))
    int8 = tb.quantize(model, "dynamic")
    assert "DynamicQuantizedLSTM(" in str(int8) and "DynamicQuantizedLinear(" in str(int8)

    artifact = tb.export(int8, (digits(),), tmp_path / "lstm.pt", method="script")
    assert artifact.manifest["method"] == "script" and artifact.manifest["quantized_engine"] == "x86"
    assert_exact_cpp_parity(int8, artifact.path)
    with torch.no_grad():  # int8 weights change the answer a little, not the meaning
        torch.testing.assert_close(int8(digits(8)), model(digits(8)), rtol=0, atol=0.05)


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_engine_is_recorded_and_selected_by_the_cpp_runtime(tmp_path, engine):
    int8 = tb.quantize(seeded(tb.models.digits_cnn), "static", engine=engine, calibration_batches=2, progress_bar=False)
    artifact = tb.export(int8, (digits(),), tmp_path / f"{engine}.pt")
    assert artifact.manifest["quantized_engine"] == engine
    info = run_cli(artifact.path, "--info")
    assert f"quantized engine: {engine}" in info.stdout

    torch.backends.quantized.engine = "x86"
    tb.Runtime(artifact.path, threads=THREADS)  # LibTorch keeps one engine per process: C++ sets it
    assert torch.backends.quantized.engine == engine
    assert_exact_cpp_parity(int8, artifact.path, cli=False, fresh=1)


def _with_engine(source, target, engine: str) -> None:
    """A copy of the artifact whose manifest names another quantized engine."""
    with zipfile.ZipFile(source) as archive_in, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive_out:
        for entry in archive_in.infolist():
            content = archive_in.read(entry)
            if entry.filename.endswith("extra/torchbridge/manifest.json"):
                manifest = json.loads(content)
                manifest["quantized_engine"] = engine
                content = json.dumps(manifest).encode()
            archive_out.writestr(entry, content)
    reseal(target)


def test_missing_engine_is_a_clear_error(tmp_path):
    int8 = tb.quantize(seeded(tb.models.digits_mlp), "dynamic")
    good = tb.export(int8, (digits(),), tmp_path / "good.pt").path
    supported = torch.backends.quantized.supported_engines
    missing = next((e for e in ("x86", "fbgemm", "qnnpack", "onednn") if e not in supported), "no_such_engine")

    _with_engine(good, tmp_path / "same.pt", "x86")  # the rewrite alone keeps a loadable artifact
    assert tb.Runtime(tmp_path / "same.pt").selftest()["passed"]
    _with_engine(good, tmp_path / "missing.pt", missing)
    expected = f"artifact needs quantized engine '{missing}', which this LibTorch lacks (available: "
    with pytest.raises(tb.TorchbridgeError, match=re.escape(expected)) as caught:
        tb.Runtime(tmp_path / "missing.pt")
    assert caught.value.code == "invalid_argument"
    result = run_cli(tmp_path / "missing.pt", "--selftest")
    assert result.returncode == USAGE and result.stderr.startswith("error: ") and expected in result.stderr
    with pytest.raises(tb.TorchbridgeError, match=f"quantized_engine '{missing}' is not one of this torch's"):
        tb.export(int8, (digits(),), tmp_path / "refused.pt", quantized_engine=missing)
    assert not (tmp_path / "refused.pt").exists()


@requires_torchvision
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mobilenet_v3_large"])
def test_torchvision_quantizable_models_static(tmp_path, name):
    torch.manual_seed(0)
    model = tb.models.torchvision_model(name, in_channels=None, quantizable=True).eval()
    # Real images for calibration: the digits, resized to 32x32 and repeated over 3 channels.
    images = F.interpolate(tb.data.DigitsDataModule().dataset("train").tensors[0][:16], size=32, mode="bilinear")
    batches = list(images.expand(-1, 3, -1, -1).split(8))
    int8 = tb.quantize(model, "static", batches, progress_bar=False)
    assert "QuantizedConvReLU2d(" in str(int8)  # its own fuse_model ran

    artifact = tb.export(int8, (batches[0][:2],), tmp_path / f"{name}.pt")
    assert_exact_cpp_parity(int8, artifact.path, cli=name == "resnet18", fresh=1)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x  # `+` on int8 tensors needs FloatFunctional in eager mode


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(8, 16, batch_first=True)  # no static int8 GRU in eager mode (LSTM has one)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x.flatten(1, 2))[0][:, -1]


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.linear(image.flatten(1)) * mask


def test_what_cannot_be_quantized_is_refused_clearly():
    cases = [
        (lambda: tb.quantize(seeded(tb.models.digits_cnn), "int4"), tb.TorchbridgeError, "mode must be one of"),
        (lambda: tb.quantize(seeded(tb.models.digits_cnn), engine="tpu"), tb.TorchbridgeError, "engine must be one of"),
        (lambda: tb.quantize(nn.Conv2d(1, 2, 3), "dynamic"), tb.QuantizationError, "found no Linear, LSTM, GRU"),
        (lambda: tb.quantize(Residual(), "static", [digits()]), tb.QuantizationError, "FloatFunctional"),
        (lambda: tb.quantize(Recurrent(), "static", [digits()]), tb.QuantizationError, "mode='dynamic'"),
        (lambda: tb.quantize(Pair(), "static", [digits()]), tb.QuantizationError, "forward takes 2 inputs"),
        (
            lambda: tb.quantize(seeded(tb.models.digits_cnn), "static", [torch.rand(2, 3, 8, 8)]),
            tb.QuantizationError,
            r"calibration batch 0 of shape \(2, 3, 8, 8\) fails",
        ),
        (lambda: tb.quantize(seeded(tb.models.digits_cnn), "static", 42), tb.TorchbridgeError, "calibration data"),
        (lambda: tb.quantize(seeded(tb.models.digits_cnn), "static", []), tb.QuantizationError, "at least one"),
        (lambda: tb.quantize(seeded(tb.models.digits_cnn), "qat", [digits()]), tb.TorchbridgeError, "Lightning"),
    ]
    for make, error, message in cases:
        with pytest.raises(error, match=message):
            make()


def test_fusion_patterns_come_from_the_module_graph():
    class Block(nn.Module):  # modules called in forward, not an nn.Sequential
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.act = nn.ReLU()
            self.head = nn.Linear(4 * 6 * 6, 8)
            self.shared = nn.ReLU()  # called twice: fusing it into the linear would drop the second call

        def forward(self, x):
            y = self.head(self.act(self.bn(self.conv(x))).flatten(1))
            return self.shared(y) + self.shared(-y)

    assert fusion_groups(Block()) == [["conv", "bn", "act"]]
    assert fusion_groups(tb.models.digits_cnn()) == [
        ["features.0", "features.1", "features.2"],
        ["features.3", "features.4", "features.5"],
        ["classifier.1", "classifier.2"],
    ]


def test_cli_quantize_reports_size_accuracy_and_parity(tmp_path):
    result = torchbridge_cli("quantize", "--model", "digits_lstm", "--mode", "dynamic", "--out", tmp_path / "q.pt")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dynamic int8, engine x86" in result.stdout and "x smaller" in result.stdout
    assert "digits test accuracy: fp32" in result.stdout and "parity PASSED" in result.stdout
    assert tb.load_manifest(tmp_path / "q.pt")["quantized_engine"] == "x86"

    refused = torchbridge_cli("quantize", "--calibration-batches", "0", "--out", tmp_path / "s.pt")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: calibration_batches must be at least 1")
    assert not (tmp_path / "s.pt").exists()


def test_pipeline_quantize_stage_reports_int8_against_fp32(tmp_path):
    out = tmp_path / "run"
    result = torchbridge_cli(
        "pipeline",
        "--out",
        out,
        "--model",
        "digits_mlp",
        "--epochs",
        "1",
        "--bench-runs",
        "3",
        "--quantize",
        "static",
        "--no-progress",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    int8 = report["quantization"]
    assert int8["mode"] == "static" and int8["engine"] == "x86" and int8["parity"]["passed"]
    assert int8["accuracy"]["fp32"] == report["accuracy"]["cpp"]
    assert 0.0 < int8["accuracy"]["int8"] <= 1.0
    # The MLP's 26k weights shrink 4x; code and golden example do not (2.4x measured).
    assert int8["bytes"]["fp32"] == report["artifact"]["bytes"] and int8["size_ratio"] > 2.0
    assert {(row["path"], row["batch"]) for row in int8["latency"]} == {
        (path, batch) for path in ("fp32", "int8") for batch in (1, 32)
    }
    assert set(int8["speedup"]) == {"1", "32"}
    markdown = (out / "report.md").read_text()
    assert "## Int8 quantization (static, engine x86)" in markdown and "x smaller" in markdown
