"""Hooks: capture layer outputs, catch the first NaN/Inf, summarize layers, and name the layer
where the C++ runtime's output parts ways with eager PyTorch."""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import torchbridge as tb
from conftest import THREADS, digits, requires_torchvision, seeded
from torchbridge import callbacks, hooks
from torchbridge.artifact import seal
from torchbridge.cli import main as cli_main
from torchbridge.verify import diagnose_layers


def _resnet18():
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=10)


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    ) + sum(len(p._backward_hooks or {}) for p in model.parameters())


# ------------------------------------------------------------------------------------------
# capture


@requires_torchvision
def test_capture_every_conv_output_of_resnet18():
    model = seeded(_resnet18)
    x = torch.rand(1, 3, 64, 64)
    with hooks.capture(model, types=nn.Conv2d) as convs:
        logits = model(x)

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(names) == 20  # 1 stem + 16 in the blocks + 3 downsample projections
    assert list(convs.outputs) == names  # execution order matches definition order for resnet18's convs
    assert convs.outputs["conv1"].shape == (1, 64, 32, 32)
    for name in names[1:]:
        stage = int(name[len("layer")])  # layer1..layer4: channels double, resolution halves
        assert convs.outputs[name].shape == (1, 64 * 2 ** (stage - 1), 16 // 2 ** (stage - 1), 16 // 2 ** (stage - 1))
    # the captured tensors are what the convolutions computed, not views later changed in place
    torch.testing.assert_close(convs.outputs["conv1"], model.conv1(x), rtol=0, atol=0)
    assert not convs.outputs["conv1"].requires_grad and logits.shape == (1, 10)
    assert _hook_count(model) == 0


def test_capture_by_name_pattern_and_inputs():
    model = seeded(tb.models.digits_cnn)
    x = digits(3)
    with hooks.capture(model, names=["features.0", "classifier.*"], inputs=True) as captured:
        model(x)
    assert list(captured.outputs) == ["features.0", "classifier.0", "classifier.1", "classifier.2", "classifier.3"]
    torch.testing.assert_close(captured.inputs["features.0"][0], x, rtol=0, atol=0)
    assert captured.outputs["classifier.0"].shape == (3, 64 * 4 * 4)
    # the input of one layer is the output of the one before it
    torch.testing.assert_close(captured.inputs["classifier.2"][0], captured.outputs["classifier.1"], rtol=0, atol=0)


def test_capture_all_leaves_and_bad_names():
    model = seeded(tb.models.digits_cnn)
    with hooks.capture(model) as leaves:
        model(digits(2))
    assert len(leaves) == 11  # 7 in features, 4 in classifier
    with pytest.raises(tb.TorchbridgeError, match="no submodule of DigitsCNN matches 'layer9'"):
        with hooks.capture(model, names="layer9"):
            pass
    with pytest.raises(tb.TorchbridgeError, match="nn.Module classes"):
        with hooks.capture(model, types=int):
            pass


def test_hooks_removed_after_context_even_after_an_exception():
    model = seeded(tb.models.digits_cnn)
    assert _hook_count(model) == 0
    with hooks.capture(model, inputs=True):
        assert _hook_count(model) > 0
        model(digits(2))
    assert _hook_count(model) == 0

    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        with hooks.capture(model):
            model(torch.rand(2, 1, 6, 6))  # wrong size: fails inside the classifier
    assert _hook_count(model) == 0

    with pytest.raises(ValueError, match="user code"):
        with hooks.detect_anomalies(model):
            assert _hook_count(model) > 0
            raise ValueError("user code")
    assert _hook_count(model) == 0


# ------------------------------------------------------------------------------------------
# NaN / Inf sentinel


class InfGradient(torch.autograd.Function):
    """Identity forward, Inf gradient backward: a layer whose backward goes wrong."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, gradient):
        return torch.full_like(gradient, float("inf"))


class PlantedInfGradient(nn.Module):
    def forward(self, x):
        return InfGradient.apply(x)


def _nested_mlp(planted: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8),
        nn.Sequential(nn.ReLU(), planted or nn.Identity(), nn.Linear(8, 8), nn.Tanh()),
        nn.Linear(8, 3),
    )


def test_planted_nan_in_forward_is_reported_at_that_layer_and_step():
    model = _nested_mlp()
    x = torch.rand(4, 6)
    with hooks.detect_anomalies(model) as sentinel:
        for _ in range(3):
            model(x).sum().backward()  # clean steps 0, 1, 2
        with torch.no_grad():
            model[1][2].weight[5, 2] = float("nan")  # layer K = "1.2"
        with pytest.raises(tb.NonFiniteError) as caught:
            model(x)
    error = caught.value
    assert (error.module, error.module_type, error.phase, error.kind) == ("1.2", "Linear", "forward", "NaN")
    assert error.shape == (4, 8) and error.step == 3
    assert "'1.2' (Linear, shape [4, 8])" in str(error) and "step 3" in str(error)
    assert sentinel.error is error
    assert _hook_count(model) == 0


def test_inf_computed_between_submodules_is_blamed_on_the_enclosing_module():
    class LogInside(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(torch.log(self.a(x) * 0))  # log(0) = -inf, in LogInside's own code

    model = nn.Sequential(nn.Linear(4, 4), LogInside())
    with pytest.raises(tb.NonFiniteError) as caught, hooks.detect_anomalies(model):
        model(torch.rand(2, 4))
    assert (caught.value.module, caught.value.kind, caught.value.phase) == ("1", "Inf", "forward")
    assert "input 0 of '1.b'" in caught.value.tensor

    with pytest.raises(tb.NonFiniteError, match="model's input 0") as caught, hooks.detect_anomalies(model):
        model(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    assert caught.value.module == ""


def test_planted_inf_gradient_in_backward_is_reported_at_that_layer():
    model = _nested_mlp(PlantedInfGradient())
    x = torch.rand(4, 6)
    with hooks.detect_anomalies(model) as sentinel:
        sentinel.step = 41
        loss = model(x).square().mean()  # forward is clean
        with pytest.raises(tb.NonFiniteError) as caught:
            loss.backward()
    error = caught.value
    assert (error.module, error.module_type) == ("1.1", "PlantedInfGradient")
    assert (error.phase, error.kind) == ("backward", "Inf")
    assert error.shape == (4, 8) and error.step == 41
    # without the sentinel the Inf spreads silently into the first layer's weights
    model.zero_grad()
    model(x).square().mean().backward()
    assert torch.isinf(model[0].weight.grad).any()


@requires_torchvision
def test_sentinel_trains_resnet_with_inplace_relu_and_finds_a_nan_gradient():
    # Module full-backward hooks fail on ResNet's ReLU(inplace=True); the sentinel must not.
    model = _resnet18().train()
    x = torch.rand(2, 3, 32, 32)
    with hooks.detect_anomalies(model):
        model(x).logsumexp(dim=1).mean().backward()  # a clean step passes
        model.zero_grad()
        with pytest.raises(tb.NonFiniteError) as caught:
            (model(x).sqrt().nan_to_num(0.0)).sum().backward()  # sqrt of negative logits: NaN gradient
    assert (caught.value.module, caught.value.phase) == ("", "backward")  # from the loss, not from a layer
    assert "gradient w.r.t. the model's output" in caught.value.tensor


# ------------------------------------------------------------------------------------------
# summary


def test_summary_table_of_the_digits_cnn():
    model = seeded(tb.models.digits_cnn)
    x = digits(4)
    table = hooks.summary(model, x)
    rows = {row.label: row for row in table.rows}
    assert [r.label for r in table.rows][:3] == ["(model)", "features", "features.0"]
    assert rows["features.3"].input_shapes == "[4, 32, 8, 8]" and rows["features.3"].output_shapes == "[4, 64, 8, 8]"
    assert rows["features.3"].parameters == 64 * 32 * 9 + 64
    assert rows["(model)"].parameters == table.total_parameters == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        logits = model(x)
    assert rows["classifier.3"].mean == pytest.approx(float(logits.double().mean()))
    assert rows["classifier.3"].max == pytest.approx(float(logits.max()))
    assert rows["features.2"].min == 0.0  # after a ReLU
    text = str(table)
    assert "features.3" in text and f"{table.total_parameters:,} parameters" in text
    assert _hook_count(model) == 0


# ------------------------------------------------------------------------------------------
# Lightning


class NaNOnCall(nn.Module):
    """Passes values through; on its `call`-th training forward (1-based) returns NaN."""

    def __init__(self, call: int):
        super().__init__()
        self.call, self.calls = call, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.call:
                return x * float("nan")
        return x


def test_train_with_detect_anomalies_stops_at_the_layer_and_step(tmp_path):
    model = tb.models.digits_cnn()
    model.features.insert(4, NaNOnCall(4))  # after the second conv: "features.4"
    with pytest.raises(tb.NonFiniteError) as caught:
        tb.train(model, max_epochs=1, root_dir=tmp_path, progress_bar=False, detect_anomalies=True)
    assert (caught.value.module, caught.value.phase, caught.value.step) == ("features.4", "forward", 3)
    assert _hook_count(model) == 0


def test_train_with_activation_statistics(tmp_path):
    model = tb.models.digits_cnn()
    result = tb.train(
        model, max_epochs=1, root_dir=tmp_path, progress_bar=False, activation_stats=4, limit_train_batches=8
    )
    callback = next(c for c in result.trainer.callbacks if isinstance(c, callbacks.ActivationStatistics))
    assert sorted({r.step for r in callback.history}) == [0, 4]
    relu = [r for r in callback.history if r.layer == "features.2"]
    assert len(relu) == 2 and all(0 < r.zero_fraction < 1 and r.max_abs > 0 for r in relu)
    logged = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "activations/features.2/zero_fraction" in logged
    assert _hook_count(model) == 0


# ------------------------------------------------------------------------------------------
# layer-wise parity: eager vs C++


def _altered_copy(source, target, submodule: str, delta: float):
    """The artifact with one submodule's weight changed after export, extra files kept."""
    with zipfile.ZipFile(source) as archive:
        extra = {
            name.split("/extra/", 1)[1]: archive.read(name)
            for name in archive.namelist()
            if "/extra/" in name and not name.endswith("digests.json")
        }
    assert "torchbridge/manifest.json" in extra
    with tb._warnings.expected_deprecations():
        module = torch.jit.load(str(source))
        with torch.no_grad():
            functools.reduce(getattr, submodule.split("."), module).weight.add_(delta)  # no get_submodule on jit
        unsealed = Path(target).parent / "unsealed" / Path(target).name
        unsealed.parent.mkdir(exist_ok=True)
        torch.jit.save(module, str(unsealed), _extra_files=extra)
        seal(unsealed, Path(target))
    assert tb.load_manifest(target) == tb.load_manifest(source)
    return target


def test_unaltered_cnn_artifact_passes_every_layer(cnn_artifact):
    model, path = cnn_artifact
    report = diagnose_layers(model, path, threads=THREADS)
    assert report.passed and report.first_failure is None, report.table()
    assert [r.label for r in report.rows][:3] == ["features.0", "features.1", "features.2"]
    assert report.compared == len(report.rows) == 13  # 11 leaves + 2 Sequentials
    assert all(r.status == "ok" and r.max_abs <= r.atol for r in report.rows)


def test_altered_cnn_layer_is_named_by_the_cpp_comparison(cnn_artifact, tmp_path):
    model, path = cnn_artifact
    altered = _altered_copy(path, tmp_path / "altered.pt", "features.3", 1e-3)
    report = tb.verify(model, altered, threads=THREADS, fresh=0, cli=False, raise_on_failure=False, layers=True)
    assert not report.passed
    layers = report.layers
    assert layers.first_failure.label == "features.3", layers.table()
    # each layer runs on eager's own inputs, so only the altered layer and its container differ
    assert [r.label for r in layers.failures] == ["features.3", "features"]
    assert "first layer beyond tolerance: features.3 (Conv2d)" in report.table()


def test_verify_fails_the_altered_artifact_on_its_outputs_alone(cnn_artifact, tmp_path):
    """The tolerance follows the model's own float32 noise: a changed weight is far beyond it."""
    model, path = cnn_artifact
    assert tb.verify(model, path, threads=THREADS, fresh=2, cli=False).passed
    altered = _altered_copy(path, tmp_path / "altered.pt", "features.3", 1e-3)
    report = tb.verify(model, altered, threads=THREADS, fresh=2, cli=False, raise_on_failure=False)
    assert not report.passed
    failed = {(r.reference, r.candidate) for r in report.rows if not r.passed}
    assert ("eager", "cpp") in failed and ("torchscript", "cpp") not in failed, report.table()


@requires_torchvision
def test_resnet18_layers_pass_then_altered_conv_is_found(tmp_path):
    model = seeded(_resnet18)
    artifact = tb.export(model, (torch.rand(2, 3, 32, 32),), tmp_path / "resnet18.pt")
    clean = diagnose_layers(model, artifact.path, threads=THREADS)
    assert clean.passed and clean.compared == len(clean.rows), clean.table()
    labels = [r.label for r in clean.rows]
    assert "layer1.0.conv1" in labels and "layer1.0.relu #2" in labels  # nested names, repeated calls
    assert labels.index("layer1.0.conv1") < labels.index("layer1.0") < labels.index("layer1")

    altered = _altered_copy(artifact.path, tmp_path / "altered.pt", "layer2.1.conv2", 1e-3)
    report = diagnose_layers(model, altered, threads=THREADS)
    assert report.first_failure.label == "layer2.1.conv2", report.table()
    assert [r.label for r in report.failures] == ["layer2.1.conv2", "layer2.1", "layer2"]


class WithUnusedAndKeyword(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.scaled = Scale()
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        return self.scaled(self.first(x), factor=2.0)


class Scale(nn.Module):
    def forward(self, x, factor: float = 1.0):
        return x * factor


def test_traced_and_frozen_artifacts_skip_with_notes(tmp_path):
    model = seeded(WithUnusedAndKeyword)
    x = torch.rand(2, 4)
    traced = tb.export(model, (x,), tmp_path / "traced.pt", method="trace")
    report = diagnose_layers(model, traced.path, threads=THREADS)
    rows = {r.label: r for r in report.rows}
    assert rows["first"].status == "ok"
    assert rows["scaled"].status == "skip" and "keywords" in rows["scaled"].note
    assert "unused" not in rows  # never ran in eager either

    cnn = seeded(tb.models.digits_cnn)
    frozen = tb.export(cnn, (digits(),), tmp_path / "frozen.pt", optimize=True)
    report = diagnose_layers(cnn, frozen.path, threads=THREADS)
    assert report.compared == 0 and report.passed
    assert all("inlined by tracing or freezing" in r.note for r in report.rows)
    assert "no submodule could be compared" in report.table()

    runtime = tb.Runtime(traced.path, threads=THREADS)
    with pytest.raises(tb.TorchbridgeError, match="'unused' has no forward method") as caught:
        runtime.forward_submodule("unused", x)
    assert caught.value.code == "input"


def test_cli_verify_layers(cnn_artifact, tmp_path, capsys):
    model, path = cnn_artifact
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    code = cli_main(
        ["verify", str(path), "--model", "digits_cnn", "--weights", str(weights), "--layers", "--no-cli", "--json"]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["layers"]["passed"] and out["layers"]["compared"] == 13

    altered = _altered_copy(path, tmp_path / "altered.pt", "classifier.1", 1e-3)
    code = cli_main(
        ["verify", str(altered), "--model", "digits_cnn", "--weights", str(weights), "--layers", "--fresh", "0"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "first layer beyond tolerance: classifier.1 (Linear)" in out

    assert cli_main(["verify", str(path), "--layers"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --layers needs --model (and --weights): the layer-wise diagnosis runs the eager model's submodules"
    )
    with pytest.raises(tb.TorchbridgeError, match="layers=True needs the eager model"):
        tb.verify(None, path, layers=True)
