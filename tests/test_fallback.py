"""A model that runs as loaded runs with the defaults: every faster variant the runtime tries at an
input shape is checked there against the module as loaded, and gives way to the next when it raises
or differs; no input layout changes an answer."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

import torchbridge as tb
from conftest import THREADS, digits, seeded
from torchbridge.compare import max_errors
from torchbridge.mirror import load_in_python


@pytest.fixture(scope="module")
def always_optimized(tmp_path_factory):
    """The digits CNN exported so that every batch size runs the optimized variants (export would
    otherwise time from which batch size they pay on this machine)."""
    model = seeded(tb.models.digits_cnn)
    path = tmp_path_factory.mktemp("fallback") / "cnn.pt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.modules["torchbridge.export"], "_optimize_from_batch", lambda *args, **kwargs: 1)
        tb.export(model, (digits(4),), path, tune=False)  # the runtime's built-in order
    return model, path


@pytest.mark.parametrize(
    "planted, runs",
    [
        ("onednn_graph=raise", "optimize_for_inference"),
        ("onednn_graph=differ", "optimize_for_inference"),
        ("onednn_graph=raise,optimize_for_inference=differ", "frozen"),
        ("onednn_graph=differ,optimize_for_inference=raise,frozen=differ", "as_loaded"),
    ],
)
def test_a_pass_that_raises_or_differs_gives_way_to_the_next_and_says_so(
    always_optimized, planted, runs, monkeypatch, capfd
):
    model, path = always_optimized
    monkeypatch.setenv("TORCHBRIDGE_PLANT_FAILURE", planted)
    runtime = tb.Runtime(path, threads=THREADS)
    capfd.readouterr()
    assert runtime.optimization.startswith("freeze+onednn_graph")
    x = digits(8)
    y = runtime(x)
    assert runtime.variant_at(x) == runs
    variant, failure = planted.split(",")[0].split("=")
    said = "raised: planted failure" if failure == "raise" else "differs from the module as loaded"
    assert f"{variant} {said}" in runtime.optimization, runtime.optimization
    assert f": {runs} (" in runtime.optimization
    # Said once on stderr (at load: the warm-up met the first shapes), not at every shape.
    runtime(digits(9))
    assert "torchbridge:" not in capfd.readouterr().err

    _, loaded = load_in_python(path)
    _, mirror = load_in_python(path, runtime.optimized_from_batch, runtime=runtime)
    with torch.inference_mode():
        if runs == "as_loaded":
            assert torch.equal(y, loaded(x))
        assert torch.equal(y, mirror(x))
        assert max_errors(y, model(x))[1] <= 1e-5
    report = tb.verify(model, path, threads=THREADS, fresh=1, cli=False)
    assert report.passed, report.table()


def test_the_first_fallback_is_said_once_on_stderr(always_optimized, monkeypatch, capfd):
    _, path = always_optimized
    monkeypatch.setenv("TORCHBRIDGE_PLANT_FAILURE", "onednn_graph=raise")
    runtime = tb.Runtime(path, threads=THREADS)
    err = capfd.readouterr().err
    assert err.count("torchbridge:") == 1, err
    assert "onednn_graph raised: planted failure" in err and "running optimize_for_inference there" in err
    assert runtime.optimization.count("onednn_graph raised") == 1  # one cause, the shapes it applied to


def test_inputs_of_any_layout_give_the_answer_of_their_values(always_optimized):
    _, path = always_optimized
    runtime = tb.Runtime(path, threads=THREADS)
    x = digits(6)
    expected = runtime(x)
    views = {
        "transposed view": x.transpose(2, 3).contiguous().transpose(2, 3),
        "slice of a wider tensor": torch.cat([x, torch.zeros_like(x)], dim=3)[..., :8],
        "odd stride on a size-1 dim": x.as_strided(x.shape, (64, 1, 8, 1)),
        "every other row of a larger batch": torch.stack([x, torch.zeros_like(x)], dim=1).flatten(0, 1)[::2],
    }
    for name, view in views.items():
        assert torch.equal(view, x) and view.stride() != x.stride(), name
        assert torch.equal(runtime(view), expected), name
    flipped = x.numpy()[:, :, ::-1, :]  # numpy's negative strides
    assert torch.equal(runtime(flipped), runtime(torch.flip(x, dims=[2])))


class TokenEncoder(nn.Module):
    """The issue's TransformerEncoder: token ids through an embedding, batch first."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(100, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embedding(ids))


class StackedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


@pytest.mark.parametrize(
    "factory, make_input",
    [
        (TokenEncoder, lambda batch: torch.randint(0, 100, (batch, 12))),
        (StackedLSTM, lambda batch: torch.randn(batch, 10, 8)),
    ],
    ids=["transformer_encoder", "lstm"],
)
def test_models_oneDNN_graph_cannot_fuse_run_by_default(factory, make_input, tmp_path):
    """oneDNN Graph raises on these graphs in LibTorch 2.13/2.14 ('bad optional access', 'Schema not
    found'); with the defaults they run, at the export batch and others, as eager does."""
    model = seeded(factory)
    path = tmp_path / "model.pt"
    tb.export(model, (make_input(2),), path)
    runtime = tb.Runtime(path, threads=THREADS)
    for batch in (2, 1, 3):
        x = make_input(batch)
        with torch.no_grad():
            expected = model(x)
        assert max_errors(runtime(x), expected)[1] <= 1e-5, (batch, runtime.optimization)
    report = tb.verify(model, path, threads=THREADS, fresh=2, cli=False)
    assert report.passed, report.table()


def test_threads_meeting_new_shapes_at_once_all_get_the_right_answer(always_optimized):
    """Each thread calls at a batch size not compiled yet, all at the same moment."""
    _, path = always_optimized
    runtime = tb.Runtime(path, threads=THREADS)
    inputs = [digits(batch) for batch in range(10, 34)]
    reference_runtime = tb.Runtime(path, threads=THREADS, optimize=False)
    expected = [reference_runtime(x) for x in inputs]
    results: list = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def call(i: int) -> None:
        start.wait()
        try:
            results[i] = runtime(inputs[i])
        except Exception as error:  # recorded, asserted below
            results[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    errors = [r for r in results if not isinstance(r, torch.Tensor)]
    assert not errors, errors[:3]
    for batch, (y, e) in enumerate(zip(results, expected), start=10):
        assert max_errors(y, e)[1] <= 1e-5, batch


class TopBoxes(nn.Module):
    """A detection head in miniature: scores from a convolution, the top 5 kept, their boxes gathered."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.score = nn.Conv2d(8, 1, 1)
        self.box = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        scores = self.score(features).flatten(1)
        boxes = self.box(features).flatten(2).transpose(1, 2)
        top, index = scores.topk(5, dim=1)
        return top, torch.gather(boxes, 1, index.unsqueeze(-1).expand(-1, -1, 4))


def test_a_model_that_selects_by_value_runs_as_loaded(tmp_path):
    """Which boxes a top-k keeps turns on the last bits of near-equal scores, which a faster
    variant rounds differently: no check at one input proves the next, so the runtime runs such a
    model as loaded (the zoo's SSD kept other boxes at one batch size before), and says why."""
    model = seeded(TopBoxes)
    path = tmp_path / "top.pt"
    art = tb.export(model, (digits(2),), path)
    assert "variants" not in art.manifest["runtime"]  # export does not time variants that never run
    assert tb._C.selecting_ops(str(path)) == "aten::topk"
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.optimization.startswith("none (the model selects by value (aten::topk)"), runtime.optimization
    assert not runtime.optimized
    for batch in (1, 2, 3, 8):
        x = digits(batch)
        assert runtime.variant_at(x) == "as_loaded"
        for got, expected in zip(runtime(x), model(x)):
            assert torch.equal(got, expected), batch


@pytest.mark.parametrize(
    "planted, manifest_runtime, optimization",
    [
        ("onednn_graph=crash", {"fuse": False}, "(no oneDNN Graph: LibTorch crashed"),
        (
            "onednn_graph=crash,optimize_for_inference=crash",
            {"fuse": False, "optimize": False},
            "none (LibTorch crashed",
        ),
    ],
)
def test_a_pass_that_crashes_libtorch_is_found_at_export_and_kept_off(
    planted, manifest_runtime, optimization, monkeypatch, tmp_path
):
    """A crash (a signal) cannot be fallen back from inside the process, so export runs the artifact
    once in torchbridge-run, turns off in the manifest what crashed it, and every front end then runs
    the model without that pass, whatever the options ask."""
    model = seeded(tb.models.digits_cnn)
    path = tmp_path / "cnn.pt"
    monkeypatch.setenv("TORCHBRIDGE_PLANT_FAILURE", planted)
    art = tb.export(model, (digits(4),), path)
    for field, value in manifest_runtime.items():
        assert art.manifest["runtime"][field] is value, art.manifest["runtime"]
    assert any("crashed (SIGSEGV)" in note for note in art.manifest["notes"]), art.manifest["notes"]

    runtime = tb.Runtime(path, threads=THREADS)  # would die here at the planted pass
    assert optimization in runtime.optimization and "onednn_graph" not in runtime.optimization, runtime.optimization
    x = digits(7)
    with torch.inference_mode():
        assert max_errors(runtime(x), model(x))[1] <= 1e-5
    cli = subprocess.run([str(tb.runtime.cli_path()), str(path), "--selftest", "--batch", "5"], capture_output=True)
    assert cli.returncode == 0, cli.stderr
    report = tb.verify(model, path, threads=THREADS, fresh=1)
    assert report.passed, report.table()


def test_a_model_libtorch_crashes_on_even_as_loaded_is_refused_and_nothing_is_overwritten(monkeypatch, tmp_path):
    model = seeded(tb.models.digits_cnn)
    path = tmp_path / "cnn.pt"
    path.write_bytes(b"the user's file")
    monkeypatch.setattr(sys.modules["torchbridge.export"], "RUNTIME_FALLBACKS", (((), {}),))
    monkeypatch.setenv("TORCHBRIDGE_PLANT_FAILURE", "onednn_graph=crash")
    with pytest.raises(tb.ExportError, match=r"cnn.pt: the C\+\+ runtime cannot run this model: .*crashed \(SIGSEGV\)"):
        tb.export(model, (digits(4),), path)
    assert path.read_bytes() == b"the user's file"
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.pt"]
