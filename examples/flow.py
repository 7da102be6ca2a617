"""The torchbridge flow end to end: train on the digits, export, run in C++, prove parity.

python examples/flow.py [--epochs 5] [--out flow-output]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torchbridge as tb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("flow-output"))
    args = parser.parse_args()

    data = tb.data.DigitsDataModule()
    model = tb.models.digits_cnn()
    result = tb.train(model, data, max_epochs=args.epochs, root_dir=args.out / "train")
    print(f"eager test accuracy: {result.test_accuracy:.4f}")

    x = data.example_batch(4)
    artifact = tb.export(model, example_inputs=(x,), path=args.out / "model.pt")
    print(f"exported {artifact.path}: inputs {[str(s) for s in artifact.inputs]}")

    runtime = tb.Runtime(artifact.path, device="cpu", threads=2)
    images, labels = data.dataset("test").tensors
    accuracy = (runtime(images).argmax(dim=1) == labels).float().mean().item()
    print(f"C++ runtime test accuracy: {accuracy:.4f}")

    report = tb.verify(model, artifact.path, threads=2)
    print(report.table())


if __name__ == "__main__":
    main()
