"""Pruning: masks that reach the sparsity asked for, made permanent, channels removed for real,
and pruned models that run in C++ with the same outputs as in Python."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import torchbridge as tb
from conftest import THREADS, digits, requires_torchvision, seeded
from torchbridge.prune import (
    is_pruned,
    make_permanent,
    parameter_count,
    prune_and_fine_tune,
    sparsity_report,
)

# digits_cnn's prunable layers: features.0 (32x1x3x3), features.3 (64x32x3x3), classifier.1 (64x1024),
# classifier.3 (10x64).
CNN_LAYERS = ["features.0", "features.3", "classifier.1", "classifier.3"]


def weights(model) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach().clone() for name, module in model.named_modules() if name in CNN_LAYERS}


def assert_no_reparametrization(model):
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    assert not [n for n in names if n.endswith("_orig") or n.endswith("_mask")], names
    assert not any(module._forward_pre_hooks for module in model.modules())
    assert not is_pruned(model)


@pytest.mark.parametrize("method", ["l1_unstructured", "random_unstructured"])
@pytest.mark.parametrize("amount", [0.3, 200])
def test_unstructured_methods_reach_the_requested_sparsity(method, amount):
    model = seeded(tb.models.digits_cnn)
    before = weights(model)
    report = tb.prune(model, method, amount)
    assert [layer.name for layer in report.layers] == CNN_LAYERS
    for layer in report.layers:
        requested = amount if isinstance(amount, int) else amount * layer.elements
        assert abs(layer.zeros - requested) <= 1, report.table()
        if method == "l1_unstructured":  # the smallest magnitudes went, the larger ones stayed
            original = before[layer.name].abs()
            zero = dict(model.named_modules())[layer.name].weight == 0
            assert original[zero].max() <= original[~zero].min()
    assert_no_reparametrization(model)


@pytest.mark.parametrize(("method", "amount", "dim"), [("ln_structured", 0.25, 0), ("random_structured", 3, 0)])
def test_structured_methods_zero_whole_channels(method, amount, dim):
    model = seeded(tb.models.digits_cnn)
    report = tb.prune(model, method, amount, dim=dim, norm=1)
    for layer in report.layers:
        requested = amount if isinstance(amount, int) else amount * layer.channels
        assert abs(layer.zero_channels - requested) <= 1, report.table()
        assert layer.zeros == layer.zero_channels * (layer.elements // layer.channels)  # whole slices only


def test_ln_structured_along_input_channels():
    model = seeded(tb.models.digits_cnn)
    tb.prune(model, "ln_structured", 0.5, layer_types=("conv",), skip=["features.0"], dim=1)
    weight = model.features[3].weight  # 64 x 32 x 3 x 3: half of the 32 input channels gone
    zero_inputs = (weight == 0).transpose(0, 1).flatten(1).all(dim=1)
    assert int(zero_inputs.sum()) == 16
    assert int((model.features[0].weight == 0).sum()) == 0


def test_global_unstructured_ranks_across_layers():
    model = seeded(tb.models.digits_cnn)
    before = weights(model)
    report = tb.prune(model, "global_unstructured", 0.6)
    assert abs(report.zeros - 0.6 * report.elements) <= 1, report.table()
    sparsities = [layer.sparsity for layer in report.layers]
    assert max(sparsities) - min(sparsities) > 0.05  # layers are cut unevenly, unlike per-layer pruning
    modules = dict(model.named_modules())
    pruned = torch.cat([before[name].abs()[modules[name].weight == 0] for name in CNN_LAYERS])
    kept = torch.cat([before[name].abs()[modules[name].weight != 0] for name in CNN_LAYERS])
    assert pruned.max() <= kept.min()  # one threshold for all layers


def test_layer_types_and_skip_choose_what_is_pruned():
    model = seeded(tb.models.digits_cnn)
    report = tb.prune(model, "l1_unstructured", 0.5, layer_types=("linear",), skip=["classifier.3"])
    assert [layer.name for layer in report.layers] == ["classifier.1"]
    full = sparsity_report(model)
    assert full.layer("classifier.1").sparsity == pytest.approx(0.5)
    for name in ("features.0", "features.3", "classifier.3"):
        assert full.layer(name).zeros == 0


def test_masks_kept_for_fine_tuning_then_made_permanent():
    model = seeded(tb.models.digits_cnn)
    x = digits(8)
    for amount in (0.2, 0.4, 0.6):  # cumulative targets, the way an iterative schedule calls it
        report = tb.prune(model, "l1_unstructured", amount, permanent=False)
        for layer in report.layers:
            assert abs(layer.zeros - amount * layer.elements) <= 1, report.table()
    assert is_pruned(model)
    assert hasattr(model.features[0], "weight_orig") and hasattr(model.features[0], "weight_mask")
    with torch.no_grad():
        masked_output = model(x)
    assert make_permanent(model) == 4
    assert_no_reparametrization(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_output, rtol=0, atol=0)
    assert set(model.state_dict()) == set(seeded(tb.models.digits_cnn).state_dict())


def test_masked_model_exports_and_matches_in_cpp(tmp_path):
    dense = seeded(tb.models.digits_cnn)
    model = seeded(tb.models.digits_cnn)
    tb.prune(model, "global_unstructured", 0.7)
    artifact = tb.export(model, (digits(),), tmp_path / "masked.pt")
    assert artifact.manifest["method"] == "script"  # a plain model: no pruning hooks left to trace around
    report = tb.verify(model, artifact.path, threads=THREADS, fresh=2, cli=True)
    assert report.passed, report.table()
    assert report.worst("torchscript", "cpp") == (0.0, 0.0) and report.worst("torchscript", "cli") == (0.0, 0.0)
    # Masking keeps the tensors' shapes: same file size, smaller only once compressed.
    from torchbridge.pipeline import artifact_sizes

    dense_sizes = artifact_sizes(tb.export(dense, (digits(),), tmp_path / "dense.pt").path)
    masked_sizes = artifact_sizes(artifact.path)
    assert abs(masked_sizes["bytes"] - dense_sizes["bytes"]) < 1024
    assert masked_sizes["gzip_bytes"] < 0.75 * dense_sizes["gzip_bytes"]


def test_channel_pruning_of_the_digits_cnn_removes_parameters_and_matches_in_cpp(tmp_path):
    model = seeded(tb.models.digits_cnn)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruning = tb.prune_channels(model, (digits(),), amount=0.5)
    pruned = pruning.model

    channels = {change.name: (change.before, change.after) for change in pruning.layers}
    assert channels == {
        "features.0": (32, 16),
        "features.3": (64, 32),
        "classifier.1": (64, 32),
        "classifier.3": (10, 10),  # produces the outputs: never narrowed
    }
    assert pruning.protected == ["classifier.3"]
    assert pruned.classifier[1].in_features == 32 * 4 * 4  # flatten dependency followed
    assert pruned.features[1].num_features == 16  # the BatchNorm after the conv follows it
    assert pruning.parameters_after == parameter_count(pruned) < 0.3 * pruning.parameters_before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the original is untouched
    assert_no_reparametrization(pruned)

    artifact = tb.export(pruned, (digits(),), tmp_path / "channels.pt")
    report = tb.verify(pruned, artifact.path, threads=THREADS, fresh=2, cli=True)
    assert report.passed, report.table()
    assert tb.Runtime(artifact.path, threads=THREADS)(digits(5)).shape == (5, 10)
    dense_bytes = tb.export(model, (digits(),), tmp_path / "dense.pt").size_bytes
    assert artifact.size_bytes < 0.4 * dense_bytes


@requires_torchvision
def test_channel_pruning_of_resnet18_follows_residuals_and_matches_in_cpp(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.rand(2, 3, 64, 64)
    pruning = tb.prune_channels(model, (x,), amount=0.5)
    pruned = pruning.model
    assert pruning.parameters_after < 0.35 * pruning.parameters_before

    # A residual addition ties the block's output to its input: both shrank together.
    block = pruned.layer1[0]
    assert block.conv2.out_channels == pruned.conv1.out_channels == block.bn2.num_features == 32
    down = pruned.layer2[0]
    assert down.conv2.out_channels == down.downsample[0].out_channels == pruned.layer2[1].conv2.out_channels
    assert pruned.fc.out_features == 10 and pruned.fc.in_features == 256
    assert pruning.protected == ["fc"]

    artifact = tb.export(pruned, (x,), tmp_path / "resnet18_channels.pt")
    report = tb.verify(pruned, artifact.path, threads=THREADS, fresh=1, cli=True)
    assert report.passed, report.table()
    for row in report.rows:
        if row.reference == "torchscript":
            assert row.max_abs == 0.0, report.table()


def test_fifty_percent_channel_pruning_with_fine_tuning_keeps_digits_accuracy(tmp_path):
    """The figure docs/pruning.md quotes: 50 % of the CNN's channels removed, fine-tuned, loses <= 1 point."""
    torch.manual_seed(0)
    model = tb.models.digits_cnn()
    data = tb.data.DigitsDataModule()
    tb.train(model, data, max_epochs=5, root_dir=tmp_path / "train", progress_bar=False)

    result = prune_and_fine_tune(
        model, data, method="channels", amount=0.5, steps=2, epochs_per_step=2, lr=3e-3, root_dir=tmp_path / "prune"
    )
    print(f"\ndigits CNN, 50 % channels: test accuracy {result.accuracy_before:.4f} -> {result.accuracy_after:.4f}")
    print(result.table())
    assert result.accuracy_before >= 0.97
    assert result.steps[-1].accuracy_pruned < result.accuracy_after  # fine-tuning did recover something
    assert result.accuracy_after >= result.accuracy_before - 0.01
    assert result.parameters_after < 0.3 * result.parameters_before
    assert tb.evaluate(result.model, data) == pytest.approx(result.accuracy_after)


def test_bad_arguments_raise_clear_errors_and_leave_the_model_alone():
    model = seeded(tb.models.digits_cnn)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [
        (dict(method="l3_magic"), "unknown pruning method 'l3_magic'"),
        (dict(method="channels"), "use prune_channels"),
        (dict(amount=1.5), r"fraction must be in \[0, 1\]"),
        (dict(amount=-3), "count must be >= 0"),
        (dict(amount="half"), "fraction in \\[0, 1\\] or a count"),
        (dict(amount=300), "amount 300 exceeds the 288 weights of layer 'features.0'"),
        (dict(skip=["classifier.9"]), "cannot skip 'classifier.9': no such module"),
        (dict(layer_types=("attention",)), "layer type 'attention' is not one of conv, linear"),
        (dict(layer_types=(torch.nn.LSTM,)), "no layers to prune in DigitsCNN"),
        (dict(method="ln_structured", dim=4), "dim 4 is out of range for layer 'features.0'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(tb.TorchbridgeError, match=message):
            tb.prune(model, **kwargs)
    for amount, message in [(0.0, r"fraction in \(0, 1\)"), (1.0, r"fraction in \(0, 1\)"), (4, "fraction")]:
        with pytest.raises(tb.TorchbridgeError, match=message):
            tb.prune_channels(model, (digits(),), amount=amount)
    with pytest.raises(tb.TorchbridgeError, match="unknown importance 'taylor'"):
        tb.prune_channels(model, (digits(),), importance="taylor")
    with pytest.raises(tb.TorchbridgeError, match="example input 0 must be a torch.Tensor"):
        tb.prune_channels(model, ("not a tensor",))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert_no_reparametrization(model)


def torchbridge_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchbridge", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=900
    )


def test_cli_prune_reports_before_and_after(tmp_path):
    out = tmp_path / "prune"
    result = torchbridge_cli(
        "prune", "--model", "digits_cnn", "--method", "channels", "--amount", "0.5", "--steps", "1",
        "--fine-tune-epochs", "1", "--bench-runs", "5", "--out", out, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    before, after = report["comparison"]["before"], report["comparison"]["after"]
    assert report["parity"]["passed"]
    assert after["parameters"] < 0.3 * before["parameters"]
    assert after["bytes"] < before["bytes"] and after["gzip_bytes"] < before["gzip_bytes"]
    assert 0.0 <= after["accuracy_cpp"] <= 1.0
    assert after["accuracy_cpp"] == pytest.approx(after["accuracy_eager"], abs=1e-9)
    assert set(after["latency_p50_ms"]) == {"1", "32"}
    assert (out / "pruned.pt").is_file() and (out / "dense.pt").is_file()
    assert "C++ latency p50, batch 32" in (out / "report.md").read_text()
    selftest = subprocess.run(
        [str(tb.runtime.cli_path()), out / "pruned.pt", "--selftest"], capture_output=True, text=True
    )
    assert selftest.returncode == 0, selftest.stderr

    again = torchbridge_cli("prune", "--out", out, "--fine-tune-epochs", "0")
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    bad = torchbridge_cli("prune", "--amount", "1.5", "--method", "l1_unstructured", "--out", tmp_path / "bad")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ") and "fraction must be in [0, 1]" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_pipeline_with_a_prune_stage(tmp_path):
    out = tmp_path / "run"
    result = torchbridge_cli(
        "pipeline", "--out", out, "--epochs", "1", "--prune", "l1_unstructured", "--prune-amount", "0.5",
        "--prune-steps", "1", "--prune-epochs", "1", "--bench-runs", "3", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    pruning = report["pruning"]
    assert report["parity"]["passed"] and pruning["parity"]["passed"]
    after = pruning["comparison"]["after"]
    assert after["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert report["accuracy"]["cpp"] == pytest.approx(after["accuracy_cpp"], abs=1e-9)
    assert pruning["comparison"]["ratios"]["gzip_bytes"] < 0.8
    assert "## Pruning (l1_unstructured, amount 0.5)" in (out / "report.md").read_text()
