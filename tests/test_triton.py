"""torchbridge triton: model repositories loaded by a real tritonserver (nvidia-pytriton's, Python backend
only), queried over HTTP with tritonclient; outputs compared bit for bit with torchbridge.Runtime.

The server comes from .venv-triton (scripts/dev.sh triton-setup; `scripts/dev.sh test` makes it). It has
no PyTorch backend: the libtorch and aoti configs are checked by its strict config parser, which must
stop only at the missing backend."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import torchbridge as tb
from conftest import TwoInTwoOut, digits, seeded
from torchbridge.triton import model_config, write_model

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("TORCHBRIDGE_TRITON_VENV", ROOT / ".venv-triton"))
THREADS = 1  # INTRA_OP_THREAD_COUNT of the python models and the reference Runtime's threads
STARTUP_S = 300


def triton_install() -> Path | None:
    """pytriton's tritonserver folder inside VENV, or None."""
    found = sorted(VENV.glob("lib/python*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    return found[0].parents[1] if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TritonServer:
    """tritonserver on a repository, HTTP on 127.0.0.1 only, in its own process group."""

    def __init__(self, repository: Path, work: Path):
        install = triton_install()
        if install is None:
            pytest.skip(f"no tritonserver in {VENV}: run scripts/dev.sh triton-setup (CI does, in scripts/dev.sh test)")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = install / "python_backend_stubs" / version / "triton_python_backend_stub"
        # The Python backend as pytriton assembles it: the backend library plus the stub of this Python.
        backends = work / "backends" / "python"
        backends.mkdir(parents=True)
        for item in (install / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy(item, backends)
        shutil.copy(stub, backends / "triton_python_backend_stub")
        venv_python = VENV / "bin" / "python"
        libdir = subprocess.run(
            [venv_python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        env = {
            **os.environ,
            # The stub embeds libpython: this Python's first, then the libraries bundled with the server.
            "LD_LIBRARY_PATH": f"{libdir}:{install.parent.parent / 'nvidia_pytriton.libs'}",
            "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}",
        }
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log = work / "tritonserver.log"
        command = [
            install / "bin" / "tritonserver",
            f"--model-repository={repository}",
            f"--backend-directory={work / 'backends'}",
            "--strict-model-config=true",
            "--exit-on-error=false",  # the libtorch/aoti models fail to load; the python ones serve
            "--http-address=127.0.0.1",
            f"--http-port={self.port}",
            "--allow-grpc=false",
            "--allow-metrics=false",
        ]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def index(self) -> dict[str, dict]:
        request = urllib.request.Request(f"http://{self.url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return {entry["name"]: entry for entry in json.loads(answer.read())}

    def wait_loaded(self, names: list[str]) -> dict[str, dict]:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"tritonserver exited:\n{self.log.read_text()[-4000:]}"
            try:
                index = self.index()
                if all(index.get(n, {}).get("state") in ("READY", "UNAVAILABLE") for n in names):
                    return index
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"models not loaded after {STARTUP_S} s:\n{self.log.read_text()[-4000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, cnn_artifact):
    folder = tmp_path_factory.mktemp("triton-artifacts")
    two = folder / "two.pt"
    tb.export(seeded(TwoInTwoOut), (torch.rand(2, 1, 8, 8), torch.rand(2, 3)), two)
    return {"cnn": cnn_artifact[1], "two": two}


@pytest.fixture(scope="module")
def pt2_artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("triton-pt2") / "tiny.pt2"
    torch.manual_seed(0)
    tb.export(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU()).eval(), (torch.rand(2, 6),), path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, artifacts, pt2_artifact):
    work = tmp_path_factory.mktemp("triton")
    repository = work / "models"
    write_model(artifacts["cnn"], repository, "digits", backend="python", max_batch_size=4, threads=THREADS)
    write_model(artifacts["two"], repository, "two", backend="python", max_batch_size=0, threads=THREADS)
    write_model(artifacts["cnn"], repository, "digits_libtorch", backend="libtorch", max_batch_size=8, instances=2)
    write_model(pt2_artifact, repository, "tiny_aoti", backend="aoti", max_batch_size=8)
    # Triton 2.51 predates the torch_aoti platform (26.03): the same config naming the pytorch backend
    # instead shows that everything else in it passes the strict parser.
    aoti_config = (repository / "tiny_aoti" / "config.pbtxt").read_text()
    shutil.copytree(repository / "tiny_aoti", repository / "tiny_aoti_backend")
    (repository / "tiny_aoti_backend" / "config.pbtxt").write_text(
        aoti_config.replace('name: "tiny_aoti"', 'name: "tiny_aoti_backend"').replace(
            'platform: "torch_aoti"', 'backend: "pytorch"'
        )
    )
    triton = TritonServer(repository, work)
    try:
        index = triton.wait_loaded(["digits", "two", "digits_libtorch", "tiny_aoti_backend"])
        yield triton, index
    finally:
        triton.close()


def client(triton):
    import tritonclient.http as http

    return http, http.InferenceServerClient(triton.url, network_timeout=120)


def infer(triton, model: str, inputs: list[np.ndarray], outputs: int = 1):
    http, connection = client(triton)
    tensors = []
    for i, array in enumerate(inputs):
        tensor = http.InferInput(f"INPUT__{i}", list(array.shape), http.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    requested = [http.InferRequestedOutput(f"OUTPUT__{i}", binary_data=True) for i in range(outputs)]
    result = connection.infer(model, tensors, outputs=requested)
    return [result.as_numpy(f"OUTPUT__{i}") for i in range(outputs)]


def test_python_backend_serves_bit_identical_outputs(server):
    triton, index = server
    assert index["digits"]["state"] == "READY", index["digits"]
    runtime = tb.Runtime(server_artifact(triton, "digits"), threads=THREADS)
    for x in [digits(1), digits(3), torch.randn(4, 1, 8, 8)]:
        (y,) = infer(triton, "digits", [x.numpy()])
        assert np.array_equal(y, runtime.forward(x)[0].numpy())


def test_two_inputs_two_outputs_without_batching(server):
    triton, index = server
    assert index["two"]["state"] == "READY", index["two"]
    runtime = tb.Runtime(server_artifact(triton, "two"), threads=THREADS)
    image, features = torch.rand(3, 1, 8, 8), torch.rand(3, 3)
    probabilities, labels = infer(triton, "two", [image.numpy(), features.numpy()], outputs=2)
    expected = runtime.forward(image, features)
    assert np.array_equal(probabilities, expected[0].numpy()) and np.array_equal(labels, expected[1].numpy())


def test_runtime_refusal_reaches_the_client_and_the_model_keeps_serving(server):
    triton, _ = server
    from tritonclient.utils import InferenceServerException

    # An empty batch fits the config's -1 dims; the runtime refuses it with its own message.
    with pytest.raises(InferenceServerException, match="is empty"):
        infer(triton, "two", [np.zeros((0, 1, 8, 8), np.float32), np.zeros((0, 3), np.float32)], outputs=2)
    x = digits(2)
    (y,) = infer(triton, "digits", [x.numpy()])
    assert np.array_equal(y, tb.Runtime(server_artifact(triton, "digits"), threads=THREADS).forward(x)[0].numpy())


def test_libtorch_and_aoti_configs_pass_the_strict_parser_up_to_the_missing_backend(server):
    triton, index = server
    for name in ("digits_libtorch", "tiny_aoti_backend"):
        assert index[name]["state"] == "UNAVAILABLE"
        assert "unable to find backend library for backend 'pytorch'" in index[name]["reason"], index[name]
    # The torch_aoti platform itself is the one thing this older server does not know.
    assert "unexpected platform type 'torch_aoti' for tiny_aoti" in triton.log.read_text()


def server_artifact(triton, name: str) -> Path:
    folder = Path(next(a for a in triton.process.args if a.startswith("--model-repository=")).split("=", 1)[1])
    return next((folder / name / "1").glob("model.pt*"))


# ------------------------------------------------------------------------------------- without a server


def test_config_from_the_manifest(artifacts):
    config, warmup = model_config(artifacts["two"], "two", backend="libtorch", max_batch_size=8, instances=2, threads=1)
    assert 'platform: "pytorch_libtorch"' in config and "max_batch_size: 8" in config
    assert 'name: "INPUT__1"' in config and "dims: [ 3 ]" in config and "data_type: TYPE_INT64" in config
    assert "count: 2" in config and 'key: "INTRA_OP_THREAD_COUNT"' in config and 'string_value: "1"' in config
    assert "max_queue_delay_microseconds" in config and "model_warmup" in config and "batch_size: 8" in config
    assert [name for name, _ in warmup] == ["input_0", "input_1"]
    assert len(warmup[1][1]) == 3 * 4  # one float32 sample of features; Triton repeats it to batch_size
    unbatched, _ = model_config(artifacts["two"], "two", max_batch_size=0)
    assert "dims: [ -1, 3 ]" in unbatched and "dynamic_batching" not in unbatched


def test_refuses_what_triton_cannot_express(tmp_path, artifacts, pt2_artifact):
    static = tmp_path / "static.pt"
    tb.export(seeded(tb.models.digits_cnn), (digits(2),), static, dynamic_dims=[[]])
    with pytest.raises(tb.TorchbridgeError, match=r"input 'x' .*dimension 0 is fixed at 2"):
        model_config(static, "static", max_batch_size=4)
    assert "dims: [ 2, 1, 8, 8 ]" in model_config(static, "static", max_batch_size=0)[0]

    class Nested(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            return x * 2, (x, x + 1)

    nested = tmp_path / "nested.pt"
    tb.export(Nested().eval(), (torch.rand(2, 3),), nested)
    with pytest.raises(tb.TorchbridgeError, match="use --backend python"):
        model_config(nested, "nested", backend="libtorch")
    assert model_config(nested, "nested", backend="python")[0].count("OUTPUT__") == 3
    assert 'platform: "torch_aoti"' in model_config(pt2_artifact, "tiny")[0], "a .pt2 defaults to the aoti backend"
    with pytest.raises(tb.TorchbridgeError, match="use --backend aoti"):
        model_config(pt2_artifact, "tiny", backend="libtorch")
    with pytest.raises(tb.TorchbridgeError, match="compiled for batches up to"):
        model_config(pt2_artifact, "tiny", backend="aoti", max_batch_size=4096)


def test_existing_model_is_kept_unless_forced_and_on_failure(tmp_path, artifacts, monkeypatch):
    repository = tmp_path / "models"
    first = write_model(artifacts["cnn"], repository, "m", backend="python")
    (first.directory / "marker").write_text("old")
    with pytest.raises(tb.TorchbridgeError, match="exists; pass --force"):
        write_model(artifacts["two"], repository, "m", backend="python")
    import torchbridge.triton as triton_module

    def failing_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(triton_module.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        write_model(artifacts["two"], repository, "m", backend="python", force=True)
    monkeypatch.undo()
    assert (first.directory / "marker").read_text() == "old"
    assert sorted(p.name for p in repository.iterdir()) == ["m"], "no staging folder is left behind"
    write_model(artifacts["two"], repository, "m", backend="python", force=True)
    assert (
        not (repository / "m" / "marker").exists()
        and 'name: "INPUT__1"' in (repository / "m" / "config.pbtxt").read_text()
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchbridge",
            "triton",
            str(artifacts["cnn"]),
            "--repository",
            str(repository),
            "--name",
            "m",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "exists; pass --force" in result.stderr
