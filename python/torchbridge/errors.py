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


class NonFiniteError(TorchbridgeError):
    """A module's forward or backward produced NaN or Inf (raised by torchbridge.hooks.detect_anomalies).

    module: qualified name of the module ("layer1.0.conv1"; "" for the model's input or the loss),
    module_type, phase ("forward" or "backward"), tensor (which tensor), shape, kind ("NaN", "Inf"),
    step (training step, or forward call count when no step is set).
    """

    code = "nonfinite"

    def __init__(
        self,
        message: str,
        module: str = "",
        module_type: str = "",
        phase: str = "forward",
        tensor: str = "",
        shape: tuple[int, ...] = (),
        kind: str = "NaN",
        step: int | None = None,
    ):
        super().__init__(message)
        self.module = module
        self.module_type = module_type
        self.phase = phase
        self.tensor = tensor
        self.shape = tuple(shape)
        self.kind = kind
        self.step = step
