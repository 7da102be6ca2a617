from __future__ import annotations

import subprocess

import pytest
import torch
from torch import nn

import torchbridge as tb
from torchbridge.runtime import cli_path

THREADS = 2


def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401

        return True
    except Exception:  # PyPI's torchvision does not import beside torch's CPU-only wheel
        return False


requires_torchvision = pytest.mark.skipif(
    not torchvision_available(), reason="torchvision not importable beside this torch"
)


class Branchy(nn.Module):
    """Data-dependent control flow: only `script` exports it faithfully."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            y = self.a(x)
        else:
            y = -self.b(x)
        for _ in range(int(x.shape[1]) // 3):
            y = torch.tanh(y)
        return y


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
        self.table = nn.Linear(3, 5)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joint = self.image(image) + self.table(features)
        return joint.softmax(dim=1), joint.argmax(dim=1)


def digits(n: int = 4) -> torch.Tensor:
    return tb.data.DigitsDataModule().example_batch(n)


def seeded(factory):
    torch.manual_seed(0)
    return factory().eval()


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(cli_path()), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode >= 0, f"torchbridge-run died from signal {-result.returncode}: {result.stderr}"
    return result


@pytest.fixture(scope="session")
def cnn_artifact(tmp_path_factory):
    model = seeded(tb.models.digits_cnn)
    path = tmp_path_factory.mktemp("cnn") / "cnn.pt"
    tb.export(model, (digits(),), path)
    return model, path


def reseal(path) -> None:
    """Write the digest record of the archive at `path` again to match its records: what a test
    that edits an artifact on purpose needs to reach the checks after the SHA-256 one."""
    import zipfile

    from torchbridge.artifact import DIGEST_RECORD, digest_record

    with zipfile.ZipFile(path) as archive:
        items = [(item, archive.read(item.filename)) for item in archive.infolist()]
    digests = digest_record({item.filename.split("/", 1)[1]: data for item, data in items})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for item, data in items:
            archive.writestr(item, digests if item.filename.endswith("/" + DIGEST_RECORD) else data)
