"""torchbridge serve: an artifact behind an HTTP endpoint, on LitServe, with dynamic batching.

    torchbridge serve model.pt --port 8000 --workers 1 --max-batch-size 8 --batch-timeout 5
    tb.serve("model.pt", port=8000, max_batch_size=8, batch_timeout_ms=5)

POST /predict takes one call's inputs, each with its batch dimension, as
  - application/json: {"<input name>": nested lists, ...} (the manifest's input names),
  - application/x-npy: one .npy array (models with one input),
  - application/x-npz: an uncompressed .npz archive, one array per input name (numpy.savez),
and answers in the same kind ({"<output name>": nested lists} for JSON; .npy for one output or .npz
named by the manifest's output names). Every input is validated by the C++ runtime; a bad request
gets HTTP 400 with its message. With --max-batch-size B, requests waiting at most --batch-timeout ms
are concatenated along the batch dimension (up to B rows), run once and split back; the response
header X-Torchbridge-Batch names the batch and this request's rows in it. GET /health answers 200
once every worker has loaded and warmed up the model; GET /metrics gives request counts and latency
percentiles; GET /info the model's inputs and outputs and the server settings.

The LitServe package is needed: pip install 'torchbridge[serve]'.

Long because one request's path is here whole: the three body formats each way, validation that
fails one request alone inside a batch, batching and splitting back, and the health and metrics
routes LitServe does not keep.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import sys
import threading
import time
import warnings
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchbridge.artifact import TensorSpec, load_manifest
from torchbridge.errors import TorchbridgeError

try:
    import litserve as ls
    from fastapi import Request
    from litserve.server import RegularRequestHandler
    from starlette.responses import JSONResponse, Response
except ImportError as _error:  # pragma: no cover - the message is the point
    raise ImportError(
        f"torchbridge serve needs LitServe ({_error}); install it with: pip install 'torchbridge[serve]'"
    ) from _error

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
BATCH_HEADER = "X-Torchbridge-Batch"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Intra-op threads per worker: the cores but one, divided between the workers (at least 1). The HTTP
    server and the queues between it and the workers need a core too: an OpenMP region waits for all of
    its threads, so a worker thread that loses its core to them stalls every request (see docs/serve.md)."""
    return max(1, (available_cores() - 1) // max(1, workers))


@dataclass
class ServeConfig:
    """What `torchbridge serve` runs; checked against the artifact's manifest by `check`."""

    artifact: Path
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int | None = None
    max_batch_size: int = 1
    batch_timeout_ms: float = 5.0
    timeout_s: float = 60.0
    device: str = "cpu"
    log_level: str = "warning"
    manifest: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        self.artifact = Path(self.artifact)
        if not self.artifact.is_file():
            raise TorchbridgeError(f"{self.artifact}: no such artifact file")
        manifest = load_manifest(self.artifact)
        if manifest is None:
            raise TorchbridgeError(
                f"{self.artifact}: exported without torchbridge (no manifest): the server needs the input "
                "names, dtypes and shapes it holds; export the model with torchbridge"
            )
        self.manifest = manifest
        if self.workers < 1:
            raise TorchbridgeError(f"--workers must be at least 1, got {self.workers}")
        if self.max_batch_size < 1:
            raise TorchbridgeError(f"--max-batch-size must be at least 1, got {self.max_batch_size}")
        if self.batch_timeout_ms < 0:
            raise TorchbridgeError(f"--batch-timeout must be 0 or more milliseconds, got {self.batch_timeout_ms}")
        if self.threads is None:
            self.threads = default_threads(self.workers)
        elif self.threads < 1:
            raise TorchbridgeError(f"--threads must be at least 1, got {self.threads}")
        elif self.threads * self.workers > available_cores():
            warnings.warn(
                f"{self.workers} worker(s) x {self.threads} thread(s) exceed the {available_cores()} cores: "
                "the workers will compete for them (the default divides the cores between the workers)",
                stacklevel=2,
            )
        if self.max_batch_size > 1:
            static = [
                spec["name"]
                for spec in manifest["inputs"] + manifest["outputs"]
                if not spec["shape"] or spec["shape"][0] is not None
            ]
            if static:
                raise TorchbridgeError(
                    f"{self.artifact}: dynamic batching concatenates requests along dimension 0, but "
                    f"{', '.join(static)} has a fixed (or no) dimension 0 in the manifest; export with a dynamic "
                    "batch dimension (the default) or serve with --max-batch-size 1"
                )

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(s) for s in self.manifest["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [s["name"] for s in self.manifest["outputs"]]


def load_runtime(config: ServeConfig):
    """The Runtime a worker serves: warmed up at every batch size dynamic batching can form, so that no
    request pays for compiling a new shape. Tests build their reference the same way."""
    from torchbridge.runtime import Runtime

    warmup_batches = list(range(1, config.max_batch_size + 1)) if config.max_batch_size > 1 else []
    return Runtime(config.artifact, device=config.device, threads=config.threads, warmup_batches=warmup_batches)


# ---------------------------------------------------------------------------------------------- bodies


class RequestError(Exception):
    """What the client sent cannot be run; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _json_array(name: str, value: Any, spec: TensorSpec) -> torch.Tensor:
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype) or dtype.is_complex:
        raise RequestError(f"input '{name}': {spec.dtype} cannot be sent as JSON numbers; send {NPY} or {NPZ}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as error:  # ragged nesting, integers past 64 bits
        raise RequestError(f"input '{name}': not a rectangular nested list of numbers ({error})") from None
    # A float input takes integers too; an integer input takes no fractions; a bool input only true/false.
    accepted = "b" if dtype == torch.bool else ("iuf" if dtype.is_floating_point else "iu")
    if array.dtype.kind not in accepted:
        raise RequestError(
            f"input '{name}': expected {spec.dtype} values for {spec}, got JSON values numpy reads as {array.dtype}"
        )
    if array.dtype.kind in "iu" and not dtype.is_floating_point and array.size:
        info = torch.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise RequestError(f"input '{name}': values outside the range of {spec.dtype} for {spec}")
    return torch.from_numpy(array).to(dtype)


def _named(arrays: dict[str, Any], specs: list[TensorSpec], kind: str) -> list[Any]:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    unknown = [n for n in arrays if n not in names]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(map(repr, missing))}")
        if unknown:
            parts.append(f"unknown {', '.join(map(repr, unknown))}")
        raise RequestError(f"{kind} body: {'; '.join(parts)}; the model's inputs are {', '.join(map(str, specs))}")
    return [arrays[n] for n in names]


def _npy_array(data: bytes, what: str) -> np.ndarray:
    if not data.startswith(b"\x93NUMPY"):
        raise RequestError(f"{what}: not a .npy array (it starts with {data[:8]!r}, not the .npy magic b'\\x93NUMPY')")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:
        raise RequestError(f"{what}: not a readable .npy array ({error})") from None


def _tensor(array: np.ndarray, name: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError as error:
        raise RequestError(f"input '{name}': numpy dtype {array.dtype} has no tensor equivalent ({error})") from None


def decode_body(content_type: str, body: bytes, specs: list[TensorSpec]) -> tuple[str, list[torch.Tensor]]:
    """(kind of body, the inputs in the manifest's order) or RequestError; the runtime checks shapes and dtypes."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("", JSON, "text/json"):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise RequestError(f"malformed JSON body ({error})") from None
        if not isinstance(data, dict):
            raise RequestError(
                f"JSON body: expected an object mapping input names to nested lists "
                f"({', '.join(map(str, specs))}), got {type(data).__name__}"
            )
        values = _named(data, specs, "JSON")
        return JSON, [_json_array(spec.name, value, spec) for spec, value in zip(specs, values)]
    if kind in (NPY, "application/octet-stream"):
        if len(specs) != 1:
            raise RequestError(
                f"a .npy body carries one array but the model takes {len(specs)} inputs "
                f"({', '.join(map(str, specs))}): send {NPZ} (numpy.savez, one array per input name) or JSON"
            )
        return NPY, [_tensor(_npy_array(body, ".npy body"), specs[0].name)]
    if kind == NPZ:
        try:
            archive = np.load(io.BytesIO(body), allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            arrays = {name: archive[name] for name in archive.files}
        except RequestError:
            raise
        except Exception as error:
            raise RequestError(f"not a readable .npz archive ({error})") from None
        values = _named(arrays, specs, ".npz")
        return NPZ, [_tensor(value, spec.name) for spec, value in zip(specs, values)]
    raise RequestError(f"unsupported Content-Type '{content_type}': send {JSON}, {NPY} or {NPZ}", status=415)


def encode_body(kind: str, names: list[str], outputs: list[torch.Tensor]) -> tuple[bytes, str]:
    """The response body for a request of `kind`: JSON floats are written with Python's repr, which reads
    back to the same float32/float64 bits (NaN and Infinity as Python's json writes them)."""
    if kind == JSON:
        return json.dumps({n: t.tolist() for n, t in zip(names, outputs)}).encode(), JSON
    buffer = io.BytesIO()
    if kind == NPY and len(outputs) == 1:
        np.save(buffer, outputs[0].numpy(), allow_pickle=False)
        return buffer.getvalue(), NPY
    np.savez(buffer, **{n: t.numpy() for n, t in zip(names, outputs)})
    return buffer.getvalue(), NPZ


def _error_response(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


# ---------------------------------------------------------------------------------------------- the API


@dataclass
class _Call:
    kind: str
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor] | None = None
    batch: str = ""
    error: RequestError | None = None

    @property
    def rows(self) -> int:
        return int(self.inputs[0].shape[0]) if self.inputs and self.inputs[0].dim() else 1

    def shape_key(self) -> tuple:
        return tuple((t.dtype, tuple(t.shape[1:])) for t in self.inputs)


def _status(error: TorchbridgeError) -> int:
    # 'input' and 'invalid_argument': what the client sent; anything else: the model failed on valid input.
    return 400 if getattr(error, "code", "") in ("input", "invalid_argument") else 500


class ArtifactAPI(ls.LitAPI):
    """One worker: a torchbridge Runtime behind LitServe's request loop.

    A failed request never raises out of decode/predict/encode: LitServe answers every request of a
    batch with the first exception raised, so each call carries its own error to encode_response.
    """

    def __init__(self, config: ServeConfig):
        super().__init__(
            max_batch_size=config.max_batch_size,
            batch_timeout=config.batch_timeout_ms / 1000 if config.max_batch_size > 1 else 0.0,
        )
        self.config = config
        self.runtime = None
        self._batches = itertools.count()

    def setup(self, device) -> None:
        self.runtime = load_runtime(self.config)
        self.specs = self.config.input_specs
        self.output_names = self.config.output_names

    def decode_request(self, request) -> _Call:
        try:
            kind, inputs = decode_body(request.get("content_type", ""), request.get("body", b""), self.specs)
            self.runtime.validate(*inputs)
            return _Call(kind, inputs)
        except RequestError as error:
            return _Call(JSON, [], error=error)
        except TorchbridgeError as error:
            return _Call(JSON, [], error=RequestError(str(error), _status(error)))

    def batch(self, calls: list[_Call]) -> list[_Call]:
        return calls  # concatenated in predict, per group of calls whose shapes agree beyond dimension 0

    def unbatch(self, calls: list[_Call]) -> list[_Call]:
        return calls

    def predict(self, calls):
        if isinstance(calls, _Call):  # no batching
            if calls.error is None:
                self._run([calls])
            return calls
        groups: dict[tuple, list[_Call]] = {}
        for call in calls:
            if call.error is None:
                groups.setdefault(call.shape_key(), []).append(call)
        for group in groups.values():
            chunk: list[_Call] = []
            for call in group:
                if chunk and sum(c.rows for c in chunk) + call.rows > self.config.max_batch_size:
                    self._run(chunk)
                    chunk = []
                chunk.append(call)
            self._run(chunk)
        return calls

    def _forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [t.cpu() for t in self.runtime.forward(*inputs)]

    def _run(self, calls: list[_Call]) -> None:
        if not calls:
            return
        batch = f"{os.getpid()}.{next(self._batches)}"
        total = sum(c.rows for c in calls)
        if len(calls) > 1:
            try:
                inputs = [torch.cat(parts) for parts in zip(*(c.inputs for c in calls))]
                outputs = self._forward(inputs)
            except TorchbridgeError:
                outputs = None  # run them one by one below, so that each error reaches its own request
            # An output whose dimension 0 is not the batch cannot be split back: run each call alone.
            if outputs is not None and all(o.dim() and o.shape[0] == total for o in outputs):
                start = 0
                for call in calls:
                    call.outputs = [o[start : start + call.rows] for o in outputs]
                    call.batch = f"{batch} rows {start}:{start + call.rows} of {total}"
                    start += call.rows
                return
            for call in calls:
                self._run([call])
            return
        call = calls[0]
        try:
            call.outputs = self._forward(call.inputs)
            call.batch = f"{batch} rows 0:{call.rows} of {call.rows}"
        except TorchbridgeError as error:
            call.error = RequestError(str(error), _status(error))

    def encode_response(self, call: _Call) -> Response:
        if call.error is not None:
            return _error_response(call.error.status, str(call.error))
        try:
            body, media_type = encode_body(call.kind, self.output_names, call.outputs)
        except Exception as error:
            return _error_response(500, f"cannot encode the outputs as {call.kind}: {error}")
        return Response(body, media_type=media_type, headers={BATCH_HEADER: call.batch})


# ---------------------------------------------------------------------------------------------- metrics


class Metrics:
    """Counts and latency percentiles of the predict endpoint, as the HTTP server saw them."""

    def __init__(self, window: int = 10000):
        self.lock = threading.Lock()
        self.started = time.time()
        self.statuses: Counter[int] = Counter()
        self.latencies: deque[float] = deque(maxlen=window)
        self.batch_rows: deque[int] = deque(maxlen=window)

    def record(self, status: int, seconds: float, batch_rows: int | None) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.latencies.append(seconds)
            if batch_rows is not None:
                self.batch_rows.append(batch_rows)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            latencies = sorted(self.latencies)
            rows = list(self.batch_rows)
            statuses = dict(self.statuses)

        def percentile(q: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, math.ceil(q * len(latencies)) - 1)] * 1000, 3)

        return {
            "requests": sum(statuses.values()),
            "responses": {str(k): v for k, v in sorted(statuses.items())},
            "errors": sum(v for k, v in statuses.items() if k >= 400),
            "latency_ms": {"window": len(latencies), "p50": percentile(0.5), "p99": percentile(0.99)},
            "mean_batch_rows": round(sum(rows) / len(rows), 3) if rows else None,
            "uptime_s": round(time.time() - self.started, 1),
        }


class _MetricsMiddleware:
    """ASGI middleware timing each request to the predict path, from its arrival to its response's start."""

    def __init__(self, app, metrics: Metrics, path: str):
        self.app, self.metrics, self.path = app, metrics, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        seen = {"status": 500, "rows": None}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == BATCH_HEADER.lower().encode():
                        seen["rows"] = int(value.decode().rsplit(" of ", 1)[1])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.record(seen["status"], time.perf_counter() - start, seen["rows"])


class _RawBodyHandler(RegularRequestHandler):
    """Hands the body to the worker untouched (LitServe would parse it as JSON), so .npy/.npz arrive as bytes."""

    async def _prepare_request(self, request, request_type) -> dict:
        return {"content_type": request.headers.get("content-type", ""), "body": await request.body()}


class ArtifactServer(ls.LitServer):
    def __init__(self, config: ServeConfig):
        self.metrics = Metrics()
        api = ArtifactAPI(config)
        super().__init__(
            api,
            accelerator="cpu" if config.device == "cpu" else "auto",
            workers_per_device=config.workers,
            timeout=config.timeout_s,
            model_metadata={
                "artifact": str(config.artifact),
                "inputs": config.manifest["inputs"],
                "outputs": config.manifest["outputs"],
                "max_batch_size": config.max_batch_size,
                "batch_timeout_ms": config.batch_timeout_ms,
                "workers": config.workers,
                "threads_per_worker": config.threads,
            },
            middlewares=[(_MetricsMiddleware, {"metrics": self.metrics, "path": api.api_path})],
        )

        async def metrics() -> JSONResponse:
            return JSONResponse(self.metrics.snapshot())

        self.app.add_api_route("/metrics", metrics, methods=["GET"])

    def _register_api_endpoints(self, lit_api, request_type, response_type):
        handler = _RawBodyHandler(lit_api, self)

        async def predict(request: Request) -> Response:
            return await handler.handle_request(request, Request)

        self.app.add_api_route(lit_api.api_path, predict, methods=["POST"])


def serve(
    artifact: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_batch_size: int = 1,
    batch_timeout_ms: float = 5.0,
    threads: int | None = None,
    timeout_s: float = 60.0,
    log_level: str = "warning",
) -> None:
    """Serve an artifact over HTTP until interrupted (see the module's docstring for the endpoints).

    threads: LibTorch intra-op threads per worker (default: the cores divided by the workers).
    max_batch_size > 1 turns on dynamic batching (the artifact's batch dimension must be dynamic).
    """
    config = ServeConfig(
        Path(artifact),
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        max_batch_size=max_batch_size,
        batch_timeout_ms=batch_timeout_ms,
        timeout_s=timeout_s,
        log_level=log_level,
    )
    config.check()
    server = ArtifactServer(config)
    batching = (
        f"dynamic batching up to {config.max_batch_size} rows, {config.batch_timeout_ms:g} ms"
        if config.max_batch_size > 1
        else "no batching"
    )
    print(
        f"torchbridge serve: {config.artifact} on http://{host}:{port}/predict; {config.workers} worker(s) x "
        f"{config.threads} thread(s), {batching}; /health turns 200 after warm-up",
        file=sys.stderr,
        flush=True,
    )
    # One API server in this process (a thread): /metrics then sees every request, and nothing forks a
    # process that has LibTorch's thread pools loaded.
    server.run(
        host=host,
        port=port,
        num_api_servers=1,
        api_server_worker_type="thread",
        generate_client_file=False,
        log_level=log_level,
        access_log=False,
    )
