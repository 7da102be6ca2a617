"""torchbridge's one exception type (shared with the native runtime) and its refinements."""

from __future__ import annotations

import torch  # noqa: F401  (loads LibTorch before the native module links against it)

from torchbridge._C import Error as TorchbridgeError

TorchbridgeError.__module__ = "torchbridge"
TorchbridgeError.__doc__ = (
    "Raised by every torchbridge failure; `code` says the cause: 'invalid_argument', 'artifact', "
    "'input', 'runtime' (from the C++ runtime), 'export', 'quantize' or 'parity'."
)
TorchbridgeError.code = "runtime"


class ExportError(TorchbridgeError):
    """The model cannot be exported faithfully (e.g. tracing lost a data-dependent branch)."""

    code = "export"


class QuantizationError(TorchbridgeError):
    """The model cannot be quantized as asked (no layer to quantize, calibration or int8 run fails)."""

    code = "quantize"


class ParityError(TorchbridgeError):
    """Python and C++ outputs differ beyond tolerance; `report` holds the comparison."""

    code = "parity"

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
