"""The runtime's "rowwise_linear" variant: torchbridge::rowwise_linear (the runtime's kernel for a
linear layer on an input of a few rows) against aten::linear, the variant run from a measured order
in C++ and in its Python mirror, and export timing it only where it can differ from freeze alone."""

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
from torchbridge.mirror import CPU_VARIANTS, has_linear, load_in_python, rewrite_rowwise_linear

needs_kernel = pytest.mark.skipif(not _C.rowwise_linear_available(), reason="the CPU has no AVX2+FMA kernel")


def reference(x, w, b):
    return torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_matches_linear_up_to_its_row_limit(bias):
    generator = torch.Generator().manual_seed(0)
    # K and N not multiples of the kernel's 16 and 4: its tails
    w = torch.randn(37, 1029, generator=generator)
    b = torch.randn(37, generator=generator) if bias else None
    for rows in (1, 2, 5, _C.ROWWISE_LINEAR_MAX_ROWS):
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
    many = torch.randn(_C.ROWWISE_LINEAR_MAX_ROWS + 1, 64, generator=generator)
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
    assert has_linear(module)
    assert rewrite_rowwise_linear(module.graph) == 3
    kinds = [node.kind() for node in module.graph.nodes()]
    assert kinds.count("torchbridge::rowwise_linear") == 3 and kinds.count("aten::linear") == 1
    assert not has_linear(torch.jit.script(nn.Conv2d(1, 2, 3)))


def test_the_runtime_runs_the_variant_from_a_measured_order_and_matches_its_mirror(tmp_path, monkeypatch):
    model = seeded(tb.models.digits_mlp)
    path = tmp_path / "mlp.pt"
    x4 = digits(4).reshape(4, -1)
    export_with_order(model, (x4,), path, ["rowwise_linear", "as_loaded", "onednn_graph"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.optimization.startswith("freeze+rowwise_linear (variant order measured at export)")
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    with torch.inference_mode():
        for batch in (1, 3, _C.ROWWISE_LINEAR_MAX_ROWS + 4):  # the last one past the kernel's rows
            x = digits(batch).reshape(batch, -1)
            y = runtime(x)
            assert runtime.variant_at(x) == "rowwise_linear"
            assert torch.equal(y, mirror(x)), f"batch {batch}"
            assert max_errors(y, model(x))[1] <= 1e-5
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed
    done = subprocess.run([str(tb.runtime.cli_path()), str(path), "--selftest"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_export_times_the_variant_only_where_it_differs_from_freeze_alone(tmp_path):
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    order = tb.export(conv, (digits(2),), tmp_path / "conv.pt").manifest["runtime"]["variants"]
    assert "rowwise_linear" not in order and sorted(order) == sorted(["as_loaded", *CPU_VARIANTS[:-1]])
    # ATen capped below AVX2: the kernel does not run, the variant would be freeze alone
    script = (
        "import torch, torchbridge as tb; from torchbridge import _C;"
        "m = tb.models.digits_mlp().eval();"
        f"a = tb.export(m, (torch.randn(4, 64),), {str(tmp_path / 'mlp.pt')!r}, check_runtime=False);"
        "print(_C.rowwise_linear_available(), a.manifest['runtime']['variants'])"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("False") and "rowwise_linear" not in done.stdout, done.stdout
