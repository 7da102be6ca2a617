"""Comparing tensors: what every stage (export's checks, verify, the layer-wise diagnosis, bench)
uses to run a module on inputs and judge its outputs against a reference."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from torchbridge.artifact import dtype_name, flatten_outputs
from torchbridge.errors import ExportError, TorchbridgeError


def tensor_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    """A tensor or a non-empty tuple/list of tensors, as a tuple; anything else is refused."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise TorchbridgeError("example_inputs must be a tensor or a non-empty tuple of tensors")
    for i, tensor in enumerate(example_inputs):
        if not isinstance(tensor, torch.Tensor):
            raise TorchbridgeError(f"example input {i} must be a torch.Tensor, got {type(tensor).__name__}")
    return tuple(example_inputs)


def example_tuple(example_inputs) -> tuple[torch.Tensor, ...]:
    """tensor_tuple, plus what export needs: dtypes a manifest can name, finite values, CPU copies."""
    example_inputs = tensor_tuple(example_inputs)
    for i, tensor in enumerate(example_inputs):
        dtype_name(tensor.dtype)
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise TorchbridgeError(f"example input {i} contains NaN or Inf; export needs finite example inputs")
    return tuple(t.detach().cpu() for t in example_inputs)


def run_module(module, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t.detach() for t in flatten_outputs(module(*inputs))]


def max_errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(max |actual - expected|, that divided by max |expected|); inf for a shape or dtype mismatch."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return float("inf"), float("inf")
    if actual.is_quantized:
        actual = actual.dequantize()
    if expected.is_quantized:
        expected = expected.dequantize()
    if actual.numel() == 0:
        return 0.0, 0.0
    a, e = actual.double(), expected.double()
    same = (a == e) | (torch.isnan(a) & torch.isnan(e))
    diff = torch.where(same, torch.zeros_like(a), (a - e).abs())
    max_abs = float(diff.nan_to_num(nan=float("inf")).max())
    scale = float(e[torch.isfinite(e)].abs().max()) if torch.isfinite(e).any() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return max_abs, max_rel


def within_tolerance(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> bool:
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return False
    if actual.is_quantized:
        actual = actual.dequantize()
    if expected.is_quantized:
        expected = expected.dequantize()
    return bool(torch.isclose(actual.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True).all())


def default_atol(expected: Sequence[torch.Tensor], rtol: float) -> float:
    """The absolute tolerance paired with `rtol`: rtol x the largest |value| among the floating
    tensors in `expected`, so that values near zero are judged on the tensor's own scale."""
    scale = max((float(t.abs().max()) for t in expected if t.is_floating_point() and t.numel()), default=1.0)
    return rtol * max(scale, 1e-6)


def fresh_inputs(
    example: Sequence[torch.Tensor], dynamic_dims: Sequence[Sequence[int]], seed: int, dynamic_size: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Random inputs unlike the example: same dtype and static dims, values drawn to cover both
    signs and larger magnitudes, dynamic dims resized to `dynamic_size`."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for tensor, dims in zip(example, dynamic_dims):
        shape = list(tensor.shape)
        if dynamic_size is not None:
            for d in dims:
                shape[d] = dynamic_size
        if tensor.is_floating_point():
            scale = float(tensor.float().abs().max()) or 1.0
            sample = torch.randn(shape, generator=generator) * scale * (1 + seed % 3)
            if seed % 2:
                sample = -sample.abs()
            out.append(sample.to(tensor.dtype))
        elif tensor.dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=generator).bool())
        else:
            low = int(tensor.min()) if tensor.numel() else 0
            high = int(tensor.max()) + 1 if tensor.numel() else 2
            out.append(torch.randint(low, max(high, low + 1), shape, generator=generator).to(tensor.dtype))
    return tuple(out)


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def compare_or_raise(
    what: str, candidate: list[torch.Tensor], reference: list[torch.Tensor], rtol: float, atol: float, hint: str
) -> None:
    if len(candidate) != len(reference):
        raise ExportError(f"{what}: {len(candidate)} output(s), eager model gives {len(reference)}. {hint}")
    for i, (c, r) in enumerate(zip(candidate, reference)):
        if not within_tolerance(c, r, rtol, atol):
            max_abs, max_rel = max_errors(c, r)
            raise ExportError(
                f"{what}: output {i} differs from the eager model (max abs {max_abs:.3g}, max rel {max_rel:.3g}; "
                f"rtol {rtol:g}, atol {atol:.3g}). {hint}"
            )
