"""The C++ runtime on a CUDA device: CUDA graphs per input shape, fp16, the CLI's GPU bench.

Every test skips without a GPU (CI has none); they run on a machine with one, see docs/performance.md, On a GPU.
"""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch

import torchbridge as tb
from conftest import Branchy, digits, requires_torchvision, run_cli, seeded
from torchbridge import _C

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Graph replay runs the kernels a direct run runs (cuDNN's algorithm is cached per shape): the two
# agree to rounding. Against eager PyTorch on the GPU the runtime runs other kernels (BatchNorm
# folded, convolution + bias + ReLU fused in cuDNN, TF32 in fp32): compared relative to the largest
# output.
SAME_KERNELS = dict(rtol=1e-5, atol=1e-6)


def assert_near_eager(actual: torch.Tensor, expected: torch.Tensor, bound: float = 5e-3) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    relative = ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
    assert relative < bound, f"max |diff| / max |expected| = {relative:.2e} (bound {bound:.0e})"


def test_cuda_graphs_are_the_default_and_match_direct_runs(cnn_artifact):
    model, path = cnn_artifact
    graphs = tb.Runtime(path, device="cuda")
    direct = tb.Runtime(path, device="cuda", cuda_graphs=False)
    assert "cuda_graphs" in graphs.optimization, graphs.optimization
    assert "cuda_graphs" not in direct.optimization, direct.optimization
    eager = copy.deepcopy(model).cuda()
    for batch in (1, 5, 64):
        x = digits(batch).cuda()
        y = graphs(x)
        assert y.device.type == "cuda"
        torch.testing.assert_close(y, direct(x), **SAME_KERNELS)
        with torch.inference_mode():
            assert_near_eager(y, eager(x))


def test_outputs_of_a_replay_are_not_overwritten_by_the_next(cnn_artifact):
    _, path = cnn_artifact
    rt = tb.Runtime(path, device="cuda")
    a, b = digits(8).cuda(), torch.randn(8, 1, 8, 8, device="cuda")
    ya = rt(a)
    kept = ya.clone()
    yb = rt(b)
    torch.testing.assert_close(ya, kept, rtol=0, atol=0)
    assert not torch.equal(ya, yb)


def test_shapes_beyond_the_graph_cap_run_without_graphs(cnn_artifact):
    _, path = cnn_artifact
    graphs = tb.Runtime(path, device="cuda")
    direct = tb.Runtime(path, device="cuda", cuda_graphs=False)
    for batch in range(1, _C.CUDA_GRAPH_SHAPES + 3):
        x = torch.randn(batch, 1, 8, 8, device="cuda")
        torch.testing.assert_close(graphs(x), direct(x), **SAME_KERNELS)


def test_threads_share_one_graph(cnn_artifact):
    _, path = cnn_artifact
    rt = tb.Runtime(path, device="cuda")
    direct = tb.Runtime(path, device="cuda", cuda_graphs=False)
    inputs = [torch.randn(4, 1, 8, 8, device="cuda") for _ in range(4)]
    expected = [direct(x) for x in inputs]
    results: dict[int, list[torch.Tensor]] = {}

    def worker(i: int) -> None:
        results[i] = [rt(inputs[i]) for _ in range(50)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    for i in range(4):
        for y in results[i]:
            torch.testing.assert_close(y, expected[i], **SAME_KERNELS)


def test_a_model_that_syncs_with_the_host_runs_without_a_graph(tmp_path, capfd):
    model = seeded(Branchy)
    path = tmp_path / "branchy.pt"
    tb.export(model, (torch.randn(2, 6),), path, method="script")
    rt = tb.Runtime(path, device="cuda")
    eager = model.cuda()
    for x in (torch.randn(2, 6, device="cuda"), -torch.ones(3, 6, device="cuda")):
        with torch.inference_mode():
            assert_near_eager(rt(x), eager(x))
    assert "no CUDA graph for input shapes" in capfd.readouterr().err


@requires_torchvision
def test_fp16_resnet18_agrees_with_fp32(tmp_path):
    model = seeded(lambda: tb.models.torchvision_model("resnet18", num_classes=1000, in_channels=None))
    x = torch.randn(4, 3, 64, 64)
    path = tmp_path / "resnet18.pt"
    tb.export(model, (x,), path)
    rt = tb.Runtime(path, device="cuda", precision="fp16")
    assert "cuda_graphs" in rt.optimization
    y = rt(x.cuda())
    assert y.dtype == torch.float32
    with torch.inference_mode():
        reference = model.cuda()(x.cuda())
    assert_near_eager(y, reference, bound=2e-2)
    assert torch.equal(y.argmax(1), reference.argmax(1))


def test_cli_bench_on_gpu(cnn_artifact):
    _, path = cnn_artifact
    result = run_cli(path, "--device", "cuda", "--bench", "20", "--batch", "16", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "cuda_graphs" in report["optimization"]
    assert report["bench"]["inputs_on"].startswith("cuda")
    assert report["bench"]["p50_ms"] > 0 and report["bench"]["host_copies_p50_ms"] > 0
    off = json.loads(run_cli(path, "--device", "cuda", "--bench", "5", "--no-cuda-graphs", "--json").stdout)
    assert "cuda_graphs" not in off["optimization"]
