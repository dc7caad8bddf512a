"""What every data set is read into (``Dataset`` of ``Split`` s), and the one way its splits are cut.

A leaf of ``aevb.data``: it knows no data set by name and imports nothing from the
package but ``DataError`` (from ``files``, which imports only the standard library).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .files import DataError


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor | None = None  # (N,) int64

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, rows: slice | torch.Tensor) -> "Split":
        """The same rows of x and y."""
        return Split(self.x[rows], None if self.y is None else self.y[rows])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), None if self.y is None else self.y.to(device))


@dataclass
class Dataset:
    name: str
    train: Split
    valid: Split | None
    test: Split
    binary: bool  # every value is exactly 0 or 1
    num_classes: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> Split:
        s = {"train": self.train, "valid": self.valid, "test": self.test}.get(name)
        if s is None:
            raise DataError(f"data set {self.name} has no {name!r} split")
        return s

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.name, self.train.to(device), self.valid.to(device) if self.valid else None,
                       self.test.to(device), self.binary, self.num_classes)


def hold_out(train: Split, n_valid: int) -> tuple[Split, Split | None]:
    """The last ``n_valid`` examples of ``train`` as the validation split (0: none), the rest for training."""
    if n_valid == 0:
        return train, None
    if n_valid >= len(train):
        raise DataError(f"valid_size {n_valid} leaves no training data (the training split has {len(train)})")
    cut = len(train) - n_valid
    return train[:cut], train[cut:]


def shuffled_splits(x: torch.Tensor, y: torch.Tensor | None, n_test: int, n_valid: int,
                    seed: int = 0) -> tuple[Split, Split | None, Split]:
    """Train, validation (None when ``n_valid`` is 0) and test splits of one pool of examples.

    The examples are shuffled by ``numpy.random.default_rng(seed).permutation`` (a numpy
    permutation, not torch's, so the splits are the ones aevb has always cut); the last
    ``n_test`` are the test split and, of the rest, the last ``n_valid`` the validation split.
    """
    if not 0 < n_test < len(x):
        raise DataError(f"a test split of {n_test} needs between 1 and {len(x) - 1} of the {len(x)} examples")
    pool = Split(x, y)[torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))]
    cut = len(x) - n_test
    train, valid = hold_out(pool[:cut], n_valid)
    return train, valid, pool[cut:]
