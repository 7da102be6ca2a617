"""One benchmark path alone in a fresh process: import, load, first call, peak RSS.

    python /path/to/torchbridge/_bench_worker.py '<json spec>'     (how torchbridge.bench runs it)
    python -m torchbridge._bench_worker '<json spec>'

spec: {"path": "eager" | "torchscript" | "aoti" | "libtorch" | "cpp" | "onnxruntime",
       "file": the model pickle or artifact, "threads": N, "batch_sizes": [1, 32],
       "inputs": {"1": "inputs_1.pt", ...} (lists of tensors saved by torch.save),
       "calls": more calls per batch size after the first ones, "result": where to write the JSON,
       "modules": for eager, the modules to import before unpickling (the model's classes)}

The result holds import_ms (the modules the path needs), load_ms, first_call_ms per batch size
(the first forward at that size, batch sizes in the order given, so only the first one is the
first call after load), rss_after_import_mb, peak_rss_by_batch_mb (VmHWM, see _rss_mb, after the calls
at each batch size in turn) and peak_rss_mb at the end; or "error".

torchbridge.bench runs this file by its path rather than with -m so that the eager, torchscript,
aoti and onnxruntime processes import only torch (and onnxruntime), as a user's process running
that path would: `import torchbridge` also imports Lightning. The libtorch and cpp paths import
torchbridge, which is what using them costs.
"""

from __future__ import annotations

import os
import sys

# Run as a file, Python puts this package's folder first on sys.path, where models.py, data.py,
# hooks.py ... would shadow any top-level module of those names: take it out before any import.
if (
    __name__ == "__main__"
    and sys.path
    and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__))
):
    del sys.path[0]


def _rss_mb() -> float:
    """Peak RSS of this process in MB: VmHWM from /proc/self/status (what torchbridge-run reports).
    Not getrusage's ru_maxrss: Linux carries the parent's peak across fork and exec into it, so a
    worker started by a 900 MB benchmark process would read at least 900 MB whatever it does."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _loader(kind: str, modules: list[str], optimized_from_batch: int = 0, batch_sizes=()):
    """Import what `kind` needs; return a function file, threads -> callable(list of tensors).
    modules: for eager, the modules defining the model's classes, imported here so that load
    times only the unpickling, as in a process that already has the model's code."""
    import importlib

    import torch

    if kind == "eager":
        for name in modules:
            importlib.import_module(name)

        def load(file, threads):
            model = torch.load(file, weights_only=False).eval()
            return lambda inputs: model(*inputs)

    elif kind == "torchscript":

        def load(file, threads):
            module = torch.jit.load(file)
            return lambda inputs: module(*inputs)

    elif kind == "aoti":
        import torch._inductor

        def load(file, threads):
            package = torch._inductor.aoti_load_package(file)
            return lambda inputs: package(*inputs)

    elif kind == "libtorch":
        from torchbridge.mirror import load_in_python

        def load(file, threads):
            _, module = load_in_python(file, optimized_from_batch)
            return lambda inputs: module(*inputs)

    elif kind == "cpp":
        import torchbridge

        def load(file, threads):
            # Told the batch sizes to come, as torchbridge-run is by --batch: compiled at load.
            runtime = torchbridge.Runtime(file, threads=threads, warmup_batches=batch_sizes)
            return lambda inputs: runtime.forward(*inputs)

    elif kind == "onnxruntime":
        import onnxruntime

        def load(file, threads):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(file, options, providers=["CPUExecutionProvider"])
            names = [i.name for i in session.get_inputs()]
            return lambda inputs: session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})

    else:
        raise ValueError(f"unknown path '{kind}'")
    return load


def measure(spec: dict) -> dict:
    import time

    start = time.perf_counter()
    batch_sizes = [int(b) for b in spec["batch_sizes"]]
    load = _loader(spec["path"], spec.get("modules", []), int(spec.get("optimized_from_batch", 0)), batch_sizes)
    import torch

    import_ms = (time.perf_counter() - start) * 1000.0
    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    rss_after_import = _rss_mb()
    inputs = {b: torch.load(spec["inputs"][str(b)], weights_only=True) for b in batch_sizes}

    start = time.perf_counter()
    forward = load(spec["file"], threads)
    load_ms = (time.perf_counter() - start) * 1000.0
    first_call_ms, peak_by_batch = {}, {}
    with torch.inference_mode():
        for b in batch_sizes:
            start = time.perf_counter()
            forward(inputs[b])
            first_call_ms[str(b)] = (time.perf_counter() - start) * 1000.0
            for _ in range(int(spec.get("calls", 5))):
                forward(inputs[b])
            peak_by_batch[str(b)] = _rss_mb()
    return {
        "import_ms": import_ms,
        "load_ms": load_ms,
        "first_call_ms": first_call_ms,
        "rss_after_import_mb": rss_after_import,
        "peak_rss_mb": _rss_mb(),
        "peak_rss_by_batch_mb": peak_by_batch,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    import json
    from pathlib import Path

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: _bench_worker.py '<json spec>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    result: dict = {"path": spec["path"]}
    try:
        result.update(measure(spec))
    except Exception as error:  # reported in the benchmark, not raised: the other paths go on
        message = str(error).strip().splitlines()
        result["error"] = f"{type(error).__name__}: {message[0] if message else ''}"
    Path(spec["result"]).write_text(json.dumps(result))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
