"""The deprecation warnings torchbridge expects from torch, filtered by exact message.

TorchScript (torch.jit) is deprecated since torch 2.11 and eager quantization (torch.ao) is
deprecated toward torchao; torchbridge still builds on both because LibTorch runs their output.
Each call would otherwise print a FutureWarning to the user; the README states the deprecation
once instead. Any other warning passes through.
"""

from __future__ import annotations

import contextlib
import warnings

TORCHSCRIPT_MESSAGE = r"`torch\.jit\.\w+` is deprecated"
QUANTIZATION_MESSAGES = (
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation",
)


@contextlib.contextmanager
def expected_deprecations():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHSCRIPT_MESSAGE)  # Future- or DeprecationWarning
        for message in QUANTIZATION_MESSAGES:
            warnings.filterwarnings("ignore", message=message)
        yield
