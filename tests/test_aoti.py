"""The .pt2 path: torch.export + AOTInductor behind the same Runtime, CLI and bindings as .pt.

AOTInductor compiles for tens of seconds per model, so each package is compiled once per module
(fixtures below) and every test reads or runs that one file.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import torchbridge as tb
from conftest import THREADS, digits, requires_torchvision, run_cli, seeded
from torchbridge.timing import compare_artifacts, ratio_table

# torchbridge-run exit statuses
BAD_INPUT, LOAD_FAILURE = 3, 4
MAX_BATCH = 16  # the digits MLP package is exported with dynamic_range (1, MAX_BATCH)


def torchbridge_cli(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torchbridge", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def rewrite_package(source: Path, target: Path, change, reseal: bool = True) -> None:
    """Copy a .pt2 entry by entry; change(name, data) returns the new bytes of an entry. With
    `reseal` the digest record is written again to match (so the checks after the digest one are
    what a test reaches); without, the SHA-256 check refuses the changed entry."""
    from torchbridge.artifact import DIGEST_RECORD, digest_record

    with zipfile.ZipFile(source) as old:
        items = [(item, change(item.filename, old.read(item.filename))) for item in old.infolist()]
    if reseal:
        digests = digest_record({item.filename.split("/", 1)[1]: data for item, data in items})
        items = [(item, digests if item.filename.endswith("/" + DIGEST_RECORD) else data) for item, data in items]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for item, data in items:
            new.writestr(item, data)


def with_manifest(source: Path, target: Path, edit) -> None:
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("/extra/torchbridge/manifest.json"):
            manifest = json.loads(data)
            edit(manifest)
            return json.dumps(manifest, indent=2).encode()
        return data

    rewrite_package(source, target, change)


@pytest.fixture(scope="module")
def digits_data():
    return tb.data.DigitsDataModule()


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory, digits_data):
    """The digits CNN trained briefly: int8 accuracy is only meaningful on a trained model."""
    torch.manual_seed(0)
    model = tb.models.digits_cnn()
    root = tmp_path_factory.mktemp("train")
    tb.train(model, digits_data, max_epochs=3, root_dir=root, progress_bar=False)
    return model.eval()


@pytest.fixture(scope="module")
def cnn_pt2(tmp_path_factory, trained_cnn):
    path = tmp_path_factory.mktemp("cnn") / "cnn.pt2"
    artifact = tb.export(trained_cnn, (digits(4),), path)
    return trained_cnn, artifact


@pytest.fixture(scope="module")
def mlp_pt2(tmp_path_factory):
    """Exported through the CLI, with a narrow dynamic range."""
    folder = tmp_path_factory.mktemp("mlp")
    model = seeded(tb.models.digits_mlp)
    torch.save(model.state_dict(), folder / "weights.pt")
    result = torchbridge_cli(
        "export", "--model", "digits_mlp", "--weights", folder / "weights.pt", "--out", folder / "mlp.pt2",
        "--max-batch", MAX_BATCH,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "input  x: float32[?, 1, 8, 8]" in result.stdout
    return model, folder / "mlp.pt2"


@pytest.fixture(scope="module")
def resnet_pt2(tmp_path_factory):
    import torchvision

    model = seeded(lambda: torchvision.models.resnet18(weights=None, num_classes=10))
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pt2"
    tb.export(model, (torch.rand(2, 3, 32, 32),), path)
    return model, path


@pytest.fixture
def package(request):
    return request.getfixturevalue(request.param)


def _artifact_path(value) -> Path:
    return value.path if isinstance(value, tb.Artifact) else value


@pytest.mark.parametrize(
    "package",
    ["cnn_pt2", "mlp_pt2", pytest.param("resnet_pt2", marks=requires_torchvision)],
    indirect=True,
)
def test_pt2_matches_eager_in_cpp_at_two_batch_sizes(package):
    model, artifact = package
    path = _artifact_path(artifact)
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.format == "aoti"
    shape = runtime.manifest["inputs"][0]["shape"][1:]
    for batch in (1, 7):
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x)
        actual = runtime(x)
        assert actual.shape == expected.shape
        assert relative_error(actual, expected) <= 1e-5, (batch, relative_error(actual, expected))

    # eager vs torch's own loader vs the C++ bindings vs torchbridge-run, golden + fresh inputs.
    report = tb.verify(model, path, threads=THREADS, fresh=2, cli=True)
    assert report.passed, report.table()
    assert {r.candidate for r in report.rows} == {"aoti", "cpp", "cli"}
    for row in report.rows:
        if row.reference == "aoti":  # the same compiled code in Python and C++: bit-identical
            assert row.max_abs == 0.0, report.table()
        else:
            assert row.max_rel <= 1e-5, report.table()

    selftest = run_cli(path, "--selftest", "--threads", THREADS)
    assert selftest.returncode == 0 and "selftest passed" in selftest.stdout, selftest.stderr


def test_threads_share_one_pt2_runtime(cnn_pt2):
    """Four threads call one .pt2 Runtime at once, each at its own batch size: every output is the
    one a single thread gets (the same compiled kernels)."""
    import threading

    _, artifact = cnn_pt2
    runtime = tb.Runtime(artifact.path, threads=THREADS)
    batches = (1, 3, 8, 16)
    inputs = {b: torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(b)) for b in batches}
    expected = {b: runtime(x) for b, x in inputs.items()}
    failures: list[str] = []
    start = threading.Barrier(len(batches))

    def work(batch: int) -> None:
        start.wait()
        for call in range(25):
            try:
                if not torch.equal(runtime(inputs[batch]), expected[batch]):
                    failures.append(f"batch {batch}, call {call}: differs")
            except Exception as error:  # noqa: BLE001 - every failure is a finding here
                failures.append(f"batch {batch}, call {call}: {error}")

    threads = [threading.Thread(target=work, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


def test_manifest_and_golden_inside_the_package(cnn_pt2):
    _, artifact = cnn_pt2
    manifest = tb.load_manifest(artifact.path)
    assert manifest == artifact.manifest
    assert manifest["format"] == "aoti" and manifest["method"] == "export"
    assert manifest["inputs"][0]["min_shape"] == [1, 1, 8, 8] and manifest["inputs"][0]["max_shape"] == [1024, 1, 8, 8]
    assert manifest["aoti"]["compile_seconds"] > 0 and manifest["aoti"]["inductor_configs"]["freezing"] is True
    golden_inputs, golden_outputs = artifact.golden()
    assert golden_inputs[0].shape == (2, 1, 8, 8) and golden_outputs[0].shape == (2, 10)
    # torch's own loader sees the manifest among the package's extra files.
    from torch.export.pt2_archive._package import load_pt2

    extra_files = load_pt2(str(artifact.path)).extra_files
    assert json.loads(extra_files["torchbridge/manifest.json"]) == manifest


def test_format_is_read_from_content_not_the_name(cnn_pt2, tmp_path):
    _, artifact = cnn_pt2
    renamed = tmp_path / "model.bin"
    shutil.copy(artifact.path, renamed)
    assert tb.Runtime(renamed).format == "aoti"
    tb.export(seeded(tb.models.digits_mlp), (digits(),), tmp_path / "scripted.pt", format="torchscript")
    shutil.copy(tmp_path / "scripted.pt", tmp_path / "looks_like.pt2")
    assert tb.Runtime(tmp_path / "looks_like.pt2").format == "torchscript"


def test_pt2_is_compiled_already(cnn_pt2):
    _, artifact = cnn_pt2
    runtime = tb.Runtime(artifact.path, threads=THREADS)
    assert runtime.optimization == "AOTInductor (compiled at export)"
    assert runtime.optimized_from_batch == 0
    with pytest.raises(tb.TorchbridgeError, match="a .pt2 runs in the dtype it was compiled for"):
        tb.Runtime(artifact.path, precision="bf16")


def test_batch_outside_the_declared_range_is_refused(mlp_pt2):
    model, path = mlp_pt2
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.manifest["inputs"][0]["max_shape"][0] == MAX_BATCH
    assert runtime(digits(MAX_BATCH)).shape == (MAX_BATCH, 10)
    with pytest.raises(tb.TorchbridgeError) as caught:
        runtime(torch.rand(MAX_BATCH + 1, 1, 8, 8))
    assert caught.value.code == "input"
    message = f"has size {MAX_BATCH + 1} in dim 0, outside the range 1..{MAX_BATCH} declared at export"
    assert message in str(caught.value)
    with pytest.raises(tb.TorchbridgeError, match=r"must be x: float32\[\?, 1, 8, 8\]"):
        runtime(torch.rand(MAX_BATCH + 1, 2, 8, 8))  # wrong shape as well: the spec comes first
    result = run_cli(path, "--batch", MAX_BATCH + 1)
    assert result.returncode == BAD_INPUT and "outside the range" in result.stderr
    info = run_cli(path, "--info")
    assert info.returncode == 0 and f"dim 0 in 1..{MAX_BATCH}" in info.stdout


def test_corrupt_package_is_an_artifact_error(cnn_pt2, tmp_path):
    _, artifact = cnn_pt2
    data = artifact.path.read_bytes()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: len(data) // 2])
    garbled = tmp_path / "garbled.pt2"  # the zip is intact; its compiled model is not
    garble = lambda name, d: b"\x7fELF garbage" * 64 if name.endswith(".so") else d  # noqa: E731
    rewrite_package(artifact.path, garbled, garble)
    damaged = tmp_path / "damaged.pt2"  # the same change, digests not rewritten: refused before loading
    rewrite_package(artifact.path, damaged, garble, reseal=False)
    for path, message in (
        (truncated, "damaged artifact: no zip end-of-central-directory record: the file is truncated"),
        (garbled, "cannot load this AOTInductor package"),
        (damaged, r"wrapper.so' fails its SHA-256 check"),
    ):
        with pytest.raises(tb.TorchbridgeError, match=message) as caught:
            tb.Runtime(path)
        assert caught.value.code == "artifact"
        result = run_cli(path, "--selftest")
        assert result.returncode == LOAD_FAILURE and message in result.stderr, result.stderr


def test_package_from_another_torch_version_is_refused(cnn_pt2, tmp_path):
    _, artifact = cnn_pt2
    other = tmp_path / "other_torch.pt2"
    with_manifest(artifact.path, other, lambda m: m.update(torch_version="2.99.0"))
    with pytest.raises(tb.TorchbridgeError, match="built with torch 2.99.0, but this runtime's LibTorch is") as caught:
        tb.Runtime(other)
    assert caught.value.code == "artifact"
    result = run_cli(other, "--selftest")
    assert result.returncode == LOAD_FAILURE and "re-export it with torch" in result.stderr


def test_package_for_missing_cpu_features_is_refused(cnn_pt2, tmp_path):
    lacking = [name for name, value in torch.cpu.get_capabilities().items() if value is False]
    if not lacking:
        pytest.skip("this CPU has every feature torch reports")
    _, artifact = cnn_pt2
    other = tmp_path / "other_cpu.pt2"
    with_manifest(artifact.path, other, lambda m: m["aoti"]["required_cpu_features"].append(lacking[0]))
    with pytest.raises(tb.TorchbridgeError, match=f"CPU features this CPU lacks: {lacking[0]}; export it with isa="):
        tb.Runtime(other)


def test_submodules_are_torchscript_only(cnn_pt2):
    _, artifact = cnn_pt2
    runtime = tb.Runtime(artifact.path)
    for call in (runtime.submodule_names, lambda: runtime.forward_submodule("features", digits(1))):
        with pytest.raises(tb.TorchbridgeError, match="not supported for .pt2") as caught:
            call()
        assert caught.value.code == "invalid_argument"


def test_export_failure_names_the_cause_and_keeps_the_old_file(tmp_path):
    class FixedBatch(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] == 4:  # torch.export specializes the batch to the example's: not dynamic
                return x * 2
            return x

    target = tmp_path / "model.pt2"
    target.write_bytes(b"earlier artifact")
    with pytest.raises(tb.ExportError, match="torch.export failed"):
        tb.export(FixedBatch(), (torch.rand(4, 3),), target)
    with pytest.raises(tb.TorchbridgeError, match="isa must be one of"):
        tb.export(FixedBatch(), (torch.rand(4, 3),), target, isa="pentium")
    with pytest.raises(tb.TorchbridgeError, match="apply to TorchScript"):
        tb.export(FixedBatch(), (torch.rand(4, 3),), target, method="trace")
    assert target.read_bytes() == b"earlier artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]


def test_bench_compares_pt_and_pt2(cnn_pt2, tmp_path):
    model, artifact = cnn_pt2
    tb.export(model, (digits(4),), tmp_path / "cnn.pt")
    timings, results = compare_artifacts(
        {"pt": tmp_path / "cnn.pt", "pt2": artifact.path}, batch_sizes=(1, 8), threads=THREADS, runs=5, warmup=1
    )
    assert [(t.label, t.format) for t in timings] == [("pt", "torchscript"), ("pt2", "aoti")]
    assert {(r.path, r.batch) for r in results} == {("pt", 1), ("pt", 8), ("pt2", 1), ("pt2", 8)}
    assert all(r.p50_ms > 0 and r.runs == 5 for r in results)
    table = ratio_table(results, baseline="pt")
    assert "vs pt" in table and len(table.splitlines()) == 5


def _wrapper_source(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith("wrapper.cpp"))


def test_int8_pt2_keeps_accuracy_and_matches_torch_in_cpp(cnn_pt2, digits_data, tmp_path):
    pytest.importorskip("torchao", reason="int8 on the .pt2 path uses torchao's PT2E quantization")
    model, fp32 = cnn_pt2
    calibration = digits_data.dataset("train").tensors[0][:512].split(64)
    quantized = tb.aoti.quantize_int8(model, (digits(4),), calibration)
    artifact = tb.export(quantized, (digits(4),), tmp_path / "cnn_int8.pt2")
    assert artifact.manifest["aoti"]["quantization"]
    # 8-bit weights only where oneDNN has VNNI here; 7-bit ones are exact on every x86 CPU.
    int8 = artifact.manifest["aoti"]["int8"]
    assert int8["weight_bits"] == tb.aoti.default_weight_bits()
    assert int8["needs_vnni"] == (int8["weight_bits"] == 8)
    source = _wrapper_source(artifact.path)  # oneDNN int8 kernels, not float ops on dequantized weights
    assert "qconv_pointwise" in source and "qlinear_pointwise" in source

    images, labels = digits_data.dataset("test").tensors
    runtime = tb.Runtime(artifact.path, threads=THREADS)

    def accuracy(logits: torch.Tensor) -> float:
        return float((logits.argmax(dim=1) == labels).float().mean())

    fp32_accuracy = accuracy(tb.Runtime(fp32.path, threads=THREADS)(images))
    int8_accuracy = accuracy(runtime(images))
    assert fp32_accuracy >= 0.9
    assert int8_accuracy >= fp32_accuracy - 0.01, (fp32_accuracy, int8_accuracy)

    reference = tb.aoti.load_package(artifact.path)  # torch._inductor.aoti_load_package
    for batch in (1, 64):
        assert torch.equal(runtime(images[:batch]), reference(images[:batch]))
    assert runtime.selftest()["passed"]
    report = tb.verify(quantized, artifact.path, threads=THREADS, fresh=1, cli=False)
    assert report.passed, report.table()


def _onednn_int8_errors(weight_low: int, weight_high: int) -> tuple[float, float]:
    """Largest |oneDNN - exact| of the int8 linear and convolution Inductor compiles a pt2e graph
    to, on full-range uint8 activations and int8 weights in [weight_low, weight_high]: random
    operands, and the worst case (every product at its extreme)."""
    generator = torch.Generator().manual_seed(0)
    errors = []
    for extreme in (False, True):
        if extreme:
            x = torch.full((4, 512), 255, dtype=torch.uint8)
            w = torch.full((8, 512), weight_high, dtype=torch.int8)
            w[::2] = weight_low
        else:
            x = torch.randint(0, 256, (16, 512), generator=generator, dtype=torch.uint8)
            w = torch.randint(weight_low, weight_high + 1, (32, 512), generator=generator, dtype=torch.int8)
        ones, zeros = torch.ones(w.shape[0]), torch.zeros(w.shape[0], dtype=torch.int64)
        packed = torch.ops.onednn.qlinear_prepack(w, x.shape)
        linear = torch.ops.onednn.qlinear_pointwise(
            x, 1.0, 0, packed, ones, zeros, None, 1.0, 0, torch.float32, "none", [], ""
        )
        exact = x.double() @ w.double().t()
        errors.append(float((linear.double() - exact).abs().max()))

        xc = x[:2].reshape(2, 32, 4, 4).contiguous(memory_format=torch.channels_last)
        wc = w[:8].reshape(8, 32, 4, 4)[:, :, :3, :3].contiguous()
        packed = torch.ops.onednn.qconv_prepack(wc, ones[:8], 1.0, 0, [1, 1], [1, 1], [1, 1], 1, xc.shape)
        conv = torch.ops.onednn.qconv_pointwise(
            xc, 1.0, 0, packed, ones[:8], zeros[:8], None, [1, 1], [1, 1], [1, 1], 1, 1.0, 0, torch.float32,
            "none", [], "",
        )  # fmt: skip
        exact = torch.nn.functional.conv2d(xc.double(), wc.double(), padding=1)
        errors.append(float((conv.double() - exact).abs().max()))
    return max(errors[0::2]), max(errors[1::2])


def test_onednn_int8_kernels_are_exact_for_the_weights_quantize_int8_picks():
    """The root cause of wrong int8 packages on CPUs without VNNI, checked on this CPU: the weight
    range quantize_int8 picks here is computed exactly, 7-bit weights everywhere, and 8-bit
    weights saturate exactly where onednn_vnni() says oneDNN lacks VNNI."""
    pytest.importorskip("torchao", reason="int8 on the .pt2 path uses torchao's PT2E quantization")
    for bits in {7, tb.aoti.default_weight_bits()}:
        assert _onednn_int8_errors(*tb.aoti.INT8_WEIGHT_RANGES[bits]) == (0.0, 0.0), bits
    if tb.aoti.onednn_vnni() is None:
        assert _onednn_int8_errors(*tb.aoti.INT8_WEIGHT_RANGES[8])[1] > 0  # VPMADDUBSW saturates


def test_int8_weight_bits_follow_vnni_and_the_onednn_isa_cap():
    vnni = tb.aoti.onednn_vnni
    assert vnni({"avx2": True}, "") is None  # AVX2 (this EPYC), AVX-512 before Cascade Lake
    assert vnni({"avx512_vnni": True, "amx_int8": True}, "") == "avx512_vnni"  # Cascade Lake .. Sapphire Rapids
    assert vnni({"avx_vnni": True}, "") == "avx_vnni"  # Alder Lake
    assert vnni({"avx512_vnni": True}, "AVX2") is None  # oneDNN capped below VNNI
    assert vnni({"avx512_vnni": True}, "avx2_vnni") is None  # AVX2-VNNI needs the avx_vnni flag
    assert vnni({"avx512_vnni": True}, "AVX512_CORE_AMX") == "avx512_vnni"
    assert vnni({"avx_vnni": True}, "AVX512_CORE_BF16") is None  # oneDNN's levels are not a chain


def test_int8_graph_that_needs_vnni_is_refused_where_it_could_run_without(tmp_path, monkeypatch):
    pytest.importorskip("torchao", reason="int8 on the .pt2 path uses torchao's PT2E quantization")
    model = seeded(tb.models.digits_mlp)
    eight_bit = tb.aoti.quantize_int8(model, (digits(4),), digits(32), weight_bits=8)
    properties = tb.aoti.int8_properties(eight_bit)
    assert properties["weight_range"] == [-128, 127] and properties["needs_vnni"]
    seven_bit = tb.aoti.int8_properties(tb.aoti.quantize_int8(model, (digits(4),), digits(32), weight_bits=7))
    assert seven_bit["weight_range"] == [-63, 63] and not seven_bit["needs_vnni"]

    target = tmp_path / "int8.pt2"
    with pytest.raises(tb.ExportError, match=r"isa='x86-64-v3' promises any CPU .* weight_bits=7"):
        tb.export(eight_bit, (digits(4),), target, isa="x86-64-v3")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(tb.ExportError, match=r"oneDNN here is capped at AVX2.* saturate in int16"):
        tb.export(eight_bit, (digits(4),), target)
    assert not target.exists()
    with pytest.raises(tb.TorchbridgeError, match="weight_bits must be one of"):
        tb.aoti.quantize_int8(model, (digits(4),), digits(32), weight_bits=4)


def test_golden_files_are_readable_npy(cnn_pt2):
    _, artifact = cnn_pt2
    with zipfile.ZipFile(artifact.path) as archive:
        names = [n for n in archive.namelist() if "/torchbridge/golden/" in n]
        assert names and all(not n.split("/", 1)[1].startswith("extra/") for n in names)
        array = np.load(io.BytesIO(archive.read(names[0])), allow_pickle=False)
    assert array.dtype == np.float32
