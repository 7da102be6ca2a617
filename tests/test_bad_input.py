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
    "truncated": "damaged artifact: no zip end-of-central-directory record: the file is truncated",
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
    the golden output stored in the archive instead, and write its digests again (what a forger
    would do: the digests catch damage, not a rewrite; the self-test still catches this one)."""
    import io
    import zipfile

    from torchbridge.artifact import DIGEST_RECORD, digest_record

    model = seeded(tb.models.digits_mlp)
    artifact = tb.export(model, (digits(),), tmp_path / "mlp.pt")
    tampered = tmp_path / "tampered.pt"
    with zipfile.ZipFile(artifact.path) as source:
        records = {item.filename: source.read(item.filename) for item in source.infolist()}
    for name, data in records.items():
        if name.endswith("golden/output_0.npy"):
            buffer = io.BytesIO()
            np.save(buffer, np.load(io.BytesIO(data)) + 1.0)
            records[name] = buffer.getvalue()
    top = next(iter(records)).split("/", 1)[0]
    records[f"{top}/{DIGEST_RECORD}"] = digest_record({n.split("/", 1)[1]: d for n, d in records.items()})
    with zipfile.ZipFile(tampered, "w", zipfile.ZIP_STORED) as target:
        for name, data in records.items():
            target.writestr(name, data)
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


def _rewrite(source, target, edit):
    """A well-formed copy of the archive `source` (valid CRC-32s), each record passed through
    edit(name, data, archive) -> (name, data), or None to drop it."""
    import zipfile

    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for info in archive.infolist():
            edited = edit(info.filename, archive.read(info.filename), archive)
            if edited is not None:
                out.writestr(edited[0], edited[1])
    return target


def _swap(first: str, second: str):
    def edit(name, data, archive):
        top = name.split("/", 1)[0]
        if name == f"{top}/{first}":
            return name, archive.read(f"{top}/{second}")
        if name == f"{top}/{second}":
            return name, archive.read(f"{top}/{first}")
        return name, data

    return edit


def _same_size_records(path) -> tuple[str, str]:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        by_size: dict[int, list[str]] = {}
        for info in archive.infolist():
            if "/data/" in info.filename:
                by_size.setdefault(info.file_size, []).append(info.filename.split("/", 1)[1])
    return next(tuple(names[:2]) for names in by_size.values() if len(names) >= 2)


def test_records_bound_to_their_names_by_sha256(cnn_artifact, tmp_path):
    """The zip's CRC-32s travel with the records: a well-formed archive with two weight records
    swapped, a record renamed or added, or the manifest edited passes them. The digest record the
    export writes catches each, in the bindings and the CLI alike."""
    import json

    _, good = cnn_artifact
    first, second = _same_size_records(good)

    def edit_manifest(name, data, archive):
        if name.endswith("torchbridge/manifest.json"):
            manifest = json.loads(data)
            manifest["outputs"][0]["dtype"] = "float16"
            return name, json.dumps(manifest).encode()
        return name, data

    def rename(name, data, archive):
        return (name.replace("/data/0", "/data/00"), data) if name.endswith("/data/0") else (name, data)

    def add(name, data, archive):
        return name, data

    cases = {
        "swapped": (
            _rewrite(good, tmp_path / "swapped.pt", _swap(first, second)),
            f"record '{first}' fails its SHA-256",
        ),
        "manifest": (_rewrite(good, tmp_path / "manifest.pt", edit_manifest), "manifest.json' fails its SHA-256"),
        "renamed": (_rewrite(good, tmp_path / "renamed.pt", rename), "record 'data/0' is missing"),
        "digests removed": (
            _rewrite(good, tmp_path / "nodigest.pt", lambda n, d, a: None if n.endswith("digests.json") else (n, d)),
            "digests.json', which the manifest promises, is missing",
        ),
    }
    for kind, (path, expected) in cases.items():
        with pytest.raises(tb.TorchbridgeError, match="damaged artifact") as caught:
            tb.Runtime(path)
        assert caught.value.code == "artifact" and expected in str(caught.value), (kind, str(caught.value))
        result = run_cli(path, "--selftest")
        assert result.returncode == LOAD_FAILURE and expected in result.stderr, (kind, result.stderr)
    # An added record is not one the artifact was exported with.
    import zipfile

    added = tmp_path / "added.pt"
    _rewrite(good, added, add)
    with zipfile.ZipFile(added, "a") as archive:
        top = archive.namelist()[0].split("/", 1)[0]
        archive.writestr(f"{top}/code/extra.py", "x = 1\n")
    with pytest.raises(tb.TorchbridgeError, match="record 'code/extra.py' is not one the artifact was exported with"):
        tb.Runtime(added)


def test_sha256_matches_hashlib_with_and_without_libcrypto(cnn_artifact, tmp_path):
    """Both SHA-256 implementations the runtime has (the system's libcrypto, the portable one)
    accept the export's digests and refuse a changed record."""
    import os
    import subprocess
    import sys

    _, good = cnn_artifact
    first, second = _same_size_records(good)
    swapped = _rewrite(good, tmp_path / "swapped.pt", _swap(first, second))
    code = (
        "import sys, torchbridge as tb\n"
        "tb.Runtime(sys.argv[1], warmup_runs=0)\n"
        "try:\n    tb.Runtime(sys.argv[2], warmup_runs=0)\nexcept tb.TorchbridgeError as e:\n    print(e)\n"
    )
    for choice in ("", "portable"):
        env = dict(os.environ, TORCHBRIDGE_SHA256=choice)
        result = subprocess.run(
            [sys.executable, "-c", code, str(good), str(swapped)], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert f"record '{first}' fails its SHA-256 check" in result.stdout, (choice, result.stdout)


MANIFEST_EDITS = {
    "format_version 1e300": (
        lambda m: m.update(format_version=1e300),
        "format_version must be 1, got 1.0000000000000001e+300",
    ),
    "format_version 2": (lambda m: m.update(format_version=2), "format_version 2 is newer than this runtime"),
    "dim 2**63": (
        lambda m: m["inputs"][0]["shape"].__setitem__(1, 2**63),
        "'inputs[0].shape[1]' must be an integer in [0, 2147483647]",
    ),
    "dim -4": (lambda m: m["inputs"][0]["shape"].__setitem__(1, -4), "'inputs[0].shape[1]' must be an integer"),
    "dim 1e300": (lambda m: m["inputs"][0]["shape"].__setitem__(1, 1e300), "'inputs[0].shape[1]' must be an integer"),
    "dim 1.5": (lambda m: m["inputs"][0]["shape"].__setitem__(1, 1.5), "must be an integer"),
    "optimize_from_batch 4096": (
        lambda m: m["runtime"].update(optimize_from_batch=4096),
        "'runtime.optimize_from_batch' must be an integer in [0, 1024], got 4096",
    ),
    "runtime.fuse a string": (
        lambda m: m["runtime"].update(fuse="false"),
        "'runtime.fuse' must be true or false",
    ),
    "runtime.optimize a number": (
        lambda m: m["runtime"].update(optimize=0),
        "'runtime.optimize' must be true or false",
    ),
    "runtime.variants a string": (
        lambda m: m["runtime"].update(variants="channels_last"),
        "'runtime.variants' must be an array",
    ),
    "runtime.variants a number in it": (
        lambda m: m["runtime"].update(variants=["frozen", 3]),
        "'runtime.variants[]' must be a string",
    ),
    "runtime.large_batches from batch 1": (
        lambda m: m["runtime"].update(large_batches={"from": 1, "variants": ["frozen"]}),
        "'runtime.large_batches.from' must be an integer in [2, 1024], got 1",
    ),
    "runtime.large_batches a list": (
        lambda m: m["runtime"].update(large_batches=[8, ["frozen"]]),
        "'runtime.large_batches' must be an object",
    ),
    "runtime.large_batches without variants": (
        lambda m: m["runtime"].update(large_batches={"from": 8}),
        "missing key 'variants'",
    ),
    "output dtype": (
        lambda m: m["outputs"][0].update(dtype="complex64"),
        "'outputs[0].dtype': unknown dtype 'complex64'",
    ),
    "no outputs": (lambda m: m.update(outputs=[]), "'outputs' must list 1 to 65536 outputs"),
    "rtol -1": (lambda m: m["tolerance"].update(rtol=-1), "'tolerance.rtol' must be in [0, 1]"),
    "golden count": (lambda m: m["golden"]["inputs"].append("x.npy"), "'golden.inputs' names 2 records for 1 inputs"),
    "format": (lambda m: m.update(format="onnx"), "format must be 'torchscript' or 'aoti'"),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_manifest_numbers_are_range_checked(cnn_artifact, tmp_path, edit):
    """Absurd manifest values (a hand-edit, or an archive whose digest record was rewritten too) are
    refused with what was expected, in both front ends, instead of being wrapped by a cast or
    hanging the warm-up. The digest record is dropped and the manifest's integrity promise with
    it, so these reach the manifest reader."""
    import json

    _, good = cnn_artifact
    change, expected = MANIFEST_EDITS[edit]

    def edit_manifest(name, data, archive):
        if name.endswith("digests.json"):
            return None
        if name.endswith("torchbridge/manifest.json"):
            manifest = json.loads(data)
            del manifest["integrity"]
            change(manifest)
            return name, json.dumps(manifest).encode()
        return name, data

    path = _rewrite(good, tmp_path / "edited.pt", edit_manifest)
    with pytest.raises(tb.TorchbridgeError, match="bad torchbridge manifest") as caught:
        tb.Runtime(path)
    assert caught.value.code == "artifact" and expected in str(caught.value), str(caught.value)
    result = run_cli(path, "--selftest")
    assert result.returncode == LOAD_FAILURE and expected in result.stderr, result.stderr


@pytest.mark.parametrize("text", [b"\xef\xbb\xbf{}", b'{"a": "\x00"}', b'{"a": "\xff"}', b'{"format_version": NaN}'])
def test_manifest_text_is_strict_json_in_both_front_ends(cnn_artifact, tmp_path, text):
    _, good = cnn_artifact

    def replace(name, data, archive):
        if name.endswith("digests.json"):
            return None
        return (name, text) if name.endswith("torchbridge/manifest.json") else (name, data)

    path = _rewrite(good, tmp_path / "text.pt", replace)
    with pytest.raises(tb.TorchbridgeError, match="bad torchbridge manifest: invalid JSON") as caught:
        tb.Runtime(path)
    assert caught.value.code == "artifact"
    result = run_cli(path, "--selftest")
    assert result.returncode == LOAD_FAILURE and "invalid JSON" in result.stderr, result.stderr


def test_tensors_dlpack_cannot_carry_are_refused_clearly(cnn_artifact):
    """Sparse, meta, quantized and nested tensors, numpy object arrays: TorchbridgeError('input')
    naming what to pass instead; big-endian numpy arrays are converted; an empty batch and an input
    over max_input_bytes are refused."""
    _, path = cnn_artifact
    runtime = tb.Runtime(path, threads=THREADS, max_input_bytes=1 << 20)
    x = digits()
    cases = [
        (x.to_sparse(), "has layout torch.sparse_coo"),
        (torch.empty(2, 1, 8, 8, device="meta"), "on device 'meta'"),
        (torch.quantize_per_tensor(x, 0.1, 0, torch.quint8), "quantized tensor"),
        (torch.nested.nested_tensor([x[0], x[1]]), "nested tensor"),
        (np.array([[1, "a"]], dtype=object), "numpy dtype object"),
        (torch.complex(x, x).conj(), "input 0 (torch.complex64) cannot be passed to the runtime: Can't export"),
        (torch.zeros(0, 1, 8, 8), "is empty: size 0 in dim 0"),
        (torch.zeros(4097, 1, 8, 8), "more than max_input_bytes (1048576)"),
    ]
    for value, expected in cases:
        with pytest.raises(tb.TorchbridgeError) as caught:
            runtime(value)
        assert caught.value.code == "input" and expected in str(caught.value), str(caught.value)
    big_endian = x.numpy().astype(">f4")
    torch.testing.assert_close(runtime(big_endian), runtime(x), rtol=0, atol=0)
    torch.testing.assert_close(runtime(x.clone().requires_grad_()), runtime(x), rtol=0, atol=0)
    result = run_cli(path, "--max-input-bytes", "100", "--batch", "4")
    assert result.returncode == BAD_INPUT and "more than max_input_bytes (100)" in result.stderr, result.stderr


def _zip_damage(source, target, kind: str) -> str:
    """A copy with one zip structure damaged, as a bad disk or a careless tool leaves it; returns the
    message the runtime must give."""
    import struct
    import zipfile

    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    end = data.rfind(b"PK\x05\x06")
    directory = struct.unpack("<I", data[end + 16 : end + 20])[0]
    entry = directory  # the central directory entry of that record
    while struct.unpack("<I", data[entry + 42 : entry + 46])[0] != info.header_offset:
        entry = data.find(b"PK\x01\x02", entry + 4)
    if kind == "entries on this disk":
        data[end + 8] ^= 0x01
        expected = "names another disk (a split archive)"
    elif kind == "entry disk":
        data[entry + 34] = 0x01
        expected = f"('{info.filename}') is damaged (its disk, flags or sizes)"
    elif kind == "entry sizes":
        data[entry + 20] ^= 0x01  # compressed size of a stored record
        expected = f"('{info.filename}') is damaged (its disk, flags or sizes)"
    elif kind == "local signature":
        data[info.header_offset + 1] ^= 0x01
        expected = f"the local zip header of '{info.filename}' is damaged"
    else:  # "local name"
        data[info.header_offset + 30] ^= 0x01
        expected = f"the local zip header of '{info.filename}' is damaged"
    target.write_bytes(bytes(data))
    return expected


@pytest.mark.parametrize("kind", ["entries on this disk", "entry disk", "entry sizes", "local signature", "local name"])
def test_damaged_zip_structure_is_refused_in_torchbridge_words(cnn_artifact, tmp_path, kind):
    """The zip's end record, central directory and local headers are read before LibTorch's reader:
    what it would call a 'multidisk archive' or 'invalid header' is named here, with the record."""
    _, good = cnn_artifact
    damaged = tmp_path / "damaged.pt"
    expected = _zip_damage(good, damaged, kind)
    with pytest.raises(tb.TorchbridgeError) as caught:
        tb.Runtime(damaged)
    message = str(caught.value)
    assert caught.value.code == "artifact" and str(damaged) in message and "damaged artifact" in message
    assert expected in message and "PytorchStreamReader" not in message, message
    result = run_cli(damaged, "--selftest")
    assert result.returncode == LOAD_FAILURE and expected in result.stderr, result.stderr
