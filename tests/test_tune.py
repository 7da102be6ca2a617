"""Export times the C++ runtime's CPU variants of a model and records them fastest first
(manifest runtime.variants); the runtime tries them in that order at each input shape, each still
checked against the module as loaded there, and the Python mirror follows bit for bit."""

from __future__ import annotations

import functools
import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

import torchbridge as tb
from conftest import THREADS, digits, seeded
from torchbridge import _C
from torchbridge.compare import max_errors
from torchbridge.mirror import CPU_VARIANTS, load_in_python


def export_with_order(model, example, path, order, monkeypatch, export_options=None, **fields):
    """Export with the measurement replaced by a fixed order (and other runtime `fields`), from
    batch 1 (what the runtime does with an order is under test here, not which variant this machine
    finds fastest); `export_options` go to tb.export."""
    module = sys.modules["torchbridge.export"]
    measured = {"variants": order, "measured": {}, **fields}
    monkeypatch.setattr(module, "_measure_variants", lambda *a, **k: measured)
    monkeypatch.setattr(module, "_optimize_from_batch", lambda *a, **k: 1)  # every batch size runs the order
    artifact = tb.export(model, example, path, **(export_options or {}))
    monkeypatch.undo()
    return artifact


def test_export_times_every_variant_and_the_runtime_tries_them_in_that_order(tmp_path):
    model = seeded(tb.models.digits_cnn)
    artifact = tb.export(model, (digits(4),), tmp_path / "cnn.pt")
    runtime_fields = artifact.manifest["runtime"]
    order, measured = runtime_fields["variants"], runtime_fields["measured"]
    timed = [v for v in CPU_VARIANTS if v != "rowwise" or _C.rowwise_available()]
    assert sorted(order) == sorted(["as_loaded", *timed])
    # batch 32, or less where one call would take over TUNE_CALL_S there (a loaded machine)
    assert measured["batches"][0] == 1 and 2 <= measured["batches"][1] <= 32 and measured["threads"] >= 1
    rejected = measured.get("rejected", {})  # a variant that raised or differed on this CPU: last, untimed
    for variant, times in measured["p50_ms"].items():
        assert len(times) == 2 and (variant in rejected or all(t > 0 for t in times)), measured
    assert all(order.index(v) > order.index("as_loaded") for v in rejected), order

    runtime = tb.Runtime(artifact.path, threads=THREADS)
    tried = order[: order.index("as_loaded")]
    large = runtime_fields.get("large_batches")
    if large:  # batch 32 measured another variant fastest: it runs from where the two cross
        assert 2 <= large["from"] <= 32 and large["variants"][0] != order[0], runtime_fields
    if not tried:
        assert runtime.optimization == "none (the module as loaded measured fastest at export)"
    else:
        assert runtime.optimization.startswith("freeze") and "variant order measured at export" in runtime.optimization
    _, mirror = load_in_python(artifact.path, runtime.optimized_from_batch, runtime=runtime)
    _, unlinked = load_in_python(artifact.path, runtime.optimized_from_batch)  # its own choice, same order
    with torch.inference_mode():
        for batch in (1, 8, 20):
            x = digits(batch)
            y = runtime(x)
            assert torch.equal(y, mirror(x)) and torch.equal(y, unlinked(x)), f"batch {batch}"
            assert max_errors(y, model(x))[1] <= 1e-5
            expected = tried
            if large and batch >= large["from"]:
                expected = large["variants"][: large["variants"].index("as_loaded")] or ["as_loaded"]
            if expected and batch >= max(runtime.optimized_from_batch, 1):
                assert runtime.variant_at(x) == expected[0], (batch, runtime_fields, runtime.optimization)


def test_export_times_the_variants_in_a_memory_pool(tmp_path, monkeypatch):
    """The runtime runs forward in a memory pool (reuse_memory): export times the variants in one
    too, or a large batch's ranking would follow how each variant allocates (page faults)."""
    pools, real = [], _C.MemoryPool

    def recording():
        pools.append(real())
        return pools[-1]

    monkeypatch.setattr(_C, "MemoryPool", recording)
    monkeypatch.setattr(sys.modules["torchbridge.export"], "TUNE_CALL_S", 1e9)  # batch 32 even on a busy machine
    artifact = tb.export(seeded(tb.models.digits_cnn), (digits(4),), tmp_path / "cnn.pt")
    assert artifact.manifest["runtime"]["measured"]["batches"] == [1, 32]
    assert pools and any(pool.stats()["hits"] > 0 for pool in pools)  # the large batch's activations reused


def test_export_times_each_variant_in_turns_of_several_calls(tmp_path, monkeypatch):
    """One call per turn times a model whose weights fill the caches cold every time (the other
    variants' weights evicted them), while the runtime serves it warm: each turn's first calls, for
    RANKING_WARM_S, are not recorded, and a small model's turn times calls for about as long."""
    import torchbridge.timing as timing

    turns, real = [], timing.time_interleaved

    def recording(paths, runs, warmup, block=1, warm_s=0.0):
        turns.append((block, warm_s))
        samples = real(paths, runs, warmup, block, warm_s)
        assert all(len(values) == runs for values in samples.values()) and runs >= 3 * (block - 1)
        return samples

    monkeypatch.setattr(timing, "time_interleaved", recording)
    tb.export(seeded(tb.models.digits_mlp), (digits(4).reshape(4, -1),), tmp_path / "mlp.pt")
    assert turns and all(block >= timing.RANKING_TURN > 1 and warm == timing.RANKING_WARM_S for block, warm in turns)
    assert any(block > timing.RANKING_TURN for block, _ in turns)  # a call of this MLP takes well under 5 ms
    assert timing.ranking_turn(1000.0) == timing.RANKING_TURN
    assert timing.ranking_turn(0.1) == 1 + round(timing.RANKING_WARM_S * 1000 / 0.1)


def test_channels_last_runs_4d_inputs_in_that_layout_and_matches_its_mirror(tmp_path, monkeypatch):
    model = seeded(tb.models.digits_cnn)
    path = tmp_path / "cnn.pt"
    export_with_order(model, (digits(4),), path, ["channels_last", "as_loaded", "onednn_graph"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.optimization.startswith("freeze+channels_last (variant order measured at export)")
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    with torch.inference_mode():
        for batch in (1, 6, 32):
            x = digits(batch)
            y = runtime(x)
            assert runtime.variant_at(x) == "channels_last"
            assert y.is_contiguous()
            assert torch.equal(y, mirror(x)), f"batch {batch}"
            assert max_errors(y, model(x))[1] <= 1e-5
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed
    done = subprocess.run([str(tb.runtime.cli_path()), str(path), "--selftest"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class FlattensWithView(nn.Module):
    """x.view() needs the contiguous layout: it raises on a channels-last input (of more than one
    channel: with one, the two layouts are the same strides)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.shape[0], -1))


def test_a_variant_that_raises_gives_way_to_the_next_in_the_measured_order(tmp_path, monkeypatch, capfd):
    model = seeded(FlattensWithView).eval()
    path = tmp_path / "view.pt"
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    export_with_order(model, (images[:4],), path, ["channels_last", "frozen", "as_loaded"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    assert "channels_last raised" in capfd.readouterr().err
    x = images
    with torch.inference_mode():
        y = runtime(x)
        assert runtime.variant_at(x) == "frozen"
        assert "channels_last raised" in runtime.optimization and ": frozen (" in runtime.optimization
        assert max_errors(y, model(x))[1] <= 1e-5
        _, mirror = load_in_python(path, runtime.optimized_from_batch)
        assert torch.equal(y, mirror(x))


def test_as_loaded_measured_fastest_runs_the_module_as_loaded(tmp_path, monkeypatch):
    model = seeded(tb.models.digits_mlp)
    path = tmp_path / "mlp.pt"
    export_with_order(model, (digits(4),), path, ["as_loaded", "onednn_graph", "frozen"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    assert not runtime.optimized
    assert runtime.optimization == "none (the module as loaded measured fastest at export)"
    _, loaded = load_in_python(path)
    _, mirror = load_in_python(path, 1)
    x = digits(8)
    with torch.inference_mode():
        assert torch.equal(runtime(x), loaded(x)) and torch.equal(runtime(x), mirror(x))


def test_unknown_names_are_skipped_and_no_tune_keeps_the_builtin_order(tmp_path, monkeypatch):
    model = seeded(tb.models.digits_cnn)
    path = tmp_path / "cnn.pt"
    export_with_order(model, (digits(4),), path, ["a_future_variant", "frozen", "as_loaded"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS)
    assert runtime.optimization.startswith("freeze (variant order measured at export)")
    x = digits(16)
    with torch.inference_mode():
        runtime(x)
    assert runtime.variant_at(x) == "frozen"

    untuned = tb.export(model, (digits(4),), tmp_path / "untuned.pt", tune=False)
    assert "variants" not in untuned.manifest["runtime"]
    assert tb.Runtime(untuned.path, threads=THREADS).optimization.startswith("freeze+onednn_graph")


@pytest.mark.parametrize("fuse", [True, False])
def test_runtime_fuse_off_drops_onednn_graph_from_the_measured_order(tmp_path, monkeypatch, fuse):
    model = seeded(tb.models.digits_cnn)
    path = tmp_path / "cnn.pt"
    export_with_order(model, (digits(4),), path, ["onednn_graph", "frozen", "as_loaded"], monkeypatch)
    runtime = tb.Runtime(path, threads=THREADS, fuse=fuse)
    x = digits(16)
    with torch.inference_mode():
        runtime(x)
    assert runtime.variant_at(x) == ("onednn_graph" if fuse else "frozen")


@pytest.mark.parametrize("variant", ["channels_last", "rowwise"])
def test_a_crash_found_at_export_takes_the_variant_out_of_the_order(tmp_path, monkeypatch, variant):
    """Export's first runtime check runs the built-in order; when the measured order tries a variant
    outside it (channels-last, rowwise), the artifact is run once more in torchbridge-run,
    and a crash there takes that variant out of the order (the user's process never runs it)."""
    model = seeded(tb.models.digits_cnn)
    path = tmp_path / "cnn.pt"
    monkeypatch.setenv("TORCHBRIDGE_PLANT_FAILURE", f"{variant}=crash")
    art = export_with_order(model, (digits(4),), path, [variant, "frozen", "as_loaded"], monkeypatch)
    assert art.manifest["runtime"]["variants"] == ["frozen", "as_loaded"]
    assert any(f"crashed (SIGSEGV) with the {variant} variant" in note for note in art.manifest["notes"])
    runtime = tb.Runtime(path, threads=THREADS)  # would die at the planted crash
    x = digits(8)
    with torch.inference_mode():
        assert max_errors(runtime(x), model(x))[1] <= 1e-5
    assert runtime.variant_at(x) == "frozen"


def test_large_batches_follow_their_own_measured_order(tmp_path, monkeypatch):
    """Export measured another variant fastest at batch 32 than at batch 1: batches from where the
    two cross try the large batch's order (its own variants, or the module as loaded)."""
    model = seeded(tb.models.digits_cnn)
    path = tmp_path / "cnn.pt"
    large = {"from": 8, "variants": ["channels_last", "frozen", "as_loaded"]}
    export_with_order(model, (digits(4),), path, ["frozen", "as_loaded"], monkeypatch, large_batches=large)
    runtime = tb.Runtime(path, threads=THREADS)
    assert "(variant order measured at export; from batch 8: channels_last)" in runtime.optimization
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    with torch.inference_mode():
        for batch, variant in ((1, "frozen"), (7, "frozen"), (8, "channels_last"), (20, "channels_last")):
            x = digits(batch)
            y = runtime(x)
            assert runtime.variant_at(x) == variant, batch
            assert torch.equal(y, mirror(x)), f"batch {batch}"
            assert max_errors(y, model(x))[1] <= 1e-5
    assert tb.verify(model, path, threads=THREADS, fresh=1).passed

    as_loaded = {"from": 4, "variants": ["as_loaded", "frozen"]}
    path = tmp_path / "as_loaded_from_4.pt"
    export_with_order(model, (digits(4),), path, ["frozen", "as_loaded"], monkeypatch, large_batches=as_loaded)
    runtime = tb.Runtime(path, threads=THREADS)
    assert "from batch 4: as_loaded)" in runtime.optimization
    _, mirror = load_in_python(path, runtime.optimized_from_batch)
    with torch.inference_mode():
        for batch, variant in ((3, "frozen"), (4, "as_loaded"), (16, "as_loaded")):
            x = digits(batch)
            assert torch.equal(runtime(x), mirror(x)) and runtime.variant_at(x) == variant, batch


def test_the_orders_split_where_the_two_fastest_cross():
    from torchbridge.export import _crossing

    # oneDNN Graph: 2 ms at batch 1, 34 at 32; freeze: 1 and 65: equal at batch 2 and beyond.
    assert _crossing([1.0, 65.0], [2.0, 34.0], [1, 32]) == 2
    # 1.0 + 1.0 * (b - 1) vs 1.5 + 0.9 * (b - 1): equal at b = 6.
    assert _crossing([1.0, 32.0], [1.5, 29.4], [1, 32]) == 6
    assert _crossing([1.0, 2.0], [1.0, 1.0], [1, 32]) == 2  # a tie at batch 1
    assert _crossing([1.0, 10.0], [1.2, 9.0], [1, 4]) <= 4  # a heavy model timed at batch 4


def test_variants_timed_close_to_the_fastest_are_timed_again_among_themselves():
    """A busy moment in the first few turns can put a slower variant first: the variants within
    RANKING_CLOSE of the fastest get more turns, the others keep their first times."""
    import time

    from torchbridge.export import RANKING_CLOSE, _settle_close

    calls = {name: functools.partial(time.sleep, ms / 1000.0) for name, ms in (("fast", 2), ("slow", 3), ("far", 9))}
    # The first turns, disturbed: "slow" looked fastest, "fast" within RANKING_CLOSE of it.
    first = {"fast": [2.2, 2.1, 2.2], "slow": [2.0, 2.0, 2.0], "far": [9.1, 9.0, 9.2]}
    assert 2.2 <= 2.0 * (1 + RANKING_CLOSE)
    settled = _settle_close(calls, first)
    assert settled["far"] == first["far"]
    for name in ("fast", "slow"):
        assert settled[name][:3] == first[name] and len(settled[name]) > 3 * len(first[name])
    assert statistics.median(settled["fast"]) < statistics.median(settled["slow"]), settled
    alone = {"fast": [2.0], "far": [9.0]}
    assert _settle_close(calls, alone) == alone  # nothing close: nothing timed again


def test_the_frozen_variant_matches_its_mirror_exactly(tmp_path, monkeypatch):
    """The runtime freezes at load, outside inference mode, and the mirror must too: an
    nn.TransformerDecoder frozen under inference mode rounds differently, and verify's
    TorchScript-vs-C++ check is exact."""
    layer = lambda: nn.TransformerDecoderLayer(64, 4, dim_feedforward=128, batch_first=True)  # noqa: E731
    model = seeded(lambda: nn.TransformerDecoder(layer(), num_layers=2))
    generator = torch.Generator().manual_seed(0)
    example = (torch.randn(2, 16, 64, generator=generator), torch.randn(2, 24, 64, generator=generator))
    path = tmp_path / "decoder.pt"
    export_with_order(model, example, path, ["frozen", "as_loaded"], monkeypatch)
    report = tb.verify(model, path, threads=THREADS, fresh=2, cli=False, raise_on_failure=False)
    assert report.passed, report.table()
    runtime = tb.Runtime(path, threads=THREADS)
    with torch.inference_mode():
        runtime(*example)
    assert runtime.variant_at(*example) == "frozen"


@pytest.mark.parametrize("variant", ["optimize_for_inference", "onednn_graph"])
def test_variants_made_within_a_call_match_their_mirror_exactly(tmp_path, monkeypatch, variant):
    """The runtime makes these from a clone of its frozen module within a call, in inference mode;
    nn.MultiheadAttention's module made so rounds differently from one frozen outside it, and the
    mirror must make it the same way for verify's exact check."""
    model = seeded(lambda: nn.MultiheadAttention(64, 4, batch_first=True))
    generator = torch.Generator().manual_seed(0)
    example = tuple(torch.randn(2, n, 64, generator=generator) for n in (16, 24, 24))
    path = tmp_path / "mha.pt"
    export_with_order(model, example, path, [variant, "as_loaded"], monkeypatch)
    report = tb.verify(model, path, threads=1, fresh=2, cli=False, raise_on_failure=False)
    assert report.passed, report.table()
