"""Bad input gets a clear error naming what was expected: never a crash, never garbage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchbridge as tb
from conftest import THREADS, digits, run_cli, seeded

# torchbridge-run exit statuses
USAGE, BAD_INPUT, LOAD_FAILURE, MISMATCH = 2, 3, 4, 5


@pytest.fixture
def bad_artifacts(tmp_path, cnn_artifact):
    _, good = cnn_artifact
    data = good.read_bytes()
    files = {
        "missing": tmp_path / "missing.pt",
        "truncated": tmp_path / "truncated.pt",
        "text": tmp_path / "notes.pt",
        "checkpoint": tmp_path / "checkpoint.pt",
        "empty": tmp_path / "empty.pt",
    }
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"].write_text("this is not a model\n")
    torch.save({"weight": torch.zeros(3)}, files["checkpoint"])
    files["empty"].write_bytes(b"")
    return files


EXPECTED_MESSAGES = {
    "missing": "cannot open artifact",
    "truncated": "corrupt or truncated",
    "text": "expected a zip archive",
    "checkpoint": "torch.save checkpoint, not a TorchScript artifact",
    "empty": "expected a zip archive",
}


@pytest.mark.parametrize("kind", list(EXPECTED_MESSAGES))
def test_unloadable_artifact_raises(bad_artifacts, kind):
    with pytest.raises(tb.TorchbridgeError, match=EXPECTED_MESSAGES[kind]) as caught:
        tb.Runtime(bad_artifacts[kind])
    assert caught.value.code == "artifact"


@pytest.mark.parametrize("kind", list(EXPECTED_MESSAGES))
def test_unloadable_artifact_cli_exit_status(bad_artifacts, kind):
    result = run_cli(bad_artifacts[kind], "--selftest")
    assert result.returncode == LOAD_FAILURE, result.stderr
    assert result.stderr.startswith("error: ") and EXPECTED_MESSAGES[kind] in result.stderr


def _flip_byte(source, target, suffix: str):
    """A copy of the artifact with one bit flipped in the middle of the record named `*suffix`."""
    import struct
    import zipfile

    with zipfile.ZipFile(source) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    data = bytearray(source.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_length + extra_length + info.compress_size // 2] ^= 0x10
    target.write_bytes(bytes(data))
    return info.filename.split("/", 1)[1]


RECORDS = ["data/0", "extra/torchbridge/manifest.json", "golden/output_0.npy", "constants.pkl"]


@pytest.mark.parametrize("suffix", RECORDS)
def test_a_flipped_bit_anywhere_is_refused_naming_the_record(cnn_artifact, tmp_path, suffix):
    """LibTorch's reader does not check the zip's CRC-32s; the runtime checks every record at load."""
    _, good = cnn_artifact
    damaged = tmp_path / "damaged.pt"
    record = _flip_byte(good, damaged, suffix)
    with pytest.raises(tb.TorchbridgeError, match="damaged artifact") as caught:
        tb.Runtime(damaged)
    assert caught.value.code == "artifact" and f"record '{record}'" in str(caught.value)
    result = run_cli(damaged, "--selftest")
    assert result.returncode == LOAD_FAILURE and f"record '{record}'" in result.stderr, result.stderr


def test_wrong_shape_dtype_and_count_name_the_expected_spec(cnn_artifact):
    _, path = cnn_artifact
    runtime = tb.Runtime(path, threads=THREADS)
    cases = [
        ((torch.rand(2, 3, 8, 8),), "input 0 must be x: float32[?, 1, 8, 8]", "float32[2, 3, 8, 8]"),
        ((torch.rand(2, 1, 8, 8, dtype=torch.float64),), "input 0 must be x: float32[?, 1, 8, 8]", "float64"),
        ((torch.rand(1, 8, 8),), "input 0 must be x: float32[?, 1, 8, 8]", "float32[1, 8, 8]"),
        ((digits(), digits()), "expected 1 input(s) (x: float32[?, 1, 8, 8]), got 2", ""),
        ((), "expected 1 input(s)", "got 0"),
    ]
    for inputs, expected, got in cases:
        with pytest.raises(tb.TorchbridgeError) as caught:
            runtime(*inputs)
        assert caught.value.code == "input"
        assert expected in str(caught.value) and got in str(caught.value)


def test_non_tensor_input_is_refused(cnn_artifact):
    _, path = cnn_artifact
    with pytest.raises(tb.TorchbridgeError, match="must be a torch.Tensor or numpy array, got list"):
        tb.Runtime(path)([[0.0] * 64])


def _npy_cases(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, digits(2).numpy())
    data = good.read_bytes()
    cases = {
        "truncated data": (data[:-100], "truncated data"),
        "no magic": (b"PK\x03\x04 not numpy at all", "missing the \\x93NUMPY magic"),
        "truncated header": (data[:20], "truncated header"),
    }
    complex_path = tmp_path / "complex.npy"
    np.save(complex_path, np.zeros((2, 1, 8, 8), dtype=np.complex64))
    cases["unsupported dtype"] = (complex_path.read_bytes(), "unsupported .npy dtype '<c8'")
    return good, cases


def test_corrupt_npy_cli_exit_status(cnn_artifact, tmp_path):
    _, path = cnn_artifact
    _, cases = _npy_cases(tmp_path)
    for name, (content, message) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.npy"
        bad.write_bytes(content)
        result = run_cli(path, "--input", bad)
        assert result.returncode == BAD_INPUT, (name, result.stderr)
        assert message in result.stderr, (name, result.stderr)
        with pytest.raises(tb.TorchbridgeError, match="not a valid .npy file|unsupported .npy dtype"):
            tb.read_npy(bad)


def test_cli_wrong_shape_and_missing_npy(cnn_artifact, tmp_path):
    _, path = cnn_artifact
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 64), dtype=np.float32))
    result = run_cli(path, "--input", wrong)
    assert result.returncode == BAD_INPUT
    assert "must be x: float32[?, 1, 8, 8]" in result.stderr and "got float32[2, 64]" in result.stderr
    result = run_cli(path, "--input", tmp_path / "absent.npy")
    assert result.returncode == BAD_INPUT and "cannot open file" in result.stderr
    result = run_cli(path, "--input", wrong, "--input", wrong)
    assert result.returncode == BAD_INPUT and "expected 1 input(s)" in result.stderr


def test_cli_usage_errors(cnn_artifact):
    _, path = cnn_artifact
    assert run_cli("--help").returncode == 0
    assert "torchbridge-run" in run_cli("--version").stdout
    for args, message in [
        ((), "missing MODEL"),
        ((path, "--bogus"), "unknown option '--bogus'"),
        ((path, "--threads", "two"), "--threads expects an integer"),
        ((path, "--bench"), "--bench needs a value"),
        ((path, "--device", "tpu"), "unknown device 'tpu'"),
    ]:
        result = run_cli(*args)
        assert result.returncode == USAGE, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)


def test_cli_output_count_must_match(cnn_artifact, tmp_path):
    _, path = cnn_artifact
    result = run_cli(path, "--output", tmp_path / "a.npy", "--output", tmp_path / "b.npy")
    assert result.returncode == BAD_INPUT and "pass --output once per output" in result.stderr


def test_selftest_mismatch_exit_status(tmp_path):
    """A model whose output depends on the thread count cannot fake a mismatch, so tamper with
    the golden output stored in the archive instead."""
    import zipfile

    model = seeded(tb.models.digits_mlp)
    artifact = tb.export(model, (digits(),), tmp_path / "mlp.pt")
    tampered = tmp_path / "tampered.pt"
    with zipfile.ZipFile(artifact.path) as source, zipfile.ZipFile(tampered, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("golden/output_0.npy"):
                golden = np.load(__import__("io").BytesIO(data))
                buffer = __import__("io").BytesIO()
                np.save(buffer, golden + 1.0)
                data = buffer.getvalue()
            target.writestr(item, data)
    result = run_cli(tampered, "--selftest")
    assert result.returncode == MISMATCH and "MISMATCH" in result.stdout
    assert tb.Runtime(tampered).selftest()["passed"] is False


def test_cuda_request_without_gpu_is_clear(cnn_artifact):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _, path = cnn_artifact
    with pytest.raises(tb.TorchbridgeError, match="CUDA is not available") as caught:
        tb.Runtime(path, device="cuda")
    assert caught.value.code == "invalid_argument"


def test_failed_export_leaves_existing_file_untouched(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    target = tmp_path / "model.pt"
    target.write_bytes(b"earlier artifact")
    with pytest.raises(tb.ExportError, match="fails on the example inputs"):
        tb.export(Broken(), (torch.rand(2, 3),), target)
    assert target.read_bytes() == b"earlier artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_export_refuses_nan_example_and_bad_arguments(tmp_path):
    model = seeded(tb.models.digits_mlp)
    x = digits()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(tb.TorchbridgeError, match="contains NaN or Inf"):
        tb.export(model, (x,), tmp_path / "nan.pt")
    with pytest.raises(tb.TorchbridgeError, match="method must be one of"):
        tb.export(model, (digits(),), tmp_path / "m.pt", method="compile")
    with pytest.raises(tb.TorchbridgeError, match="must be a torch.Tensor"):
        tb.export(model, ([1.0, 2.0],), tmp_path / "m.pt")
    assert not list(tmp_path.iterdir())


def test_plain_torchscript_without_manifest_runs_but_has_no_spec(tmp_path):
    scripted = torch.jit.script(seeded(tb.models.digits_mlp))
    torch.jit.save(scripted, str(tmp_path / "plain.pt"))
    runtime = tb.Runtime(tmp_path / "plain.pt")
    assert runtime.manifest is None
    assert runtime(digits()).shape == (4, 10)
    result = run_cli(tmp_path / "plain.pt")
    assert result.returncode == BAD_INPUT and "no torchbridge manifest" in result.stderr
