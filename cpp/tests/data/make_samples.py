"""Writes the small artifacts and .npy files the C++ tests (ctest) and examples/cpp_app run on.

    python cpp/tests/data/make_samples.py      # needs torch and the torchbridge package

The outputs are committed (a few KB in all), so the C++ build and its tests need no Python.
Rerun this only when the artifact format changes; seeds keep the numbers the same.

  tiny_mlp.pt                      TinyMLP, x: float32[?, 4] -> float32[?, 3]
  tiny_mlp_input.npy               a batch of 3 (the artifact's golden example holds 2)
  tiny_mlp_output.npy              the eager model's output on it
  tiny_mlp_input_truncated.npy     tiny_mlp_input.npy cut short inside its data
  tiny_mlp_state_dict.pt           torch.save of the weights: not an artifact, must be refused
  tiny_mlp_plain.pt                plain torch.jit.save, no torchbridge manifest
  two_io.pt                        TwoInTwoOut, (x: float32[?, 4], index: int64[?]) -> two outputs
  two_io_input_0.npy, two_io_input_1.npy, two_io_output_0.npy, two_io_output_1.npy
  tiny_mlp_app_output.txt, two_io_app_output.txt
                                   what examples/cpp_app must print for those inputs, from Python
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import torchbridge as tb

HERE = Path(__file__).resolve().parent


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.hidden(x)))


class TwoInTwoOut(nn.Module):
    """Mixed input dtypes and a tuple output, for the multi-input/multi-output paths."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.embed = nn.Embedding(5, 3)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.proj(x) + self.embed(index)
        return scores, x.abs().sum(dim=1)


def save(name: str, tensor: torch.Tensor) -> None:
    np.save(HERE / name, tensor.detach().numpy(), allow_pickle=False)


def app_printout(outputs: list[torch.Tensor]) -> str:
    """The outputs as examples/cpp_app prints them: a header per output, then one row per line."""
    lines = []
    for i, output in enumerate(outputs):
        array = output.detach().numpy()
        lines.append(f"output {i}: {array.dtype}[{', '.join(str(d) for d in array.shape)}]")
        rows = array.reshape(-1, array.shape[-1] if array.ndim else 1)
        if array.size:
            for row in rows:
                lines.append(" ".join(f"{v:.6f}" if array.dtype.kind == "f" else str(int(v)) for v in row))
    return "\n".join(lines) + "\n"


def main() -> None:
    # TorchScript is deprecated upstream (see README); torchbridge still builds on it.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)

    mlp = TinyMLP().eval()
    x = torch.randn(3, 4, generator=generator)
    tb.export(mlp, (x,), HERE / "tiny_mlp.pt", method="script")
    save("tiny_mlp_input.npy", x)
    with torch.no_grad():
        y = mlp(x)
    save("tiny_mlp_output.npy", y)
    (HERE / "tiny_mlp_app_output.txt").write_text(app_printout([y]))
    data = (HERE / "tiny_mlp_input.npy").read_bytes()
    (HERE / "tiny_mlp_input_truncated.npy").write_bytes(data[: len(data) - 10])
    torch.save(mlp.state_dict(), HERE / "tiny_mlp_state_dict.pt")
    torch.jit.save(torch.jit.script(mlp), HERE / "tiny_mlp_plain.pt")

    two = TwoInTwoOut().eval()
    x2 = torch.randn(3, 4, generator=generator)
    index = torch.tensor([0, 4, 2])
    tb.export(two, (x2, index), HERE / "two_io.pt", method="script")
    save("two_io_input_0.npy", x2)
    save("two_io_input_1.npy", index)
    with torch.no_grad():
        scores, norms = two(x2, index)
    save("two_io_output_0.npy", scores)
    save("two_io_output_1.npy", norms)
    (HERE / "two_io_app_output.txt").write_text(app_printout([scores, norms]))

    for path in sorted(HERE.iterdir()):
        if path.suffix in (".pt", ".npy", ".txt"):
            print(f"{path.name:32s} {path.stat().st_size:6d} bytes")


if __name__ == "__main__":
    main()
