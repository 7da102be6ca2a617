"""Which TorchScript passes make ResNet-18 fast on this CPU: the measurement behind the runtime's
load-time default (freeze + oneDNN Graph fusion per input shape) and the options it does not take.

    python benchmarks/runtime_passes.py                # batch 1, 2 threads then 1 thread (about a minute)
    python benchmarks/runtime_passes.py --threads 2 --batch 8

Every variant runs the same random-weight torchvision ResNet-18 on the same 3x224x224 input, timed
interleaved in turns (torchbridge.timing.time_interleaved), p50 in ms and the ratio to eager.
oneDNN Graph fusion is registered only while its own modules compile (torchbridge's
OneDnnFusionScope), so no other variant is fused. onnxruntime is included when it imports.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path

import torch
import torchvision

from torchbridge import _C
from torchbridge._warnings import expected_deprecations
from torchbridge.bench import TURN
from torchbridge.mirror import RuntimeMirror
from torchbridge.timing import time_interleaved


def variants(workdir: Path, x: torch.Tensor, threads: int) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    model_cl = torchvision.models.resnet18().eval()
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    path = workdir / "resnet18.pt"
    with expected_deprecations(), torch.no_grad():
        torch.jit.save(torch.jit.trace(model, x), str(path))
        traced_cl = torch.jit.trace(model_cl, x_cl)

        def load():
            return torch.jit.load(str(path)).eval()

        optimized = torch.jit.optimize_for_inference(load())

        def no_executor_optimization(inputs):
            with torch.jit.optimized_execution(False):
                return optimized(inputs)

        found = {
            "eager": (model, x),
            "eager, channels-last": (model_cl, x_cl),
            "torchscript as loaded": (load(), x),
            "freeze": (torch.jit.freeze(load()), x),
            "freeze + optimize_for_inference": (optimized, x),
            "  ... with executor optimization off": (no_executor_optimization, x),
            "  ... with a channels-last input": (optimized, x_cl),
            "freeze, channels-last weights and input": (torch.jit.freeze(traced_cl.eval()), x_cl),
        }
    with contextlib.suppress(ImportError):
        import onnxruntime

        onnx_path = workdir / "resnet18.onnx"
        torch.onnx.export(model, (x,), str(onnx_path), dynamo=True, verbose=False, external_data=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        found["onnxruntime"] = (lambda inputs: session.run(None, {name: inputs.numpy()}), x)
    return found, load, traced_cl, x_cl


def measure(threads: int, batch: int, runs: int) -> None:
    torch.set_num_threads(threads)
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as workdir, torch.inference_mode():
        found, load, traced_cl, x_cl = variants(Path(workdir), x, threads)
        # The runtime's default, as its Python mirror runs it (the pass registered only while each
        # shape compiles), and the same fusion on channels-last weights and input.
        found["freeze + oneDNN Graph fusion (runtime default)"] = (RuntimeMirror(load), x)
        with expected_deprecations():
            fused_cl = torch.jit.freeze(traced_cl.eval())
        with _C.OneDnnFusionScope():
            fused_cl(x_cl)
            fused_cl(x_cl)
        found["  ... with channels-last weights and input"] = (fused_cl, x_cl)
        calls = {label: (lambda fn=fn, inputs=inputs: fn(inputs)) for label, (fn, inputs) in found.items()}
        samples = time_interleaved(calls, runs, warmup=4, block=TURN)
    eager = statistics.median(samples["eager"])
    print(f"ResNet-18 3x224x224, batch {batch}, {threads} thread(s), {runs} timed calls each, p50")
    width = max(map(len, samples))
    for label, values in samples.items():
        p50 = statistics.median(values)
        print(f"  {label:<{width}}  {p50:8.2f} ms  {p50 / eager:5.2f}x eager")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    for threads in args.threads:
        measure(threads, args.batch, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
