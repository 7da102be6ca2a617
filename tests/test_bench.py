"""tb.bench / `torchbridge bench`: every path side by side, its files, and its errors (about 50 s on 2 cores)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time

import pytest

import torchbridge as tb
from conftest import THREADS, digits, seeded
from torchbridge.bench_report import write_png
from torchbridge.cli import main

BATCHES = (1, 4)
IN_PROCESS = ["eager", "torchscript", "libtorch", "cpp", "onnxruntime"]
HAS_ONNXRUNTIME = importlib.util.find_spec("onnxruntime") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def mlp_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    model = seeded(tb.models.digits_mlp)
    report = tb.bench(
        model,
        (digits(2),),
        batch_sizes=BATCHES,
        threads=THREADS,
        runs=5,
        warmup=1,
        paths=[*IN_PROCESS, "cli"],
        out_dir=out,
        progress=False,
    )
    return report, out


def test_every_path_is_timed_and_measured_alone(mlp_bench):
    report, out = mlp_bench
    data = json.loads((out / "bench.json").read_text())
    expected = {"eager", "torchscript", "libtorch", "cpp", "cli"} | ({"onnxruntime"} if HAS_ONNXRUNTIME else set())
    assert {(r["path"], r["batch"]) for r in data["latency"]} == {(p, b) for p in expected for b in BATCHES}
    assert all(math.isfinite(r["p50_ms"]) and r["p50_ms"] > 0 and r["runs"] == 5 for r in data["latency"])
    if not HAS_ONNXRUNTIME:
        assert "onnxruntime" in data["skipped"]
    paths = {p["path"]: p for p in data["paths"]}
    assert set(paths) == expected
    for name, info in paths.items():  # every one measured in its own process (cli: torchbridge-run's JSON)
        assert info["peak_rss_mb"] > 0 and info["load_ms"] > 0, (name, info["note"])
        assert set(info["first_call_ms"]) == {"1", "4"} and all(v > 0 for v in info["first_call_ms"].values())
    assert paths["eager"]["artifact_bytes"] is None
    assert paths["cpp"]["artifact_bytes"] == (out / "model.pt").stat().st_size
    if HAS_ONNXRUNTIME:
        assert paths["onnxruntime"]["artifact_bytes"] == (out / "model.onnx").stat().st_size
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["threads"] == THREADS and machine["torch"] and machine["cpu"]
    assert len(machine["loadavg_start"]) == 3 and len(machine["loadavg_end"]) == 3 and machine["date"]
    assert "busy_cores_start" in machine and "busy_cores_end" in machine


def test_each_turn_warms_up_untimed_for_a_while_and_the_report_says_so(mlp_bench):
    """onnxruntime's threads spin for tens of milliseconds after a call and slow whichever path runs
    next; a small model's first calls after the other paths ran find its weights out of the caches."""
    from torchbridge.bench import TURN_WARM_S

    report, out = mlp_bench
    notes = " ".join(json.loads((out / "bench.json").read_text())["notes"])
    assert f"untimed calls for at least {TURN_WARM_S * 1000:.0f} ms" in notes


def test_interleaved_turns_time_only_the_calls_after_the_warm_up_time():
    from torchbridge.timing import time_interleaved

    starts: dict[str, list[float]] = {"a": [], "b": []}
    paths = {name: (lambda name=name: (starts[name].append(time.perf_counter()), time.sleep(0.001))) for name in starts}
    samples = time_interleaved(paths, runs=4, warmup=0, block=3, warm_s=0.02)
    assert all(len(values) == 4 for values in samples.values())
    assert max(max(values) for values in samples.values()) < 15.0  # ms: one call each, not the warm-up
    # Each of the two turns per path: untimed calls for 20 ms (up to 20 at 1 ms or more each, more than
    # one unless a single call took the whole 20 ms), then two timed.
    for name in starts:
        assert 2 * (2 + 2) <= len(starts[name]) <= 2 * (2 + 21)
    # Without warm_s, a turn is one untimed call and block - 1 timed ones, as before.
    starts = {"a": [], "b": []}
    samples = time_interleaved(paths, runs=4, warmup=0, block=3)
    assert all(len(values) == 4 for values in samples.values()) and all(len(v) == 6 for v in starts.values())


def test_the_artifact_is_ranked_at_the_thread_count_it_is_timed_at(tmp_path):
    """Export times the runtime's variants at the process's thread count: bench exports at its own
    `threads`, not at the count the process had, so the C++ path runs the order measured for it."""
    import torch

    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    try:
        tb.bench(
            seeded(tb.models.digits_mlp), (digits(2),), batch_sizes=(1,), threads=threads, runs=2, warmup=1,
            paths=["cpp"], out_dir=tmp_path, progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    manifest = tb.artifact.load_manifest(tmp_path / "model.pt")
    assert manifest["runtime"]["measured"]["threads"] == threads, manifest["runtime"]["measured"]


def test_ratios_and_derived_checks(mlp_bench):
    report, out = mlp_bench
    data = json.loads((out / "bench.json").read_text())
    for batch in BATCHES:
        rows = [r for r in data["latency"] if r["batch"] == batch]
        fastest = min(r["p50_ms"] for r in rows)
        assert min(r["ratio_to_fastest"] for r in rows) == 1.0
        for r in rows:
            assert r["ratio_to_fastest"] == pytest.approx(r["p50_ms"] / fastest)
    derived = {d["check"]: d["value"] for d in data["derived"]}
    overhead = derived["cpp p50 / libtorch p50"]
    assert overhead == {str(b): pytest.approx(report.p50("cpp", b) / report.p50("libtorch", b)) for b in BATCHES}
    cpp = report.info("cpp")
    assert derived["cpp first call / cpp p50"]["1"] == pytest.approx(cpp.first_call_ms[1] / report.p50("cpp", 1))
    cli, eager = report.info("cli"), report.info("eager")
    assert set(cli.peak_rss_by_batch_mb) == set(eager.peak_rss_by_batch_mb) == set(BATCHES)
    rss = {str(b): pytest.approx(cli.peak_rss_by_batch_mb[b] / eager.peak_rss_by_batch_mb[b]) for b in BATCHES}
    assert derived["cli RSS / eager-process RSS"] == rss
    # The process's high-water mark at the end: the last batch's, or a page or two above it (the
    # worker allocates its reply after reading it).
    last = eager.peak_rss_by_batch_mb[BATCHES[-1]]
    assert last <= eager.peak_rss_mb <= last + 1.0


def test_markdown_table_and_plot(mlp_bench):
    report, out = mlp_bench
    markdown = (out / "bench.md").read_text()
    assert markdown == report.markdown() and markdown.startswith("# Every path side by side: DigitsMLP")
    for batch in BATCHES:
        for path in ["eager", "torchscript", "libtorch", "cpp", "cli"]:
            assert f"| {batch} | {path} |" in markdown
    for check in ["cpp p50 / onnxruntime p50", "cpp p50 / eager p50", "cpp p50 / libtorch p50"]:
        assert f"`{check}`" in markdown
    assert report.machine["label"] in markdown
    table = report.table()
    assert table.splitlines()[0].split()[:3] == ["batch", "path", "p50"]
    assert "cpp first call / cpp p50" in table and "cli RSS / eager-process RSS" in table
    if HAS_MATPLOTLIB:
        assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (out / "bench.png").exists() and any("matplotlib" in n for n in report.notes)


def test_cli_bench_model_writes_the_report(tmp_path):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "torchbridge", "bench", "--model", "digits_mlp", "--batch-sizes", "1"]
    result = subprocess.run(
        [*command, "--runs", "5", "--threads", str(THREADS), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "x fastest" in result.stdout and "cpp p50 / libtorch p50" in result.stdout
    assert "timing batch 1" in result.stderr  # progress, one line per phase
    data = json.loads((out / "bench.json").read_text())
    assert {r["path"] for r in data["latency"]} >= {"eager", "torchscript", "libtorch", "cpp", "cli"}
    assert data["settings"]["model"] == "digits_mlp" and data["settings"]["batch_sizes"] == [1]
    assert (out / "bench.md").is_file() and (out / "model.pt").is_file()


def test_bad_paths_and_missing_artifacts_are_clear_errors(mlp_bench, tmp_path, capsys):
    _, out = mlp_bench
    artifact = out / "model.pt"
    with pytest.raises(tb.TorchbridgeError, match="unknown path 'gpu'"):
        tb.bench(artifact=artifact, paths=["cpp", "gpu"], progress=False)
    with pytest.raises(tb.TorchbridgeError, match="no such artifact file"):
        tb.bench(artifact=tmp_path / "missing.pt", progress=False)
    with pytest.raises(tb.TorchbridgeError, match="needs the eager model"):
        tb.bench(artifact=artifact, paths=["eager"], progress=False)
    static = tb.export(seeded(tb.models.digits_mlp), (digits(2),), tmp_path / "static.pt", dynamic_dims=[[]]).path
    with pytest.raises(tb.TorchbridgeError, match="fixed batch of 2"):
        tb.bench(artifact=static, batch_sizes=(1, 4), progress=False)

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", "digits_mlp", "--paths", "eager,gpu"])
    assert exit_info.value.code == 2
    assert "unknown path 'gpu'" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt: no such artifact file" in err and "Traceback" not in err

    # Several artifacts without --model/--paths/--out: the C++ comparison, as before.
    assert main(["bench", str(artifact), str(artifact), "--batch-sizes", "1", "--runs", "3", "--warmup", "1"]) == 0
    assert "vs model.pt" in capsys.readouterr().out


def test_missing_optional_packages_skip_with_a_note(mlp_bench, tmp_path, monkeypatch):
    report, _ = mlp_bench
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    note = write_png(report, tmp_path / "bench.png")
    assert "matplotlib is not installed" in note and not (tmp_path / "bench.png").exists()

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    model = seeded(tb.models.digits_mlp)
    alone = tb.bench(model, (digits(2),), batch_sizes=(1,), runs=1, warmup=0, paths=["onnxruntime"], progress=False)
    assert "onnxruntime does not import" in alone.skipped["onnxruntime"] and alone.latency == []
    assert "skipped onnxruntime" in alone.table()
