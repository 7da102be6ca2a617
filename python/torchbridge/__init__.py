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

Importing the package loads what exporting and running need; training, data, pruning, quantization
and benchmarking (Lightning, scikit-learn) load on first use of their names, so that a process
that only runs artifacts does not pay for the trainer (nor the server, LitServe).
"""

import importlib as _importlib
import os as _os
import sys as _sys
import types as _types

import torch  # noqa: F401  (loads LibTorch before the native module)

from torchbridge import aoti, hooks, models
from torchbridge.artifact import Artifact, TensorSpec, load_manifest
from torchbridge.errors import ExportError, NonFiniteError, ParityError, QuantizationError, TorchbridgeError
from torchbridge.export import export
from torchbridge.runtime import Runtime, RuntimeOptions, read_npy
from torchbridge.verify import ParityReport, diagnose_layers, verify
from torchbridge.version import __version__ as __version__

#: For C++ projects: cmake -DCMAKE_PREFIX_PATH=<this> finds torchbridgeConfig.cmake (find_package(torchbridge)).
cmake_prefix_path = _os.path.join(_os.path.dirname(__file__), "share", "cmake")

#: Names loaded on first use: name -> (module, attribute; None for the module itself).
_LAZY = {
    "BenchReport": ("bench", "BenchReport"),
    "bench": ("bench", "bench"),
    "callbacks": ("callbacks", None),
    "data": ("data", None),
    "SparsityReport": ("prune", "SparsityReport"),
    "prune": ("prune", "prune"),
    "prune_and_fine_tune": ("prune", "prune_and_fine_tune"),
    "prune_channels": ("prune", "prune_channels"),
    "quantize": ("quantize", "quantize"),
    "serve": ("serving", "serve"),
    "TrainResult": ("train", "TrainResult"),
    "evaluate": ("train", "evaluate"),
    "train": ("train", "train"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'torchbridge' has no attribute '{name}'")
    module, attribute = _LAZY[name]
    loaded = _importlib.import_module(f"torchbridge.{module}")
    value = loaded if attribute is None else getattr(loaded, attribute)
    globals()[name] = value
    return value


class _Package(_types.ModuleType):
    # Importing the submodule torchbridge.train (or prune, quantize, bench) binds the package's
    # attribute of that name to the module; the public name is the function, as before lazy loading.
    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, _types.ModuleType) and _LAZY.get(name, ("", None))[1] is not None:
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

__all__ = [
    "Artifact",
    "BenchReport",
    "ExportError",
    "NonFiniteError",
    "ParityError",
    "ParityReport",
    "QuantizationError",
    "Runtime",
    "RuntimeOptions",
    "SparsityReport",
    "TensorSpec",
    "TorchbridgeError",
    "TrainResult",
    "aoti",
    "bench",
    "callbacks",
    "cmake_prefix_path",
    "data",
    "diagnose_layers",
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
