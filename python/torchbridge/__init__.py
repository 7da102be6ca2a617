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
"""

import os as _os

import torch  # noqa: F401  (loads LibTorch before the native module)

from torchbridge import aoti, data, hooks, models
from torchbridge.artifact import Artifact, TensorSpec, load_manifest
from torchbridge.bench import BenchReport, bench  # the function shadows the module: from torchbridge.bench import ...
from torchbridge.errors import ExportError, NonFiniteError, ParityError, QuantizationError, TorchbridgeError
from torchbridge.export import export
from torchbridge.prune import SparsityReport, prune, prune_and_fine_tune, prune_channels
from torchbridge.quantize import quantize
from torchbridge.runtime import Runtime, read_npy
from torchbridge.train import TrainResult, evaluate, train
from torchbridge.verify import ParityReport, verify
from torchbridge.version import __version__ as __version__

#: For C++ projects: cmake -DCMAKE_PREFIX_PATH=<this> finds torchbridgeConfig.cmake (find_package(torchbridge)).
cmake_prefix_path = _os.path.join(_os.path.dirname(__file__), "share", "cmake")


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
    "train",
    "verify",
]
