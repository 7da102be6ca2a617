"""Seeded corruption: damaged copies of real artifacts are refused with a message naming the file,
never crash, hang or give a wrong answer, through torchbridge-run and through tb.Runtime.

Three artifacts (a float .pt, a dynamically quantized .pt, an AOTInductor .pt2) each get
TORCHBRIDGE_CORRUPT_N damaged copies (default 100, the CI sample; `scripts/dev.sh corrupt` runs
300) from seed TORCHBRIDGE_CORRUPT_SEED (default 1616); tests/corrupt.py makes and runs them, each
run in a subprocess with a timeout (TORCHBRIDGE_CORRUPT_TIMEOUT, default 60 s),
TORCHBRIDGE_CORRUPT_WORKERS (default 2) at a time; TORCHBRIDGE_CORRUPT_N_PT2 sets the .pt2's
count apart (default: the same N). About 6 minutes for the CI sample on 2 busy cores. The table
(damage kind x outcome, cli/python counts) is printed for every artifact; copies, results.json and
summary.txt stay in pytest's temporary folder, and any copy is rebuilt from the seed in its name
with corrupt.damage(original_bytes, seed).
"""

from __future__ import annotations

import os
import shutil

import pytest

import corrupt
import torchbridge as tb
from conftest import digits, seeded

N = int(os.environ.get("TORCHBRIDGE_CORRUPT_N", "100"))
N_PT2 = int(os.environ.get("TORCHBRIDGE_CORRUPT_N_PT2", str(N)))  # a .pt2 load is the slowest
SEED = int(os.environ.get("TORCHBRIDGE_CORRUPT_SEED", "1616"))
WORKERS = int(os.environ.get("TORCHBRIDGE_CORRUPT_WORKERS", "2"))
TIMEOUT = float(os.environ.get("TORCHBRIDGE_CORRUPT_TIMEOUT", "60"))

ARTIFACTS = ["float_pt", "int8_pt", "aoti_pt2"]


@pytest.fixture(scope="session")
def float_pt(tmp_path_factory):
    """The digits CNN (conv, batch norm, linear), scripted."""
    return tb.export(seeded(tb.models.digits_cnn), (digits(),), tmp_path_factory.mktemp("float") / "cnn.pt").path


@pytest.fixture(scope="session")
def int8_pt(tmp_path_factory):
    """A 2-layer LSTM classifier, dynamic int8 (packed LSTM and Linear weights)."""
    int8 = tb.quantize(seeded(lambda: tb.models.DigitsLSTM(hidden=32, num_layers=2)), "dynamic")
    return tb.export(int8, (digits(),), tmp_path_factory.mktemp("int8") / "lstm.pt", method="script").path


@pytest.fixture(scope="session")
def aoti_pt2(tmp_path_factory):
    """The digits MLP through AOTInductor: the cheapest package to compile (about 30 s on 2 cores)."""
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if c):
        pytest.skip("AOTInductor needs a C++ compiler")
    return tb.export(seeded(tb.models.digits_mlp), (digits(),), tmp_path_factory.mktemp("pt2") / "mlp.pt2").path


@pytest.fixture(scope="session")
def runner():
    with corrupt.Runner(workers=WORKERS, timeout=TIMEOUT) as shared:
        yield shared


@pytest.fixture(scope="session")
def corruption_results(runner, tmp_path_factory):
    """Results per artifact, computed once for the tests below; the report printed once."""
    cache = {}

    def results(name: str, request, capsys):
        if name not in cache:
            artifact = request.getfixturevalue(name)
            n = N_PT2 if name == "aoti_pt2" else N
            title = f"{name} ({artifact.name}): {n} damaged copies, seed {SEED}"
            out_dir = tmp_path_factory.mktemp(f"corrupt-{name}")
            try:
                cache[name] = corrupt.check_artifact(artifact, n, SEED, out_dir, runner, title=title)
            except Exception as error:  # the runner itself failed: once is enough
                cache[name] = error
                raise
            with capsys.disabled():
                print("\n" + cache[name][1], flush=True)
        if isinstance(cache[name], Exception):
            raise cache[name]
        return cache[name]

    return results


@pytest.mark.parametrize("name", ARTIFACTS)
def test_damaged_artifact_never_crashes_hangs_or_answers_wrong(corruption_results, request, capsys, name):
    results, report = corruption_results(name, request, capsys)
    bad = corrupt.offenders(results)
    if bad:
        pytest.fail(f"{len(bad)} of {len(results)} runs crashed, hung or answered wrong\n{report}", pytrace=False)


@pytest.mark.parametrize("name", ARTIFACTS)
def test_every_refusal_names_the_damaged_file(corruption_results, request, capsys, name):
    results, _ = corruption_results(name, request, capsys)
    unnamed = corrupt.unnamed_refusals(results)
    lines = "\n".join(corrupt.describe(r) for r in unnamed)
    refusals = sum(r.outcome == "refused" for r in results)
    if unnamed:
        pytest.fail(f"{len(unnamed)} of {refusals} refusals do not name the file they refused\n{lines}", pytrace=False)
