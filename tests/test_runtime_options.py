"""The C++ runtime's load-time speed options: optimization on by default, off on request,
reduced precision, and the fallbacks when a model cannot be optimized."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

import torchbridge as tb
from conftest import THREADS, digits, run_cli, seeded
from torchbridge import _C
from torchbridge.mirror import load_in_python


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    model = seeded(tb.models.digits_cnn)
    path = tmp_path_factory.mktemp("options") / "cnn.pt"
    tb.export(model, (digits(4),), path, tune=False)  # the runtime's built-in variant order (test_tune.py: measured)
    return model, path


def test_float_torchscript_is_optimized_by_default_and_matches_python_exactly(cnn):
    model, path = cnn
    runtime = tb.Runtime(path, threads=THREADS)
    # Export times both modules and records from which batch size the optimized one is faster
    # (the digits CNN: from batch 4 or so; ResNet-18: always); the runtime follows the manifest.
    assert runtime.optimized
    assert runtime.optimization.startswith("freeze+onednn_graph")
    assert 1 <= runtime.optimized_from_batch <= 64
    assert runtime.optimized_from_batch == runtime.manifest["runtime"]["optimize_from_batch"]
    x = digits(64)
    y = runtime(x)
    # Folding BatchNorm into the convolutions changes rounding: within the manifest's tolerance of
    # eager, and bit-identical to the same passes run by torch in Python.
    tolerance = runtime.manifest["tolerance"]
    with torch.inference_mode():
        torch.testing.assert_close(y, model.eval()(x), rtol=tolerance["rtol"], atol=tolerance["atol"])
        _, mirror = load_in_python(path, runtime.optimized_from_batch)
        assert torch.equal(y, mirror(x))
        small = digits(1)
        assert torch.equal(runtime(small), mirror(small))
        if runtime.optimized_from_batch > 1:  # below it: the module as loaded, bit for bit
            _, loaded = load_in_python(path)
            assert torch.equal(runtime(small), loaded(small))
    report = tb.verify(model, path, threads=THREADS, cli=False)
    assert report.passed


def test_every_input_shape_matches_the_python_mirror_bit_for_bit(cnn):
    """oneDNN Graph compiles per input shape for the first FUSED_SHAPES shapes (the runtime's
    warm-up took the golden batch, batch 1 and 3), optimize_for_inference runs the shapes after
    them: the Python mirror runs what the runtime chose at each shape with the same LibTorch, so
    every batch size is exact."""
    _, path = cnn
    runtime = tb.Runtime(path, threads=THREADS, warmup_batches=[3])
    _, mirror = load_in_python(path, runtime.optimized_from_batch, runtime=runtime)
    variants = []
    with torch.inference_mode():
        for batch in range(1, _C.FUSED_SHAPES + 3):
            x = digits(batch)
            assert torch.equal(runtime(x), mirror(x)), f"batch {batch}"
            assert torch.equal(runtime(x), mirror(x)), f"batch {batch}, second call"
            variants.append(runtime.variant_at(x))
            assert mirror.variant_at(x) in (variants[-1], None), f"batch {batch}"  # None: as loaded
    below = runtime.optimized_from_batch - 1  # batches below it run as loaded
    assert set(variants[:below]) <= {"as_loaded"}
    # Ten shapes from batch 1 (the golden batch among them): the first eight met get oneDNN Graph.
    assert variants[below:].count("onednn_graph") == min(_C.FUSED_SHAPES, len(variants) - below)
    if below == 0:
        assert variants[-1] == "optimize_for_inference"


def test_fuse_off_runs_optimize_for_inference_and_matches_its_mirror(cnn):
    _, path = cnn
    runtime = tb.Runtime(path, threads=THREADS, fuse=False)
    assert runtime.optimization.startswith("freeze+optimize_for_inference")
    _, mirror = load_in_python(path, runtime.optimized_from_batch, fuse=False)
    with torch.inference_mode():
        for batch in (1, 5, 64):
            x = digits(batch)
            assert torch.equal(runtime(x), mirror(x)), f"batch {batch}"
    assert all(variant == "optimize_for_inference" for variant, _ in mirror.by_shape.values())


def test_optimize_off_runs_the_module_as_loaded(cnn):
    _, path = cnn
    runtime = tb.Runtime(path, threads=THREADS, optimize=False)
    assert not runtime.optimized
    assert runtime.optimization == "none (optimize off)"
    x = digits(8)
    _, loaded = load_in_python(path)
    with torch.inference_mode():
        assert torch.equal(runtime(x), loaded(x))


def test_the_memory_pool_serves_repeated_calls_and_changes_no_output(cnn):
    """reuse_memory (the default on the CPU) keeps forward's large blocks for the next call: a
    repeated call takes nothing new from the system, and every output equals a runtime without it."""
    _, path = cnn
    pooled = tb.Runtime(path, threads=THREADS)
    plain = tb.Runtime(path, threads=THREADS, reuse_memory=False)
    assert pooled.options.reuse_memory and not plain.options.reuse_memory
    x = digits(64)
    expected = plain(x)
    assert torch.equal(pooled(x), expected)
    before = pooled.memory_pool_stats()
    for _ in range(3):
        assert torch.equal(pooled(x), expected)
    after = pooled.memory_pool_stats()
    assert after["misses"] == before["misses"]
    assert after["hits"] >= before["hits"] + 3
    # The outputs above are gone; what stays in use is the runtime's own (weights oneDNN reordered
    # at the first call at a shape, say).
    assert after["in_use"] == before["in_use"]
    assert 0 < after["cached"] <= 2 * after["peak"]
    assert plain.memory_pool_stats() == {"in_use": 0, "cached": 0, "peak": 0, "hits": 0, "misses": 0}
    kept = pooled(x)
    del pooled  # the pool closes; the output it holds stays valid
    assert torch.equal(kept, expected)


def test_a_python_memory_pool_serves_this_threads_large_allocations_inside_with_only():
    """_C.MemoryPool, which export times the variants in: the pool Runtime.forward uses, opened
    around any code on this thread."""
    pool = _C.MemoryPool()
    with pool:
        first = torch.empty(1 << 20)  # 4 MiB: a new block
        del first
        second = torch.ones(1 << 20)  # the same block again
    assert pool.stats() == {"in_use": 4 << 20, "cached": 0, "peak": 4 << 20, "hits": 1, "misses": 1}
    outside = torch.ones(1 << 20)  # after the with: LibTorch's own allocator
    assert pool.stats()["hits"] + pool.stats()["misses"] == 2
    del second
    assert pool.stats()["in_use"] == 0 and float(outside.sum()) == 1 << 20


def test_cli_reports_the_optimization_and_can_turn_it_off(cnn):
    _, path = cnn
    default = json.loads(run_cli(path, "--json", "--threads", str(THREADS)).stdout)
    assert default["optimization"].startswith("freeze+onednn_graph")
    unfused = json.loads(run_cli(path, "--json", "--no-fuse", "--threads", str(THREADS)).stdout)
    assert unfused["optimization"].startswith("freeze+optimize_for_inference")
    plain = json.loads(run_cli(path, "--json", "--no-optimize", "--threads", str(THREADS)).stdout)
    assert plain["optimization"] == "none (optimize off)"
    unpooled = run_cli(path, "--json", "--no-reuse-memory", "--threads", str(THREADS))
    assert unpooled.returncode == 0, unpooled.stderr
    bad = run_cli(path, "--precision", "int4")
    assert bad.returncode == 2
    assert "precision must be fp32, bf16 or fp16" in bad.stderr


def test_bf16_precision_keeps_float32_outputs_close_to_fp32(cnn):
    model, path = cnn
    runtime = tb.Runtime(path, threads=THREADS, precision="bf16")
    assert runtime.precision == "bf16"
    assert runtime.optimization == "freeze+onednn_graph"
    assert tb.Runtime(path, threads=THREADS, precision="bf16", fuse=False).optimization == "freeze+channels_last"
    x = digits(32)
    y = runtime(x)
    assert y.dtype == torch.float32
    with torch.inference_mode():
        expected = model.eval()(x)
    # bfloat16 keeps 8 bits of mantissa: logits move by about 1e-2 of their scale.
    assert float((y - expected).abs().max()) <= 5e-2 * float(expected.abs().max())
    assert int((y.argmax(1) == expected.argmax(1)).sum()) >= 30


class Counter(nn.Module):
    """Mutates an attribute in forward: freezing must keep it an attribute, not fold it."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * float(self.calls > 0)


def test_a_module_with_mutable_state_survives_optimization(tmp_path):
    model = seeded(Counter)
    path = tmp_path / "counter.pt"
    tb.export(model, (torch.randn(2, 4),), path, method="script")
    runtime = tb.Runtime(path, threads=THREADS)
    # Either optimized (whichever variant export measured fastest here), or run as loaded with the
    # reason; the outputs are right in both cases.
    assert runtime.optimization.startswith(("freeze", "none ("))
    x = torch.randn(5, 4)
    with torch.inference_mode():
        torch.testing.assert_close(runtime(x), model.eval()(x))
    assert tb.verify(model, path, threads=THREADS, cli=False).passed


def test_quantized_artifacts_run_as_exported(tmp_path):
    model = seeded(tb.models.digits_mlp)
    int8 = tb.quantize(model, mode="dynamic")
    path = tmp_path / "mlp_int8.pt"
    tb.export(int8, (digits(4),), path)
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.optimization.startswith("none (quantized artifact")
    with pytest.raises(tb.TorchbridgeError, match="applies to float TorchScript artifacts"):
        tb.Runtime(path, threads=THREADS, precision="bf16")


def test_export_times_the_optimized_module_and_the_runtime_follows(tmp_path, monkeypatch):
    """Export measures what the runtime runs (RuntimeMirror: freeze + oneDNN Graph per shape)
    against the module as loaded; here the optimized one is made slow on purpose, so it must lose at
    every batch size and the runtime must then run the module as loaded (deterministically, in
    every process)."""
    import time

    mirror = sys.modules["torchbridge.mirror"].RuntimeMirror
    real = mirror.__call__

    def slow(self, *inputs):
        time.sleep(0.05)  # far beyond what the module as loaded takes, even on a busy machine
        return real(self, *inputs)

    monkeypatch.setattr(mirror, "__call__", slow)
    path = tmp_path / "mlp.pt"
    artifact = tb.export(seeded(tb.models.digits_mlp), (digits(4),), path, tune=False)
    monkeypatch.undo()
    assert artifact.manifest["runtime"]["optimize_from_batch"] == 0
    runtime = tb.Runtime(path, threads=THREADS)
    assert not runtime.optimized
    assert runtime.optimized_from_batch == 0
    assert runtime.optimization == "none (freeze+onednn_graph measured slower at export)"
    x = digits(8)
    _, loaded = load_in_python(path)
    with torch.inference_mode():
        assert torch.equal(runtime(x), loaded(x))
