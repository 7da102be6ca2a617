"""torchbridge: train, compress and export PyTorch models; run them in C++ with proven parity.

import torchbridge as tb
model = tb.models.digits_cnn()
tb.train(model, tb.data.DigitsDataModule(), max_epochs=5)
model = tb.prune_channels(model, (x,), amount=0.5).model   # or tb.prune(model, "l1_unstructured", 0.5)
tb.export(model, example_inputs=(x,), path="model.pt")   # or "model.pt2": torch.export + AOTInductor
int8 = tb.quantize(model, mode="static")   # or "dynamic", "qat"; exports the same way
y = tb.Runtime("model.pt", threads=2)(x)
tb.verify(model, "model.pt")
tb.bench(model, (x,), out_dir="bench")   # eager, TorchScript, LibTorch, C++, CLI, onnxruntime side by side
tb.serve("model.pt", port=8000, max_batch_size=8)   # HTTP with dynamic batching (LitServe)
"""

import os as _os
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

import torch  # noqa: F401  (loads LibTorch before the native module)

from torchbridge import aoti, data, hooks, models
from torchbridge.bench import BenchReport, bench  # the function shadows the module: from torchbridge.bench import ...
from torchbridge.errors import ExportError, NonFiniteError, ParityError, QuantizationError, TorchbridgeError
from torchbridge.export import Artifact, TensorSpec, export, load_manifest
from torchbridge.prune import SparsityReport, prune, prune_and_fine_tune, prune_channels
from torchbridge.quantize import quantize
from torchbridge.runtime import Runtime, read_npy
from torchbridge.train import TrainResult, evaluate, train
from torchbridge.verify import ParityReport, verify


def serve(artifact, **options) -> None:
    """Serve an artifact over HTTP until interrupted: torchbridge.serving.serve (needs LitServe,
    pip install 'torchbridge[serve]'; imported only when called)."""
    from torchbridge.serving import serve as run

    run(artifact, **options)


#: For C++ projects: cmake -DCMAKE_PREFIX_PATH=<this> finds torchbridgeConfig.cmake (find_package(torchbridge)).
cmake_prefix_path = _os.path.join(_os.path.dirname(__file__), "share", "cmake")

try:
    __version__ = _version("torchbridge")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "Artifact",
    "BenchReport",
    "ExportError",
    "NonFiniteError",
    "ParityError",
    "ParityReport",
    "QuantizationError",
    "Runtime",
    "SparsityReport",
    "TensorSpec",
    "TorchbridgeError",
    "TrainResult",
    "aoti",
    "bench",
    "cmake_prefix_path",
    "data",
    "evaluate",
    "export",
    "hooks",
    "load_manifest",
    "models",
    "prune",
    "prune_and_fine_tune",
    "prune_channels",
    "quantize",
    "read_npy",
    "serve",
    "train",
    "verify",
]
