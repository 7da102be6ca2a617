"""torchbridge serve: a real LitServe server on 127.0.0.1, real HTTP requests, outputs compared bit for bit
with torchbridge.Runtime on the same inputs (for a dynamic batch: the same concatenated batch)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import torchbridge as tb
from conftest import TwoInTwoOut, digits, seeded

pytest.importorskip("litserve", reason="LitServe is not installed (pip install 'torchbridge[serve]')")

from torchbridge.serving import BATCH_HEADER, ServeConfig, load_runtime  # noqa: E402

BATCH = BATCH_HEADER.lower()
THREADS = 1  # each server and its reference Runtime: bit-identity holds at equal thread counts
STARTUP_S = 300  # spawning a worker imports torch and warms up every batch size; slow on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(url: str, body: bytes | None = None, content_type: str = "application/json", timeout: float = 120):
    """(status, headers with lower-case names, body) of one HTTP request; error statuses are returned, not raised."""
    headers = {"Content-Type": content_type} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


class Server:
    """`torchbridge serve` in its own process group, stopped (with its workers) on close."""

    def __init__(self, artifact: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = artifact.with_suffix(f".serve-{self.port}.log")
        command = [sys.executable, "-m", "torchbridge", "serve", str(artifact), "--port", str(self.port)]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [*command, "--threads", str(THREADS), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self) -> Server:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited with {self.process.returncode}:\n{self.log.read_text()}"
            try:
                if request(self.url + "/health", timeout=5)[0] == 200:
                    return self
            except OSError:  # not listening yet: the port opens once the workers are warmed up
                pass
            time.sleep(0.5)
        self.close()
        raise AssertionError(f"serve not healthy after {STARTUP_S} s:\n{self.log.read_text()}")

    def predict(self, body: bytes, content_type: str):
        return request(self.url + "/predict", body, content_type)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def read_npy(body: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(body), allow_pickle=False))


def reference(artifact: Path, max_batch_size: int = 1):
    """The Runtime a server worker runs, built the same way."""
    return load_runtime(ServeConfig(artifact, threads=THREADS, max_batch_size=max_batch_size))


@pytest.fixture(scope="module")
def servers(cnn_artifact, tmp_path_factory):
    """Both servers, started together (each spends most of its start-up importing torch twice):
    'batched': the digits CNN (the pipeline's model) with dynamic batching up to 4 rows;
    'two_inputs': two inputs, two outputs (float probabilities and int64 labels), no batching."""
    two = tmp_path_factory.mktemp("two") / "two.pt"
    tb.export(seeded(TwoInTwoOut), (torch.rand(2, 1, 8, 8), torch.rand(2, 3)), two)
    started = {
        "batched": (Server(cnn_artifact[1], "--max-batch-size", "4", "--batch-timeout", "50"), cnn_artifact[1]),
        "two_inputs": (Server(two), two),
    }
    try:
        for server, _ in started.values():
            server.wait_healthy()
        yield started
    finally:
        for server, _ in started.values():
            server.close()


@pytest.fixture
def batched(servers):
    return servers["batched"]


@pytest.fixture
def two_inputs(servers):
    return servers["two_inputs"]


def test_import_torchbridge_does_not_import_litserve():
    code = "import sys, torchbridge; print(sorted(m for m in ('litserve', 'fastapi') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "[]"


def test_json_and_npy_match_runtime_bit_for_bit(batched):
    server, path = batched
    runtime = reference(path, max_batch_size=4)
    for x in [digits(1), digits(3), torch.randn(2, 1, 8, 8)]:
        expected = runtime.forward(x)[0]
        status, headers, body = server.predict(json.dumps({"x": x.tolist()}).encode(), "application/json")
        assert status == 200, body
        # A lone request (this test sends one at a time) runs as its own batch: the Runtime ran the same input.
        assert headers[BATCH].endswith(f"rows 0:{len(x)} of {len(x)}")
        from_json = torch.tensor(json.loads(body)["output_0"], dtype=torch.float32)
        assert torch.equal(from_json, expected), "JSON floats must read back to the same float32 bits"
        status, headers, body = server.predict(npy(x), "application/x-npy")
        assert status == 200 and headers["content-type"] == "application/x-npy"
        assert torch.equal(read_npy(body), expected)


def test_concurrent_requests_are_batched_and_split_back_bit_for_bit(batched):
    server, path = batched
    torch.manual_seed(1)
    inputs = [torch.randn(1 + i % 2, 1, 8, 8) for i in range(24)]  # 1- and 2-row requests
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda x: server.predict(npy(x), "application/x-npy"), inputs))
    assert [status for status, _, _ in answers] == [200] * len(inputs)
    # Rebuild each batch the server formed from the header, run it through the Runtime, compare each slice.
    batches: dict[str, list] = {}
    for x, (_, headers, body) in zip(inputs, answers):
        batch_id, start, _, total = re.fullmatch(r"(\S+) rows (\d+):(\d+) of (\d+)", headers[BATCH]).groups()
        batches.setdefault(batch_id, []).append((int(start), int(total), x, read_npy(body)))
    assert any(len(members) > 1 for members in batches.values()), f"no request was batched: {list(batches)}"
    runtime = reference(path, max_batch_size=4)
    for members in batches.values():
        members.sort(key=lambda m: m[0])
        assert sum(len(m[2]) for m in members) == members[0][1] <= 4
        expected = runtime.forward(torch.cat([m[2] for m in members]))[0]
        assert torch.equal(torch.cat([m[3] for m in members]), expected)


BAD_REQUESTS = [
    (b"{not json", "application/json", 400, "malformed JSON"),
    (b"[1, 2]", "application/json", 400, "expected an object mapping input names"),
    (json.dumps({"y": [[0.0]]}).encode(), "application/json", 400, "missing 'x'; unknown 'y'"),
    (json.dumps({"x": torch.rand(2, 1, 8, 7).tolist()}).encode(), "application/json", 400, "got float32[2, 1, 8, 7]"),
    (json.dumps({"x": [[[[1.0, 2.0], [3.0]]]]}).encode(), "application/json", 400, "not a rectangular"),
    (json.dumps({"x": [[[["a"] * 8] * 8]]}).encode(), "application/json", 400, "expected float32 values"),
    (npy(np.zeros((2, 1, 8, 8), np.float64)), "application/x-npy", 400, "got float64[2, 1, 8, 8]"),
    (npy(np.zeros((0, 1, 8, 8), np.float32)), "application/x-npy", 400, "is empty"),
    (b"not an array", "application/x-npy", 400, "not a .npy array"),
    (b"x=1", "text/plain", 415, "unsupported Content-Type"),
]


@pytest.mark.parametrize("body, content_type, status, message", BAD_REQUESTS, ids=[b[3] for b in BAD_REQUESTS])
def test_bad_request_is_answered_with_the_reason(batched, body, content_type, status, message):
    server, _ = batched
    got, headers, answer = server.predict(body, content_type)
    assert got == status, answer
    assert message in json.loads(answer)["error"]


def test_bad_requests_in_a_batch_fail_alone_and_the_server_keeps_serving(batched):
    server, path = batched
    good = [digits(1) + i for i in range(8)]
    jobs = []
    for i, x in enumerate(good):
        jobs.append(("good", x, npy(x)))
        jobs.append(("bad", None, BAD_REQUESTS[i % len(BAD_REQUESTS)][0]))
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda job: server.predict(job[2], "application/x-npy" if job[0] == "good" else "application/json"),
                jobs,
            )
        )
    runtime = reference(path, max_batch_size=4)
    for (kind, x, _), (status, headers, body) in zip(jobs, answers):
        if kind == "bad":
            assert status == 400, body
            continue
        assert status == 200, body
        if headers[BATCH].endswith("rows 0:1 of 1"):
            assert torch.equal(read_npy(body), runtime.forward(x)[0])
    status, _, body = server.predict(npy(good[0]), "application/x-npy")
    assert status == 200 and torch.equal(read_npy(body), runtime.forward(good[0])[0])
    metrics = json.loads(request(server.url + "/metrics")[2])
    assert metrics["responses"]["400"] >= len(good) and metrics["latency_ms"]["p99"] is not None


def test_two_inputs_npz_and_json_match_runtime(two_inputs):
    server, path = two_inputs
    runtime = reference(path)
    image, features = torch.rand(3, 1, 8, 8), torch.rand(3, 3)
    probabilities, labels = runtime.forward(image, features)
    status, headers, body = server.predict(npz(image=image, features=features), "application/x-npz")
    assert status == 200 and headers["content-type"] == "application/x-npz", body
    outputs = np.load(io.BytesIO(body), allow_pickle=False)
    assert sorted(outputs.files) == ["output_0", "output_1"]
    assert torch.equal(torch.from_numpy(outputs["output_0"]), probabilities)
    assert torch.equal(torch.from_numpy(outputs["output_1"]), labels)
    body = json.dumps({"image": image.tolist(), "features": features.tolist()}).encode()
    status, _, answer = server.predict(body, "application/json")
    assert status == 200, answer
    answer = json.loads(answer)
    assert torch.equal(torch.tensor(answer["output_0"], dtype=torch.float32), probabilities)
    assert answer["output_1"] == labels.tolist()
    # One .npy cannot carry two inputs: the answer says what to send instead; the server goes on.
    status, _, answer = server.predict(npy(image), "application/x-npy")
    assert status == 400 and "application/x-npz" in json.loads(answer)["error"]
    status, _, answer = server.predict(npz(image=image), "application/x-npz")
    assert status == 400 and "missing 'features'" in json.loads(answer)["error"]
    assert server.predict(npz(image=image, features=features), "application/x-npz")[0] == 200
    assert request(server.url + "/health")[0] == 200


def test_batching_refused_for_a_static_batch_dimension(tmp_path):
    path = tmp_path / "static.pt"
    tb.export(seeded(tb.models.digits_cnn), (digits(2),), path, dynamic_dims=[[]])
    command = [sys.executable, "-m", "torchbridge", "serve", str(path), "--max-batch-size", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "fixed (or no) dimension 0" in result.stderr and "--max-batch-size 1" in result.stderr
