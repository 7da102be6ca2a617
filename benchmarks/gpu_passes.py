"""Which TorchScript passes make ResNet-18 fast on a CUDA GPU: the measurement behind the runtime's
load-time default there (freeze + optimize_for_inference with contiguous weights, channels-last
inputs, then a CUDA graph per input shape).

    python benchmarks/gpu_passes.py              # on a GPU machine, about 30 s
    python benchmarks/gpu_passes.py --profile    # also the top CUDA kernels at batch 256, fp16

Random-weight torchvision ResNet-18, 3x224x224, p50 in ms of 30 calls, each followed by a device
synchronize; cuDNN benchmark mode on, as the runtime sets it. Variants, per dtype and batch:
optimize_for_inference on contiguous weights (its conv + bias (+ add) + ReLU fusion into cuDNN
applies: the counts of cudnn_convolution_relu / cudnn_convolution_add_relu in the graph are
printed) with a channels-last or an NCHW input; freeze alone on channels-last weights and input
(the runtime's fp16 path before this measurement); at batch 1 also as CUDA graphs replayed from
Python; the fused model's max |diff| / max |eager|.
"""

import argparse
import statistics
import time
import warnings

import torch
import torchvision
from gpu import python_graph  # benchmarks/gpu.py, beside this script
from torch.profiler import ProfilerActivity, profile

warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")


def timeit(fn, *args, n=30):
    for _ in range(6):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def top_kernels(fn, x, rows=10):
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_passes.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    base = torchvision.models.resnet18().eval()
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    with torch.inference_mode():
        for dtype in (torch.half, torch.float):
            for batch in (256, 1):
                x = torch.randn(batch, 3, 224, 224, device="cuda").to(dtype)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                model = torchvision.models.resnet18().eval()
                model.load_state_dict(base.state_dict())
                model = model.cuda().to(dtype)
                reference = model(x).float()
                fused = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x).eval()))
                graph = str(fused.graph)
                out = {"fused ops": (graph.count("cudnn_convolution_relu"), graph.count("cudnn_convolution_add_relu"))}
                out["ofi contig w, CL in"] = timeit(fused, x_cl)
                out["ofi contig w, NCHW in"] = timeit(fused, x)
                model_cl = model.to(memory_format=torch.channels_last)
                frozen = torch.jit.freeze(torch.jit.trace(model_cl, x_cl).eval())
                out["freeze CL w, CL in"] = timeit(frozen, x_cl)
                error = (fused(x_cl).float() - reference).abs().max() / reference.abs().max()
                out["err fused vs eager"] = error.item()
                if batch == 1:
                    out["graph ofi CL in"] = timeit(python_graph(fused, x_cl))
                    out["graph freeze CL"] = timeit(python_graph(frozen, x_cl))
                shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}
                print(dtype, batch, shown, flush=True)
                if args.profile and batch == 256 and dtype == torch.half:
                    for name, fn in (("eager, channels-last", model_cl), ("freeze", frozen), ("fused", fused)):
                        print("==", name, "(3 forwards)")
                        print(top_kernels(fn, x_cl))


if __name__ == "__main__":
    main()
