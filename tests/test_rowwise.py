"""The runtime's "rowwise" variant: torchbridge::rowwise_linear and torchbridge::rowwise_lstm (the
runtime's kernels for linear layers and LSTMs on a few rows), torchbridge::packed_linear (its GEMM on
a weight packed at load, for more rows), torchbridge::layer_norm, gelu and attention (its kernels
for small inputs), torchbridge::silu, pointwise_conv and depthwise_conv (the "channels_last"
variant's SiLU, 1x1 and depthwise convolutions) against aten's operators, the variants run from a
measured order in C++ and in their Python mirror, and export timing "rowwise" only where it can
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
from torchbridge.graph_passes import fold_fused_layer_weights, has_rowwise_ops, rewrite_channels_last, rewrite_rowwise
from torchbridge.mirror import CPU_VARIANTS, load_in_python

needs_kernel = pytest.mark.skipif(not _C.rowwise_available(), reason="the CPU has no AVX2+FMA kernel")


def packed_linear(x, w, b):
    return torch.ops.torchbridge.packed_linear(x, w, torch.ops.torchbridge.pack_linear_weight(w), b)


def reference(x, w, b):
    return torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k_in", [1029, 300])  # rows longer and shorter than the prefetch's limit (512)
def test_the_kernel_matches_linear_up_to_its_row_limit(bias, k_in):
    generator = torch.Generator().manual_seed(0)
    # K and N not multiples of the kernel's 16 and 4: its tails
    w = torch.randn(37, k_in, generator=generator)
    b = torch.randn(37, generator=generator) if bias else None
    for rows in (1, 2, 5, _C.ROWWISE_MAX_ROWS):
        x = torch.randn(rows, k_in, generator=generator)
        y = torch.ops.torchbridge.rowwise_linear(x, w, b)
        assert y.shape == (rows, 37) and y.dtype == torch.float32
        # float32 sums of up to 1029 products, against float64: within 1e-5 of the largest output
        assert max_errors(y.double(), reference(x, w, b))[1] <= 1e-5, rows
    x = torch.randn(2, 3, k_in, generator=generator)  # leading dimensions are rows
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
# the packed GEMM on one row (panels in pairs) and on 3 and 20 rows, which two threads split by
# panel, and on 49 (a last tile of one row), 200 and, with 40 outputs (three panels), 200 again,
# which they split by rows (one thread runs them block by block, each block panel by panel)
@pytest.mark.parametrize(
    "rows,outputs", [(1, 1000), (1, 40), (3, 1000), (20, 1000), (49, 1000), (200, 1000), (200, 40)]
)
def test_the_kernels_give_the_same_bits_at_any_thread_count(rows, outputs):
    generator = torch.Generator().manual_seed(2)
    w, b = torch.randn(outputs, 700, generator=generator), torch.randn(outputs, generator=generator)
    x = torch.randn(rows, 700, generator=generator)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = packed_linear(x, w, b)
        torch.set_num_threads(2)
        two = packed_linear(x, w, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
def test_the_packed_kernel_matches_linear_from_one_row(bias):
    generator = torch.Generator().manual_seed(3)
    # 37 outputs: a last panel of 5; 1029 inputs: slices of 256 along K and a tail of 5
    w = torch.randn(37, 1029, generator=generator)
    b = torch.randn(37, generator=generator) if bias else None
    for rows in (1, 3, _C.ROWWISE_MAX_ROWS + 1, 23, 32, 97, _C.PACKED_MAX_ROWS):  # tiles of 6 rows, blocks of 96
        x = torch.randn(rows, 1029, generator=generator)
        y = packed_linear(x, w, b)
        assert y.shape == (rows, 37) and y.dtype == torch.float32
        assert max_errors(y.double(), reference(x, w, b))[1] <= 1e-5, rows
    x = torch.randn(4, 8, 1029, generator=generator)  # leading dimensions are rows, 32 of them
    assert packed_linear(x, w, b).shape == (4, 8, 37)
    assert max_errors(packed_linear(x, w, b).double(), reference(x, w, b))[1] <= 1e-5
    strided = torch.randn(1029, 40, generator=generator).t()  # copied to rows first
    assert max_errors(packed_linear(strided, w, b).double(), reference(strided, w, b))[1] <= 1e-5


def test_what_the_packed_kernel_does_not_take_is_aten_linear_exactly():
    generator = torch.Generator().manual_seed(5)
    w, b = torch.randn(24, 64, generator=generator), torch.randn(24, generator=generator)
    packed = torch.ops.torchbridge.pack_linear_weight(w)
    many = torch.randn(_C.PACKED_MAX_ROWS + 1, 64, generator=generator)
    assert torch.equal(torch.ops.torchbridge.packed_linear(many, w, packed, b), torch.nn.functional.linear(many, w, b))
    rows = torch.randn(40, 64, generator=generator)
    foreign = torch.ops.torchbridge.pack_linear_weight(torch.randn(40, 64, generator=generator))
    assert torch.equal(torch.ops.torchbridge.packed_linear(rows, w, foreign, b), torch.nn.functional.linear(rows, w, b))
    doubles = rows.double()
    assert torch.equal(
        torch.ops.torchbridge.packed_linear(doubles, w.double(), packed, b.double()),
        torch.nn.functional.linear(doubles, w.double(), b.double()),
    )
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        torch.ops.torchbridge.packed_linear(torch.randn(40, 63), w, packed, b)


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
    assert kinds.count("torchbridge::packed_linear") == 3 and kinds.count("aten::linear") == 1
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
        for batch in (1, 3, _C.ROWWISE_MAX_ROWS + 4, 40):  # the last two through the packed kernel
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
        # past the row kernel's rows: the packed GEMM per step
        dict(input_size=24, hidden_size=20, num_layers=2, bidirectional=True, batch=37, steps=6),  # time-major
        dict(input_size=16, hidden_size=12, bias=False, batch_first=True, batch=40, steps=5),
    ],
    ids=["two-layers", "bidirectional-time-major", "no-bias", "max-rows", "packed-time-major", "packed-no-bias"],
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
    (node,) = rewritten.graph.findAllNodes("torchbridge::rowwise_lstm")
    packed = list(node.inputs())[-1].toIValue()  # each layer's and direction's two weights, packed
    assert len(packed) == 2 * config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    with torch.inference_mode():
        expected, actual = lstm_outputs(frozen, x), lstm_outputs(rewritten, x)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape and max_errors(a, e)[1] <= 1e-5
        poisoned = x.clone()
        poisoned.view(-1)[poisoned.numel() // 2] = float("nan")  # NaN goes where the LSTM's goes
        for a, e in zip(lstm_outputs(rewritten, poisoned), lstm_outputs(frozen, poisoned)):
            assert torch.equal(a.isnan(), e.isnan())


@needs_kernel
@pytest.mark.parametrize("batch", [5, 40])  # the row kernel, the packed GEMM
def test_the_lstm_kernel_gives_the_same_bits_at_any_thread_count(batch):
    torch.manual_seed(0)
    model = nn.LSTM(32, 40, num_layers=2, batch_first=True).eval()
    x = torch.randn(batch, 7, 32)
    rewritten = torch.jit.freeze(torch.jit.trace(model, x).eval())
    assert rewrite_rowwise(rewritten.graph) == 1
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                results.append(lstm_outputs(rewritten, x))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_what_the_lstm_kernel_does_not_take_is_aten_lstm_exactly():
    torch.manual_seed(0)
    cases = [
        (nn.LSTM(8, 6, batch_first=True), torch.randn(_C.PACKED_MAX_ROWS + 1, 3, 8)),  # too many rows
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


# ---------------------------------------------------------------- layer norm, GELU and attention


def attention_case(generator, batch=1, heads=2, queries=32, keys=32, head=32, mask=None):
    """Query, key and value as a transformer makes them (heads split from one projection: not
    contiguous), and the keyword arguments for `mask`."""
    q = torch.randn(batch, queries, heads, head, generator=generator).transpose(1, 2)
    k = torch.randn(batch, keys, heads, head, generator=generator).transpose(1, 2)
    v = torch.randn(batch, keys, heads, head + 3, generator=generator).transpose(1, 2)  # a value tail
    kwargs = {}
    if mask == "bool":  # a padding mask, broadcast over heads and queries
        kwargs["attn_mask"] = (torch.rand(batch, 1, 1, keys, generator=generator) > 0.3).index_fill(
            3, torch.tensor([0]), True
        )
    elif mask == "bool-2d":
        kwargs["attn_mask"] = (torch.rand(queries, keys, generator=generator) > 0.3).index_fill(
            1, torch.tensor([0]), True
        )
    elif mask == "float":
        kwargs["attn_mask"] = torch.randn(batch, heads, queries, keys, generator=generator)
    elif mask == "causal":
        kwargs["is_causal"] = True
    elif mask == "scale":
        kwargs["scale"] = 0.3
    return (q, k, v), kwargs


@needs_kernel
@pytest.mark.parametrize("mask", [None, "bool", "bool-2d", "float", "causal", "scale"])
@pytest.mark.parametrize("shape", [(1, 2, 32, 32, 32), (2, 3, 5, 7, 9), (1, 4, 17, 64, 64)], ids=str)
def test_the_attention_kernel_matches_aten(mask, shape):
    generator = torch.Generator().manual_seed(2)
    batch, heads, queries, keys, head = shape
    if mask == "causal" and queries != keys:
        queries = keys
    args, kwargs = attention_case(generator, batch, heads, queries, keys, head, mask)
    expected = torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)
    actual = torch.ops.torchbridge.attention(*args, **kwargs)
    assert actual.shape == expected.shape and actual.stride() == expected.stride()
    assert max_errors(actual, expected)[1] <= 1e-5


@needs_kernel
def test_the_attention_kernel_leaves_unseen_queries_and_nan_to_aten():
    generator = torch.Generator().manual_seed(3)
    (q, k, v), _ = attention_case(generator, queries=4, keys=4, head=8)
    everything_masked = torch.ones(4, 4, dtype=torch.bool)
    everything_masked[2] = False  # query 2 sees no key: ATen's answer for it is zeros
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=everything_masked)
    assert torch.equal(torch.ops.torchbridge.attention(q, k, v, attn_mask=everything_masked), expected)
    q = q.clone()
    q[0, 1, 3, 5] = float("nan")
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    actual = torch.ops.torchbridge.attention(q, k, v)
    assert torch.equal(actual.isnan(), expected.isnan()) and actual.isnan().any()


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 32, 64), (3, 7, 13), (2, 5), (64, 1000)], ids=str)
def test_the_layer_norm_and_gelu_kernels_match_aten(shape):
    generator = torch.Generator().manual_seed(4)
    x = 3 * torch.randn(shape, generator=generator)
    width = shape[-1]
    weight, bias = torch.randn(width, generator=generator), torch.randn(width, generator=generator)
    for w, b in ((weight, bias), (None, None), (weight, None)):
        expected = torch.nn.functional.layer_norm(x, (width,), w, b, 1e-5)
        assert max_errors(torch.ops.torchbridge.layer_norm(x, [width], w, b, 1e-5), expected)[1] <= 1e-5
    assert max_errors(torch.ops.torchbridge.gelu(x), torch.nn.functional.gelu(x))[1] <= 1e-5
    special = torch.tensor([float("-inf"), float("inf"), float("nan"), -10.0, 10.0, 0.0, -0.0, 1e-30] * 2)
    assert torch.equal(torch.ops.torchbridge.gelu(special).isnan(), torch.nn.functional.gelu(special).isnan())
    finite = special.isfinite()
    assert torch.equal(torch.ops.torchbridge.gelu(special)[finite], torch.nn.functional.gelu(special)[finite])


def test_what_the_small_kernels_do_not_take_is_aten_exactly():
    generator = torch.Generator().manual_seed(5)
    big = torch.randn(_C.SMALL_GELU_ELEMENTS + 1, generator=generator)
    strided = torch.randn(64, 6, generator=generator).t()
    for x, approximate in ((big, "none"), (strided, "none"), (big[:64], "tanh"), (big[:64].double(), "none")):
        assert torch.equal(
            torch.ops.torchbridge.gelu(x, approximate=approximate), torch.nn.functional.gelu(x, approximate=approximate)
        )
    x = torch.randn(4, 6, 8, generator=generator)
    for args in (([6, 8], None, None), ([8], torch.randn(16)[::2], None)):  # two dimensions; a strided weight
        assert torch.equal(torch.ops.torchbridge.layer_norm(x, *args), torch.ops.aten.layer_norm(x, *args))
    assert torch.equal(
        torch.ops.torchbridge.layer_norm(x.double(), [8]), torch.nn.functional.layer_norm(x.double(), [8])
    )
    for keys, head, extra in (
        (_C.SMALL_ATTENTION_KEYS + 1, 16, {}),
        (8, _C.SMALL_ATTENTION_HEAD + 1, {}),
        (8, 16, {"enable_gqa": True}),
    ):
        (q, k, v), _ = attention_case(generator, keys=keys, queries=keys, head=head)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, **extra)
        assert torch.equal(torch.ops.torchbridge.attention(q, k, v, **extra), expected)


class SmallEncoder(nn.Module):
    """One pre-norm transformer block of the kind the Hugging Face encoders are: layer norm,
    attention through scaled_dot_product_attention with a padding mask, GELU."""

    def __init__(self, width=32, heads=2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x, mask):
        b, t, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, w // self.heads).unbind(2)
        keep = (mask > 0)[:, None, None, :]
        a = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=keep
        )
        x = x + self.out(a.transpose(1, 2).reshape(b, t, w))
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm2(x))))


def test_the_runtime_runs_a_small_transformer_through_the_variant_and_matches_its_mirror(tmp_path, monkeypatch):
    model = seeded(SmallEncoder).eval()
    path = tmp_path / "encoder.pt"
    generator = torch.Generator().manual_seed(6)

    def inputs(batch, length=12):
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2 :] = 0  # the first sequence padded
        return torch.randn(batch, length, 32, generator=generator), mask

    export_with_order(model, inputs(2), path, ["rowwise", "as_loaded"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    graph = torch.jit.freeze(torch.jit.load(path).eval()).graph
    assert rewrite_rowwise(graph) == 2 + 1 + 1 + 4  # layer norms, attention, GELU, linear layers
    with torch.inference_mode():
        for batch, length in ((1, 12), (3, 12), (_C.ROWWISE_MAX_ROWS + 1, 12)):
            x = inputs(batch, length)
            y = runtime(*x)
            assert runtime.variant_at(*x) == "rowwise"
            assert torch.equal(y, mirror(*x)), f"batch {batch}"
            assert max_errors(y, model(*x))[1] <= 1e-5
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed


def encoder(norm_first=False, activation="relu", layers=2, width=32):
    """nn.TransformerEncoder as its fast path takes it (batch first, eval): its layers trace to
    aten::_transformer_encoder_layer_fwd."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        width, 4, dim_feedforward=2 * width, batch_first=True, norm_first=norm_first, activation=activation
    )
    model = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False).eval()
    with torch.no_grad():  # layers that differ, and norms that are not the identity
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return model


def encoder_layer_operands(layer, x, mask=None):
    attention = layer.self_attn
    return (
        x, attention.embed_dim, attention.num_heads, attention.in_proj_weight, attention.in_proj_bias,
        attention.out_proj.weight, attention.out_proj.bias, layer.activation_relu_or_gelu == 2, layer.norm_first,
        layer.norm1.eps, layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias,
        layer.linear1.weight, layer.linear1.bias, layer.linear2.weight, layer.linear2.bias,
        mask, None if mask is None else 0,
    )


@needs_kernel
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("shape", [(1, 12), (3, 70)])  # attention through the small kernel, and ATen's past 64 keys
def test_the_encoder_layer_kernel_matches_atens_fused_layer(norm_first, activation, shape):
    layer = encoder(norm_first, activation).layers[0]
    x = torch.randn(*shape, 32, generator=torch.Generator().manual_seed(3))
    operands = encoder_layer_operands(layer, x)
    packed = [torch.ops.torchbridge.pack_linear_weight(operands[i]) for i in (3, 5, 14, 16)]
    with torch.inference_mode():
        expected = torch._transformer_encoder_layer_fwd(*operands)
        got = torch.ops.torchbridge.encoder_layer(*operands, packed)
    assert got.shape == expected.shape
    assert max_errors(got, expected)[1] <= 1e-5


@needs_kernel
def test_what_the_encoder_layer_kernel_does_not_take_is_atens_fused_layer_exactly():
    layer = encoder().layers[0]
    x = torch.randn(2, 9, 32)
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[:, 7:] = True  # the last two keys hidden from every query
    double = tuple(
        o.double() if isinstance(o, torch.Tensor) else o for o in encoder_layer_operands(layer, x)
    )
    packed = [torch.ops.torchbridge.pack_linear_weight(encoder_layer_operands(layer, x)[i]) for i in (3, 5, 14, 16)]
    with torch.inference_mode():
        for operands in (encoder_layer_operands(layer, x, mask), double):
            expected = torch._transformer_encoder_layer_fwd(*operands)
            assert torch.equal(torch.ops.torchbridge.encoder_layer(*operands, packed), expected)
        with pytest.raises(RuntimeError, match="expected 3-D `query`"):  # ATen's refusal, as ATen words it
            torch.ops.torchbridge.encoder_layer(*encoder_layer_operands(layer, x[0]), packed)


def export_sequence_model(model, path, variant, monkeypatch, generator):
    """`model` (a (batch, sequence, 32) input) exported with `variant` first, batch and sequence
    dynamic; the runtime, and the frozen module as the runtime's passes find it."""
    export_with_order(model, (torch.randn(2, 10, 32, generator=generator),), path, [variant, "as_loaded"],
                      monkeypatch, export_options={"dynamic_dims": [[0, 1]]})
    return tb.Runtime(path, threads=THREADS), torch.jit.freeze(torch.jit.load(path).eval())


def check_runs_variant(model, path, runtime, variant, generator):
    """The runtime runs `variant` at every shape, bit for bit as its mirror, close to eager."""
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    with torch.inference_mode():
        for batch, length in ((1, 10), (3, 10), (2, 80)):  # up to 64 keys torchbridge::attention, past it ATen's
            x = torch.randn(batch, length, 32, generator=generator)
            y = runtime(x)
            assert runtime.variant_at(x) == variant
            assert torch.equal(y, mirror(x)), f"batch {batch}, length {length}"
            assert max_errors(y, model(x))[1] <= 1e-5
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed


@pytest.mark.parametrize("variant", ["rowwise", "channels_last"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_the_runtime_runs_a_transformer_encoder_through_the_encoder_layer_kernel(tmp_path, monkeypatch, variant,
                                                                                  norm_first):
    model = encoder(norm_first, "gelu" if norm_first else "relu")
    generator = torch.Generator().manual_seed(8)
    runtime, frozen = export_sequence_model(model, tmp_path / "encoder.pt", variant, monkeypatch, generator)
    # Scripted, the fast path is a branch of the layer's checks: the passes look inside branches too.
    # Freezing leaves the attention's in_proj_weight and in_proj_bias attributes: the fold makes them
    # constants.
    graph = frozen.graph
    assert len(graph.findAllNodes("aten::_transformer_encoder_layer_fwd")) == 2
    assert not graph.findNode("aten::_transformer_encoder_layer_fwd", recurse=False)
    assert fold_fused_layer_weights(frozen) == 2 * (2 + 2)  # also in the attention's fast path of the other branch
    (rewrite_rowwise if variant == "rowwise" else rewrite_channels_last)(graph)
    assert len(graph.findAllNodes("torchbridge::encoder_layer")) == 2
    assert not graph.findAllNodes("aten::_transformer_encoder_layer_fwd")
    check_runs_variant(model, tmp_path / "encoder.pt", runtime, variant, generator)


def attention_operands(attention, query, key=None, mask=None, need_weights=False):
    key = query if key is None else key
    return (
        query, key, key, attention.embed_dim, attention.num_heads, attention.in_proj_weight, attention.in_proj_bias,
        attention.out_proj.weight, attention.out_proj.bias, mask, need_weights, True, None if mask is None else 0,
    )


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 12), (3, 70)])
def test_the_attention_block_kernel_matches_atens_fused_attention(shape):
    attention = encoder().layers[0].self_attn
    x = torch.randn(*shape, 32, generator=torch.Generator().manual_seed(4))
    operands = attention_operands(attention, x)
    packed = [torch.ops.torchbridge.pack_linear_weight(operands[i]) for i in (5, 7)]
    with torch.inference_mode():
        expected, expected_weights = torch._native_multi_head_attention(*operands)
        got, weights = torch.ops.torchbridge.multi_head_attention(*operands, packed)
    assert got.shape == expected.shape and max_errors(got, expected)[1] <= 1e-5
    assert weights is None and expected_weights is None  # none asked for: ATen's empty answer


@needs_kernel
def test_what_the_attention_block_kernel_does_not_take_is_atens_fused_attention_exactly():
    attention = encoder().layers[0].self_attn
    x, other = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[:, 7:] = True
    weights = (attention.in_proj_weight, attention.out_proj.weight)
    packed = [torch.ops.torchbridge.pack_linear_weight(w) for w in weights]
    cases = [
        attention_operands(attention, x, need_weights=True),  # the weights asked for
        attention_operands(attention, x, key=other),  # not self-attention
        attention_operands(attention, x, mask=mask),
    ]
    with torch.inference_mode():
        for operands in cases:
            expected = torch._native_multi_head_attention(*operands)
            got = torch.ops.torchbridge.multi_head_attention(*operands, packed)
            assert all(
                (e is None and g is None) or torch.equal(g, e) for g, e in zip(got, expected, strict=True)
            )


class SelfAttention(nn.Module):
    """nn.MultiheadAttention as its fast path takes it (batch first, self-attention, no weights)."""

    def __init__(self):
        super().__init__()
        self.attention = encoder().layers[0].self_attn
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        return self.norm(x + self.attention(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("variant", ["rowwise", "channels_last"])
def test_the_runtime_runs_multi_head_attention_through_the_attention_block_kernel(tmp_path, monkeypatch, variant):
    model = SelfAttention().eval()
    generator = torch.Generator().manual_seed(9)
    runtime, frozen = export_sequence_model(model, tmp_path / "attention.pt", variant, monkeypatch, generator)
    assert len(frozen.graph.findAllNodes("aten::_native_multi_head_attention")) == 1
    assert fold_fused_layer_weights(frozen) == 2  # in_proj_weight and in_proj_bias
    (rewrite_rowwise if variant == "rowwise" else rewrite_channels_last)(frozen.graph)
    assert len(frozen.graph.findAllNodes("torchbridge::multi_head_attention")) == 1
    assert not frozen.graph.findAllNodes("aten::_native_multi_head_attention")
    check_runs_variant(model, tmp_path / "attention.pt", runtime, variant, generator)


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(3, 5, 7, 9) * 8,  # 945 values: a tail after the vector loop
        torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last),
        torch.randn(70001),
    ],
    ids=["odd", "channels_last", "long"],
)
def test_the_silu_kernel_matches_aten_in_any_dense_layout(x):
    expected = torch.nn.functional.silu(x)
    y = torch.ops.torchbridge.silu(x)
    assert y.stride() == x.stride()
    assert max_errors(y, expected)[1] <= 1e-6
    in_place = x.clone()
    assert torch.ops.torchbridge.silu_(in_place) is in_place
    assert torch.equal(in_place, y)
    before = torch.get_num_threads()
    try:  # threads split the values where the vector loop has a tail: the same bits anyway
        torch.set_num_threads(1)
        one = torch.ops.torchbridge.silu(x)
        torch.set_num_threads(2)
        two = torch.ops.torchbridge.silu(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_the_silu_kernel_is_within_its_stated_error_over_the_whole_range():
    # the rational logistic (avx2_math.hpp): near ATen's relative error where x > -1, within 2.5e-6
    # in absolute terms below, where SiLU is small; 0 below -18
    x = torch.linspace(-1000, 1000, 2_000_001)
    y, exact = torch.ops.torchbridge.silu(x).double(), torch.nn.functional.silu(x.double())
    error = (y - exact).abs()
    assert error.max() <= 4e-6
    upper = x > -1
    assert (error[upper] / exact[upper].abs().clamp_min(1e-30)).max() <= 4e-7
    assert error[~upper].max() <= 2.5e-6
    assert torch.all(y[x < -18] == 0)


def test_the_silu_kernel_keeps_atens_special_values_and_passes_on_what_it_does_not_take():
    special = torch.tensor([float("-inf"), float("inf"), float("nan"), -100.0, 100.0, 0.0, -0.0, 3.0, -3.0] * 2)
    got, want = torch.ops.torchbridge.silu(special), torch.nn.functional.silu(special)
    assert torch.equal(got.isnan(), want.isnan())  # -inf gives NaN, as ATen's -inf / inf
    assert torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    assert (got[finite] - want[finite]).abs().max() <= 1e-6
    generator = torch.Generator().manual_seed(7)
    strided = torch.randn(64, 6, generator=generator).t()[:, ::2]
    for x in (strided, torch.randn(40, dtype=torch.float64, generator=generator)):
        assert torch.equal(torch.ops.torchbridge.silu(x), torch.nn.functional.silu(x))
    weight = torch.randn(8, requires_grad=True)
    assert torch.equal(torch.ops.torchbridge.silu(weight), torch.nn.functional.silu(weight))


@pytest.mark.parametrize(
    "shape", [(1, 144, 56, 56), (3, 13, 5, 7), (2, 1280, 7, 7), (1, 8, 1, 1), (5, 40, 9, 9), (1, 3, 300, 2)], ids=str
)
def test_the_global_average_pool_matches_aten_on_channels_last_input(shape):
    generator = torch.Generator().manual_seed(11)
    x = (torch.randn(shape, generator=generator) + 3).contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.adaptive_avg_pool2d(x.double(), 1)
    before = torch.get_num_threads()
    try:  # fewer images than threads split the channels: each channel summed alike anyway
        torch.set_num_threads(1)
        one = torch.ops.torchbridge.adaptive_avg_pool2d(x, [1, 1])
        torch.set_num_threads(2)
        two = torch.ops.torchbridge.adaptive_avg_pool2d(x, [1, 1])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    assert one.shape == (shape[0], shape[1], 1, 1) and one.dtype == torch.float32
    assert max_errors(one.double(), expected)[1] <= 1e-6


def test_the_global_average_pool_passes_on_what_it_does_not_take():
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(2, 16, 6, 6, generator=generator)
    cases = [
        (x, [1, 1]),  # NCHW
        (x.contiguous(memory_format=torch.channels_last), [2, 3]),  # another output size
        (x.double().contiguous(memory_format=torch.channels_last), [1, 1]),
        (x.contiguous(memory_format=torch.channels_last)[:, ::2], [1, 1]),  # not dense
        (torch.randn(16, 6, 6, generator=generator), [1, 1]),  # 3-d
    ]
    for tensor, size in cases:
        got = torch.ops.torchbridge.adaptive_avg_pool2d(tensor, size)
        assert torch.equal(got, torch.nn.functional.adaptive_avg_pool2d(tensor, size))
    special = x.contiguous(memory_format=torch.channels_last).clone()
    special[0, 3, 2, 2], special[1, 5, 0, 0] = float("nan"), float("inf")
    pooled = torch.ops.torchbridge.adaptive_avg_pool2d(special, [1, 1])
    assert pooled[0, 3].isnan().all() and pooled[1, 5].isinf().all() and pooled.isfinite().sum() == 30


@pytest.mark.parametrize(
    "shape", [(1, 24, 1, 1), (1, 24, 4, 4), (3, 24, 5, 7), (1, 24, 32, 32), (1, 24, 112, 112), (2, 24, 56, 60)], ids=str
)
def test_the_pointwise_conv_matches_conv2d_on_channels_last_pixels(shape):
    generator = torch.Generator().manual_seed(8)
    weight = torch.randn(37, 24, 1, 1, generator=generator).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(37, generator=generator)
    packed = torch.ops.torchbridge.pack_linear_weight(weight.reshape(37, 24).contiguous())
    x = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    for b in (bias, None):
        y = torch.ops.torchbridge.pointwise_conv(x, weight, packed, b)
        assert y.is_contiguous(memory_format=torch.channels_last)
        expected = torch.nn.functional.conv2d(x.double(), weight.double(), None if b is None else b.double())
        assert max_errors(y.double(), expected)[1] <= 1e-5


def test_what_the_pointwise_conv_does_not_take_is_conv2d_exactly():
    generator = torch.Generator().manual_seed(9)
    weight = torch.randn(37, 24, 1, 1, generator=generator).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(37, generator=generator)
    packed = torch.ops.torchbridge.pack_linear_weight(weight.reshape(37, 24).contiguous())
    assert _C.POINTWISE_MAX_PIXELS == 16384  # 112 x 112 pixels, a batch of one at 224 x 224
    pixels = _C.POINTWISE_MAX_PIXELS + 64  # more pixels than the packed GEMM takes for a 1x1 convolution
    many = torch.randn(1, 24, pixels // 64, 64, generator=generator).contiguous(memory_format=torch.channels_last)
    nchw = torch.randn(2, 24, 5, 7, generator=generator)
    for x, w, b in ((many, weight, bias), (nchw, weight, bias), (nchw.double(), weight.double(), bias.double())):
        assert torch.equal(torch.ops.torchbridge.pointwise_conv(x, w, packed, b), torch.nn.functional.conv2d(x, w, b))


def depthwise(x, conv: nn.Conv2d, bias=True):
    weight = conv.weight.detach().contiguous()
    packed = torch.ops.torchbridge.pack_depthwise_weight(weight.float())
    b = conv.bias.detach() if bias else None
    return torch.ops.torchbridge.depthwise_conv(x, weight, packed, b, list(conv.stride), list(conv.padding))


# (channels, image height, width, kernel, stride, padding): 24 channels run a block of 16 and one of
# 8 (in AVX-512 at stride 1, a full register and a masked one); images smaller than the kernel's
# reach, with edge columns only, and wide enough for tiles of four (of eight at stride 1 with 3 or 5
# tap columns, then one of the 1 to 7 left); stride 1 with 5 tap columns on images of up to 400
# pixels with their padding (copied into a zero-bordered block: 7x7, 14x14, 6x29) and of more (row
# by row: 19x21; and 20x23 with 3 tap columns, row by row at any size); the last, at batch 3 (9.2
# MB), large enough that the kernel prefetches the input rows ahead.
DEPTHWISE_CASES = [
    (24, 14, 14, 3, 1, 1),
    (24, 7, 7, 5, 1, 2),
    (40, 14, 14, 5, 1, 2),
    (24, 20, 23, 3, 1, 1),
    (16, 19, 21, 5, 1, 2),
    (8, 7, 9, 5, 2, 2),
    (48, 3, 3, 5, 1, 2),
    (16, 1, 1, 3, 1, 1),
    (32, 11, 16, 3, 2, 0),
    (40, 9, 30, (3, 5), (1, 2), (1, 2)),
    (16, 6, 29, 5, 1, 2),
    (8, 4, 35, 3, 1, 1),
    (32, 120, 200, 3, 2, 1),
]


@needs_kernel
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=str)
def test_the_depthwise_conv_matches_conv2d_on_channels_last_input(case):
    channels, h, w, kernel, stride, padding = case
    generator = torch.Generator().manual_seed(10)
    conv = nn.Conv2d(channels, channels, kernel, stride, padding, groups=channels).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator))
    for batch in (1, 3):
        x = torch.randn(batch, channels, h, w, generator=generator).contiguous(memory_format=torch.channels_last)
        for bias in (True, False):
            with torch.inference_mode():
                y = depthwise(x, conv, bias)
                expected = torch.nn.functional.conv2d(
                    x.double(), conv.weight.double(), conv.bias.double() if bias else None, stride, padding,
                    groups=channels,
                )
            assert y.shape == expected.shape and y.is_contiguous(memory_format=torch.channels_last)
            assert max_errors(y.double(), expected)[1] <= 1e-5
        # each output summed the same way at any thread count; NaN goes where conv2d's goes
        poisoned = x.clone()
        poisoned[0, :, h // 2, w // 2] = float("nan")
        with torch.inference_mode():
            before = torch.get_num_threads()
            try:
                torch.set_num_threads(1)
                one = depthwise(poisoned, conv)
                torch.set_num_threads(2)
                two = depthwise(poisoned, conv)
            finally:
                torch.set_num_threads(before)
            assert torch.equal(one.isnan(), conv(poisoned).isnan())
        assert torch.equal(one.nan_to_num(), two.nan_to_num()) and torch.equal(one.isnan(), two.isnan())


def test_what_the_depthwise_conv_does_not_take_is_conv2d_exactly():
    generator = torch.Generator().manual_seed(11)
    conv = nn.Conv2d(24, 24, 3, padding=1, groups=24).eval()
    odd = nn.Conv2d(12, 12, 3, padding=1, groups=12).eval()  # channels not a multiple of 8
    wide = nn.Conv2d(24, 24, 3, padding=3, groups=24).eval()  # padding past the kernel
    x = torch.randn(2, 24, 6, 7, generator=generator)
    doubles = nn.Conv2d(24, 24, 3, padding=1, groups=24).double()
    with torch.inference_mode():
        for module, inputs in (
            (conv, x),  # not channels-last
            (doubles, x.double().contiguous(memory_format=torch.channels_last)),
            (odd, torch.randn(1, 12, 5, 5, generator=generator).contiguous(memory_format=torch.channels_last)),
            (wide, x.contiguous(memory_format=torch.channels_last)),
        ):
            assert torch.equal(depthwise(inputs, module), module(inputs))
    grad = torch.randn(1, 24, 5, 5, requires_grad=True).contiguous(memory_format=torch.channels_last)
    assert torch.equal(depthwise(grad, conv), conv(grad))


def test_a_depthwise_weight_that_is_not_finite_stays_with_conv2d():
    # The kernel may add a tap in the padding as zero times its weight: inf there would make NaN.
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 5, padding=2, groups=8)).eval()
    with torch.no_grad():
        model[1].weight[3, 0, 0, 0] = float("inf")
    graph = torch.jit.freeze(torch.jit.script(model)).graph
    assert rewrite_channels_last(graph) == 1
    kinds = [node.kind() for node in graph.nodes()]
    assert kinds.count("torchbridge::depthwise_conv") == 1 and kinds.count("aten::conv2d") == 1


# (out channels, in channels, kernel, stride, padding, height, width): EfficientNet's and
# MobileNetV3's first convolutions (one panel of 16 and two), a last panel of 8 or 4 columns, one
# channel, stride 1, images where every pixel or none has a tap in the padding, and four channels
# at stride 3 (more taps than the pass gives it, the operator takes any).
STEM_CASES = [
    (32, 3, 3, 2, 1, 30, 31),
    (16, 3, 3, 2, 1, 17, 16),
    (24, 3, 3, 2, 1, 9, 9),
    (20, 1, 3, 1, 1, 8, 8),
    (8, 3, 3, 1, 0, 3, 20),
    (16, 2, 3, 2, 2, 4, 4),
    (40, 4, 5, 3, 2, 17, 13),
]


@needs_kernel
@pytest.mark.parametrize("case", STEM_CASES, ids=str)
def test_the_stem_conv_matches_conv2d_in_either_layout(case):
    out_channels, channels, kernel, stride, padding, h, w = case
    generator = torch.Generator().manual_seed(12)
    weight = torch.randn(out_channels, channels, kernel, kernel, generator=generator)
    bias = torch.randn(out_channels, generator=generator)
    packed = torch.ops.torchbridge.pack_stem_weight(weight)
    for batch in (1, 3):
        x = torch.randn(batch, channels, h, w, generator=generator)
        for layout in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, : w - 1]):
            for b in (bias, None):
                with torch.inference_mode():
                    y = torch.ops.torchbridge.stem_conv(layout, weight, packed, b, [stride] * 2, [padding] * 2)
                expected = torch.nn.functional.conv2d(
                    layout.double(), weight.double(), b.double() if b is not None else None, stride, padding
                )
                assert y.shape == expected.shape and y.is_contiguous(memory_format=torch.channels_last)
                assert max_errors(y.double(), expected)[1] <= 1e-5
    # each output summed the same way at any thread count; NaN goes where conv2d's goes
    poisoned = torch.randn(2, channels, h, w, generator=generator)
    poisoned[1, 0, h // 2, w // 2] = float("nan")
    before = torch.get_num_threads()
    with torch.inference_mode():
        try:
            torch.set_num_threads(1)
            one = torch.ops.torchbridge.stem_conv(poisoned, weight, packed, bias, [stride] * 2, [padding] * 2)
            torch.set_num_threads(2)
            two = torch.ops.torchbridge.stem_conv(poisoned, weight, packed, bias, [stride] * 2, [padding] * 2)
        finally:
            torch.set_num_threads(before)
        assert torch.equal(one.isnan(), torch.nn.functional.conv2d(poisoned, weight, bias, stride, padding).isnan())
    assert torch.equal(one.nan_to_num(), two.nan_to_num()) and torch.equal(one.isnan(), two.isnan())


def test_the_channels_last_pass_gives_stem_conv_only_a_first_convolution_of_few_taps():
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),  # EfficientNet's: stem_conv
        nn.Conv2d(16, 8, 3, padding=1),  # 16 input channels: conv2d
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
    ).eval()
    wide = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3)).eval()  # ResNet's: 147 taps, oneDNN's
    dilated = nn.Sequential(nn.Conv2d(3, 16, 3, dilation=2)).eval()
    counts = []
    for module in (model, wide, dilated):
        scripted = torch.jit.script(module)
        for parameter in scripted.parameters():  # as the variant has them
            if parameter.dim() == 4:
                parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
        graph = torch.jit.freeze(scripted).graph
        rewrite_channels_last(graph)
        kinds = [node.kind() for node in graph.nodes()]
        counts.append((kinds.count("torchbridge::stem_conv"), kinds.count("aten::conv2d")))
    assert counts == [(1, 1), (0, 1), (0, 1)]
    assert (_C.STEM_MAX_CHANNELS, _C.STEM_MAX_TAPS) == (4, 36)


class SiLUNet(nn.Module):
    """Convolutions with SiLU in place (as torchvision's EfficientNet has them) and not, a depthwise
    and a 1x1 convolution, and a linear head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.SiLU(), nn.Conv2d(16, 24, 1),
        )
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        return self.head(nn.functional.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def test_the_channels_last_variant_runs_its_kernels_and_matches_its_mirror(tmp_path, monkeypatch):
    model = seeded(SiLUNet).eval()
    path = tmp_path / "silu.pt"
    export_with_order(model, (digits(4),), path, ["channels_last", "as_loaded"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.optimization.startswith("freeze+channels_last (variant order measured at export)")
    graph = torch.jit.freeze(torch.jit.load(path).eval()).graph
    before = [node.kind() for node in graph.nodes()]
    assert rewrite_channels_last(graph) == 7, before
    kinds = [node.kind() for node in graph.nodes()]
    assert kinds.count("torchbridge::adaptive_avg_pool2d") == 1 and "aten::adaptive_avg_pool2d" not in kinds
    assert kinds.count("torchbridge::silu_") == kinds.count("torchbridge::silu") == 1
    assert kinds.count("torchbridge::pointwise_conv") == kinds.count("torchbridge::depthwise_conv") == 1
    assert kinds.count("torchbridge::packed_linear") == 1 and "aten::linear" not in kinds  # the head
    assert kinds.count("torchbridge::stem_conv") == 1 and "aten::conv2d" not in kinds  # the first, of 1 channel
    assert "aten::silu" not in kinds and "aten::silu_" not in kinds
    rowwise = torch.jit.freeze(torch.jit.load(path).eval()).graph
    assert rewrite_rowwise(rowwise) == 1  # the linear head; "rowwise" leaves the SiLUs to ATen
    assert [node.kind() for node in rowwise.nodes()].count("aten::silu_") == 1
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    with torch.inference_mode():
        # 8x8 digits: 64 pixels an image, so batch 17 is past kPackedMaxRows (conv2d there on AVX-512)
        for batch in (1, 5, 17):
            x = digits(batch)
            y = runtime(x)
            assert runtime.variant_at(x) == "channels_last"
            assert torch.equal(y, mirror(x)), f"batch {batch}"
            assert max_errors(y, model(x))[1] <= 1e-5
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed
