"""Real data with no download: the 1,797 handwritten 8x8 digits shipped inside scikit-learn."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

# Fixed split sizes of the 1,797 images: 1,257 train, 180 validation, 360 test.
VAL_SIZE = 180
TEST_SIZE = 360
SPLIT_SEED = 0


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as (N, 1, 8, 8) float32 in [0, 1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels


def split_indices(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/val/test split (same on every machine, independent of torch's RNG)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    test = order[:TEST_SIZE]
    val = order[TEST_SIZE : TEST_SIZE + VAL_SIZE]
    train = order[TEST_SIZE + VAL_SIZE :]
    return train, val, test


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's handwritten digits as a LightningDataModule with a fixed split.

    Inputs are float32 tensors of shape (batch, 1, 8, 8) scaled to [0, 1]; targets are int64 class
    indices 0-9.
    """

    num_classes = 10
    input_shape = (1, 8, 8)

    def __init__(self, batch_size: int = 64, num_workers: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        images, labels = load_digits_tensors()
        train, val, test = split_indices(len(labels))
        for name, index in (("train", train), ("val", val), ("test", test)):
            index = torch.from_numpy(index)
            self._splits[name] = TensorDataset(images[index], labels[index])

    def dataset(self, split: str) -> TensorDataset:
        self.setup()
        return self._splits[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split), batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def example_batch(self, size: int = 4, split: str = "test") -> torch.Tensor:
        """The first `size` images of a split, for export examples and calibration."""
        return self.dataset(split).tensors[0][:size].clone()
