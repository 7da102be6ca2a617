"""The runtime's "rowwise" variant: torchbridge::rowwise_linear and torchbridge::rowwise_lstm (the
runtime's kernels for linear layers and LSTMs on a few rows) against aten's operators, the variant
run from a measured order in C++ and in its Python mirror, and export timing it only where it can
differ from freeze alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import torchbridge as tb
from conftest import THREADS, digits, seeded
from test_tune import export_with_order
from torchbridge import _C
from torchbridge.compare import max_errors
from torchbridge.mirror import CPU_VARIANTS, has_rowwise_ops, load_in_python, rewrite_rowwise

needs_kernel = pytest.mark.skipif(not _C.rowwise_available(), reason="the CPU has no AVX2+FMA kernel")


def reference(x, w, b):
    return torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_matches_linear_up_to_its_row_limit(bias):
    generator = torch.Generator().manual_seed(0)
    # K and N not multiples of the kernel's 16 and 4: its tails
    w = torch.randn(37, 1029, generator=generator)
    b = torch.randn(37, generator=generator) if bias else None
    for rows in (1, 2, 5, _C.ROWWISE_MAX_ROWS):
        x = torch.randn(rows, 1029, generator=generator)
        y = torch.ops.torchbridge.rowwise_linear(x, w, b)
        assert y.shape == (rows, 37) and y.dtype == torch.float32
        # float32 sums of 1029 products, against float64: within 1e-5 of the largest output
        assert max_errors(y.double(), reference(x, w, b))[1] <= 1e-5, rows
    x = torch.randn(2, 3, 1029, generator=generator)  # leading dimensions are rows
    assert torch.ops.torchbridge.rowwise_linear(x, w, b).shape == (2, 3, 37)


def test_what_the_kernel_does_not_take_is_aten_linear_exactly():
    generator = torch.Generator().manual_seed(1)
    w, b = torch.randn(24, 64, generator=generator), torch.randn(24, generator=generator)
    many = torch.randn(_C.ROWWISE_MAX_ROWS + 1, 64, generator=generator)
    strided = torch.randn(64, 2, generator=generator).t()  # not contiguous
    for x, weight, bias in (
        (many, w, b),
        (strided, w, b),
        (many[:2].double(), w.double(), b.double()),
        (many[:2].bfloat16(), w.bfloat16(), b.bfloat16()),
        (many[:2], w.t().contiguous().t(), b),  # a weight that is not contiguous
    ):
        expected = torch.nn.functional.linear(x, weight, bias)
        assert torch.equal(torch.ops.torchbridge.rowwise_linear(x, weight, bias), expected)


@needs_kernel
def test_the_kernel_gives_the_same_bits_at_any_thread_count():
    generator = torch.Generator().manual_seed(2)
    w, b = torch.randn(1000, 700, generator=generator), torch.randn(1000, generator=generator)
    x = torch.randn(3, 700, generator=generator)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.torchbridge.rowwise_linear(x, w, b)
        torch.set_num_threads(2)
        two = torch.ops.torchbridge.rowwise_linear(x, w, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


class Heads(nn.Module):
    """Linear layers with and without bias, one on a non-constant weight (not rewritten)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 128)
        self.b = nn.Linear(128, 32, bias=False)
        self.c = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h))
        return self.c(h) + torch.nn.functional.linear(h, h[:, :10].t().contiguous()[:, :32].t().t()).sum()


def test_the_pass_rewrites_linear_layers_with_constant_weights():
    module = torch.jit.freeze(torch.jit.script(seeded(Heads).eval()))
    assert has_rowwise_ops(module)
    assert rewrite_rowwise(module.graph) == 3
    kinds = [node.kind() for node in module.graph.nodes()]
    assert kinds.count("torchbridge::rowwise_linear") == 3 and kinds.count("aten::linear") == 1
    assert not has_rowwise_ops(torch.jit.script(nn.Conv2d(1, 2, 3)))


def test_the_runtime_runs_the_variant_from_a_measured_order_and_matches_its_mirror(tmp_path, monkeypatch):
    model = seeded(tb.models.digits_mlp)
    path = tmp_path / "mlp.pt"
    x4 = digits(4).reshape(4, -1)
    export_with_order(model, (x4,), path, ["rowwise", "as_loaded", "onednn_graph"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.optimization.startswith("freeze+rowwise (variant order measured at export)")
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    with torch.inference_mode():
        for batch in (1, 3, _C.ROWWISE_MAX_ROWS + 4):  # the last one past the kernel's rows
            x = digits(batch).reshape(batch, -1)
            y = runtime(x)
            assert runtime.variant_at(x) == "rowwise"
            assert torch.equal(y, mirror(x)), f"batch {batch}"
            assert max_errors(y, model(x))[1] <= 1e-5
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed
    done = subprocess.run([str(tb.runtime.cli_path()), str(path), "--selftest"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_export_times_the_variant_only_where_it_differs_from_freeze_alone(tmp_path):
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    order = tb.export(conv, (digits(2),), tmp_path / "conv.pt").manifest["runtime"]["variants"]
    assert "rowwise" not in order and sorted(order) == sorted(["as_loaded", *CPU_VARIANTS[:-1]])
    # ATen capped below AVX2: the kernel does not run, the variant would be freeze alone
    script = (
        "import torch, torchbridge as tb; from torchbridge import _C;"
        "m = tb.models.digits_mlp().eval();"
        f"a = tb.export(m, (torch.randn(4, 64),), {str(tmp_path / 'mlp.pt')!r}, check_runtime=False);"
        "print(_C.rowwise_available(), a.manifest['runtime']['variants'])"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("False") and "rowwise" not in done.stdout, done.stdout


def lstm_outputs(module, x):
    output, (h, c) = module(x)
    return [output, h, c]


@needs_kernel
@pytest.mark.parametrize(
    "config",
    [
        dict(input_size=48, hidden_size=64, num_layers=2, batch_first=True, batch=1, steps=9),
        dict(input_size=33, hidden_size=20, num_layers=3, bidirectional=True, batch=3, steps=7),  # time-major
        dict(input_size=16, hidden_size=12, bias=False, batch_first=True, batch=2, steps=5),
        dict(input_size=8, hidden_size=9, num_layers=2, bidirectional=True, batch_first=True, batch=16, steps=4),
    ],
    ids=["two-layers", "bidirectional-time-major", "no-bias", "max-rows"],
)
def test_the_lstm_kernel_matches_the_frozen_lstm(config):
    config = dict(config)
    batch, steps = config.pop("batch"), config.pop("steps")
    torch.manual_seed(0)
    model = nn.LSTM(**config).eval()
    shape = (batch, steps, config["input_size"]) if config.get("batch_first") else (steps, batch, config["input_size"])
    x = torch.randn(shape)
    frozen = torch.jit.freeze(torch.jit.trace(model, x).eval())
    rewritten = torch.jit.freeze(torch.jit.trace(model, x).eval())
    assert rewrite_rowwise(rewritten.graph) == 1
    with torch.inference_mode():
        expected, actual = lstm_outputs(frozen, x), lstm_outputs(rewritten, x)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape and max_errors(a, e)[1] <= 1e-5
        poisoned = x.clone()
        poisoned.view(-1)[poisoned.numel() // 2] = float("nan")  # NaN goes where the LSTM's goes
        for a, e in zip(lstm_outputs(rewritten, poisoned), lstm_outputs(frozen, poisoned)):
            assert torch.equal(a.isnan(), e.isnan())


def test_what_the_lstm_kernel_does_not_take_is_aten_lstm_exactly():
    torch.manual_seed(0)
    cases = [
        (nn.LSTM(8, 6, batch_first=True), torch.randn(_C.ROWWISE_MAX_ROWS + 1, 3, 8)),  # too many rows
        (nn.LSTM(8, 6, batch_first=True, proj_size=4), torch.randn(2, 3, 8)),
        (nn.LSTM(8, 6, batch_first=True).double(), torch.randn(2, 3, 8, dtype=torch.float64)),
    ]
    for model, x in cases:
        model.eval()
        frozen = torch.jit.freeze(torch.jit.trace(model, x).eval())
        rewritten = torch.jit.freeze(torch.jit.trace(model, x).eval())
        assert rewrite_rowwise(rewritten.graph) == 1
        with torch.inference_mode():
            for a, e in zip(lstm_outputs(rewritten, x), lstm_outputs(frozen, x)):
                assert torch.equal(a, e)


def test_the_runtime_runs_an_lstm_through_the_variant_and_matches_its_mirror(tmp_path, monkeypatch):
    model = seeded(lambda: nn.LSTM(24, 32, num_layers=2, batch_first=True)).eval()
    path = tmp_path / "lstm.pt"
    export_with_order(model, (torch.randn(2, 5, 24),), path, ["rowwise", "as_loaded"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for batch, steps in ((1, 5), (3, 5)):
            x = torch.randn(batch, steps, 24, generator=generator)
            y = runtime(x)
            assert runtime.variant_at(x) == "rowwise"
            expected = mirror(x)
            assert all(torch.equal(a, e) for a, e in zip(flatten(y), flatten(expected))), f"batch {batch}"
            assert all(max_errors(a, e)[1] <= 1e-5 for a, e in zip(flatten(y), flatten(model(x))))
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed


def flatten(value):
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in flatten(item)]
