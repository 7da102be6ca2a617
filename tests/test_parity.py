"""Python and C++ give the same outputs: eager vs TorchScript vs C++ bindings vs torchbridge-run."""

from __future__ import annotations

import collections
from typing import Optional

import pytest
import torch

import torchbridge as tb
from conftest import THREADS, Branchy, TwoInTwoOut, digits, requires_torchvision, run_cli, seeded


def _resnet18():
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=10)


CASES = {
    "digits_mlp": (lambda: seeded(tb.models.digits_mlp), lambda: (digits(),)),
    "digits_cnn": (lambda: seeded(tb.models.digits_cnn), lambda: (digits(),)),
    "resnet18": (lambda: seeded(_resnet18), lambda: (torch.rand(2, 3, 64, 64),)),
    "branchy": (lambda: seeded(Branchy), lambda: (torch.rand(2, 6),)),
    "two_in_two_out": (lambda: seeded(TwoInTwoOut), lambda: (digits(2), torch.rand(2, 3))),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=requires_torchvision) if n == "resnet18" else n for n in CASES])
def test_cpp_matches_python(name, tmp_path):
    make_model, make_inputs = CASES[name]
    model, inputs = make_model(), make_inputs()
    artifact = tb.export(model, inputs, tmp_path / f"{name}.pt")

    report = tb.verify(model, artifact.path, threads=THREADS, fresh=2, cli=True)

    assert report.passed, report.table()
    assert {r.candidate for r in report.rows} == {"torchscript", "cpp", "cli"}
    for row in report.rows:
        if row.reference == "torchscript":  # same artifact, same threads: bit-identical
            assert row.max_abs == 0.0, report.table()
        else:
            assert row.max_rel <= 1e-5, report.table()
    assert len({r.inputs for r in report.rows}) == 3  # golden + 2 fresh sets

    selftest = run_cli(artifact.path, "--selftest", "--threads", THREADS)
    assert selftest.returncode == 0, selftest.stderr
    assert "selftest passed" in selftest.stdout


def test_runtime_call_returns_tuple_for_two_outputs(tmp_path):
    model = seeded(TwoInTwoOut)
    inputs = (digits(3), torch.rand(3, 3))
    tb.export(model, inputs, tmp_path / "two.pt")
    probabilities, labels = tb.Runtime(tmp_path / "two.pt", threads=THREADS)(*inputs)
    expected_probabilities, expected_labels = model(*inputs)
    torch.testing.assert_close(probabilities, expected_probabilities, rtol=1e-5, atol=1e-6)
    assert labels.dtype == torch.int64 and torch.equal(labels, expected_labels)


def test_cli_writes_one_npy_per_output(tmp_path):
    import numpy as np

    model = seeded(TwoInTwoOut)
    inputs = (digits(2), torch.rand(2, 3))
    tb.export(model, inputs, tmp_path / "two.pt")
    np.save(tmp_path / "image.npy", inputs[0].numpy())
    np.save(tmp_path / "features.npy", inputs[1].numpy())
    result = run_cli(
        tmp_path / "two.pt",
        "--input",
        tmp_path / "image.npy",
        "--input",
        tmp_path / "features.npy",
        "--output",
        tmp_path / "p.npy",
        "--output",
        tmp_path / "label.npy",
    )
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        expected = model(*inputs)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "p.npy")), expected[0], rtol=1e-5, atol=1e-6)
    assert np.load(tmp_path / "label.npy").dtype == np.int64


def test_trace_refuses_a_lost_branch(tmp_path):
    model = seeded(Branchy)
    with pytest.raises(tb.ExportError, match="data-dependent control flow"), pytest.warns(torch.jit.TracerWarning):
        tb.export(model, (torch.rand(2, 6),), tmp_path / "traced.pt", method="trace")
    assert not (tmp_path / "traced.pt").exists()


def test_auto_scripts_when_it_can_and_traces_when_it_must(tmp_path):
    class Untypeable(torch.nn.Module):  # **kwargs defeats torch.jit.script; tracing is faithful
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x, **options):
            return self.linear(x).relu()

    assert tb.export(seeded(Branchy), (torch.rand(2, 6),), tmp_path / "a.pt").manifest["method"] == "script"
    traced = tb.export(seeded(Untypeable), (torch.rand(3, 4),), tmp_path / "b.pt")
    assert traced.manifest["method"] == "trace"
    assert any("script failed" in note for note in traced.manifest["notes"])
    assert tb.verify(seeded(Untypeable), traced.path, threads=THREADS, cli=False).passed


def test_verify_without_model_uses_the_golden_outputs(cnn_artifact):
    _, path = cnn_artifact
    report = tb.verify(None, path, threads=THREADS)
    assert report.passed
    assert {r.inputs for r in report.rows} == {"golden"}


def test_verify_detects_a_tampered_artifact(cnn_artifact, tmp_path):
    model, path = cnn_artifact
    other = seeded(tb.models.digits_cnn)
    with torch.no_grad():
        other.classifier[3].bias += 0.5  # the artifact no longer matches `other`
    with pytest.raises(tb.ParityError) as caught:
        tb.verify(other, path, threads=THREADS, cli=False)
    assert not caught.value.report.passed


def test_optimize_keeps_parity(tmp_path):
    model = seeded(tb.models.digits_cnn)
    artifact = tb.export(model, (digits(),), tmp_path / "opt.pt", optimize=True)
    assert artifact.manifest["optimized"] in (True, False)
    assert tb.verify(model, artifact.path, threads=THREADS).passed


def test_forward_from_several_threads(cnn_artifact):
    from concurrent.futures import ThreadPoolExecutor

    _, path = cnn_artifact
    runtime = tb.Runtime(path, threads=THREADS)
    batches = [torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    expected = [runtime(b) for b in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(runtime, batches * 4))
    for i, result in enumerate(results):
        assert torch.equal(result, expected[i % len(batches)])


def test_tensors_cross_the_binding_without_copies(tmp_path):
    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    tb.export(Identity(), (torch.rand(2, 3),), tmp_path / "identity.pt")
    x = torch.rand(5, 3)
    y = tb.Runtime(tmp_path / "identity.pt")(x)
    assert y.data_ptr() == x.data_ptr()  # DLPack in, DLPack out: the same memory


class StructuredOutputs(torch.nn.Module):
    """Outputs as models return them: a None auxiliary entry, a dict, a nested tuple."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor):
        y = self.linear(x)
        aux: Optional[torch.Tensor] = None  # noqa: UP045 (TorchScript reads typing.Optional)
        return y, aux, {"scores": y.softmax(dim=1), "pair": (y.sum(dim=1), y.argmax(dim=1))}


def test_none_dict_and_nested_outputs_come_back_as_the_model_returns_them(tmp_path):
    model = seeded(StructuredOutputs)
    x = torch.rand(5, 4)
    artifact = tb.export(model, (torch.rand(2, 4),), tmp_path / "structured.pt")
    assert artifact.manifest["method"] == "script"
    names = [spec["name"] for spec in artifact.manifest["outputs"]]
    assert names == ["output_0", "output_2.scores", "output_2.pair.0", "output_2.pair.1"]
    with torch.no_grad():
        y, aux, table = model(x)
    runtime = tb.Runtime(tmp_path / "structured.pt", threads=THREADS)
    got_y, got_aux, got_table = runtime(x)
    assert got_aux is None and set(got_table) == {"scores", "pair"}
    torch.testing.assert_close(got_y, y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_table["scores"], table["scores"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_table["pair"][0], table["pair"][0], rtol=1e-5, atol=1e-6)
    assert torch.equal(got_table["pair"][1], table["pair"][1])
    assert len(runtime.forward(x)) == 4  # forward: the tensors, flat, in the manifest's order

    # torchbridge-run writes one .npy per tensor, named by its path.
    result = run_cli(tmp_path / "structured.pt", "--output-dir", tmp_path / "out", "--threads", THREADS)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(f"{name}.npy" for name in names)


def test_a_named_tuple_output_keeps_its_fields(tmp_path):
    Pair = collections.namedtuple("Pair", ["logits", "aux"])

    class NamedOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor):
            y = self.linear(x)
            return Pair(y, y.relu())

    artifact = tb.export(seeded(NamedOutputs), (torch.rand(2, 4),), tmp_path / "named.pt", method="trace")
    assert [spec["name"] for spec in artifact.manifest["outputs"]] == ["logits", "aux"]
    runtime = tb.Runtime(artifact.path, threads=THREADS)
    result = runtime(torch.rand(3, 4))
    assert type(result).__name__ == "Pair" and result._fields == ("logits", "aux")
    assert torch.equal(result.aux, result.logits.relu())
    assert type(runtime(torch.rand(1, 4))) is type(result)  # one class for every call
