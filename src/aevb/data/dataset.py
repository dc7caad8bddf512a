"""What every data set is read into (``Dataset`` of ``Split`` s), and the one way its splits are cut.

A leaf of ``aevb.data``: it knows no data set by name and imports nothing from the
package but ``DataError`` (from ``files``, which imports only the standard library).

A split holds its images one of two ways: ``Split``, a float32 tensor (every data set but
dSprites), or ``PackedSplit``, binary images packed eight pixels a byte (dSprites: 737,280
64x64 images are 377 MB packed, 12 GB as float32), unpacked to float32 per batch by
``images(rows)``. Both have the same interface: ``len``, row indexing, ``to(device)``,
``images(rows)``, ``image_shape``, ``value_range()``, ``storage``, ``y`` and ``factors``;
``x`` is the whole split as float32 (for a packed split, unpacked on every access).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .files import DataError


def _rows_of(t: torch.Tensor | None, rows: slice | torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[rows]


def _moved(t: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    return None if t is None else t.to(device)


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor | None = None  # (N,) int64
    factors: torch.Tensor | None = None  # (N, K) int64: each image's ground-truth factor classes (Factors)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, rows: slice | torch.Tensor) -> "Split":
        """The same rows of x, y and factors."""
        return Split(self.x[rows], _rows_of(self.y, rows), _rows_of(self.factors, rows))

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), _moved(self.y, device), _moved(self.factors, device))

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        """The images at ``rows`` (an int64 index tensor on x's device), (B, C, H, W) float32."""
        return torch.index_select(self.x, 0, rows)  # faster than x[rows] on CPU

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def storage(self) -> torch.Tensor:
        """The tensor that holds the images in memory (x itself)."""
        return self.x

    def value_range(self) -> tuple[float, float, bool]:
        """The smallest and largest value and whether every value is exactly 0 or 1."""
        return self.x.min().item(), self.x.max().item(), bool(((self.x == 0) | (self.x == 1)).all())


_BIT_SHIFTS: dict[torch.device, torch.Tensor] = {}


def unpack_bits(bits: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(B, ceil(C*H*W/8)) uint8 bytes of ``np.packbits`` (most significant bit first) -> (B, C, H, W)
    float32 of 0.0 and 1.0, on the bytes' device."""
    shifts = _BIT_SHIFTS.get(bits.device)
    if shifts is None:
        shifts = _BIT_SHIFTS[bits.device] = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    n_pixels = shape[0] * shape[1] * shape[2]
    on = torch.bitwise_and(torch.bitwise_right_shift(bits.unsqueeze(-1), shifts), 1)  # (B, bytes, 8)
    return on.reshape(len(bits), -1)[:, :n_pixels].to(torch.float32).reshape(len(bits), *shape)


def pack_bits(images: np.ndarray) -> np.ndarray:
    """(N, ...) of 0/1 (bool or integer) -> (N, ceil(pixels/8)) uint8, eight pixels a byte (``np.packbits``)."""
    return np.packbits(images.reshape(len(images), -1).astype(bool, copy=False), axis=1)


@dataclass
class PackedSplit:
    """Binary images packed eight pixels a byte: ``bits`` (N, ceil(C*H*W/8)) uint8 in
    ``np.packbits`` order (row-major pixels, most significant bit first). Training reads
    batches through ``images(rows)``, which unpacks only those rows."""

    bits: torch.Tensor
    image_shape: tuple[int, int, int]  # (C, H, W)
    y: torch.Tensor | None = None
    factors: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, rows: slice | torch.Tensor) -> "PackedSplit":
        return PackedSplit(self.bits[rows], self.image_shape, _rows_of(self.y, rows), _rows_of(self.factors, rows))

    def to(self, device: torch.device | str) -> "PackedSplit":
        return PackedSplit(self.bits.to(device), self.image_shape, _moved(self.y, device), _moved(self.factors, device))

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        return unpack_bits(torch.index_select(self.bits, 0, rows), self.image_shape)

    @property
    def x(self) -> torch.Tensor:
        """Every image of the split, unpacked: (N, C, H, W) float32 (4 bytes a pixel: index the split first)."""
        return unpack_bits(self.bits, self.image_shape)

    @property
    def storage(self) -> torch.Tensor:
        return self.bits

    def value_range(self) -> tuple[float, float, bool]:
        return 0.0, 1.0, True


AnySplit = Split | PackedSplit


@dataclass(frozen=True)
class Factors:
    """The ground-truth factors of a data set whose splits carry ``factors``: column k of a split's
    ``factors`` holds class indices 0 .. len(values[k]) - 1 of the factor ``names[k]``, whose
    values (e.g. dSprites' scales 0.5 .. 1) are ``values[k]``."""

    names: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.values)


@dataclass
class Dataset:
    name: str
    train: AnySplit
    valid: AnySplit | None
    test: AnySplit
    binary: bool  # every value is exactly 0 or 1
    num_classes: int | None = None
    factors: Factors | None = None  # the splits' ground-truth factors (None: they carry none)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def split(self, name: str) -> AnySplit:
        s = {"train": self.train, "valid": self.valid, "test": self.test}.get(name)
        if s is None:
            raise DataError(f"data set {self.name} has no {name!r} split")
        return s

    def to(self, device: torch.device | str) -> "Dataset":
        return dataclasses.replace(self, train=self.train.to(device), valid=self.valid.to(device) if self.valid else None,
                                   test=self.test.to(device))


def hold_out(train: AnySplit, n_valid: int) -> tuple[AnySplit, AnySplit | None]:
    """The last ``n_valid`` examples of ``train`` as the validation split (0: none), the rest for training."""
    if n_valid == 0:
        return train, None
    if n_valid >= len(train):
        raise DataError(f"valid_size {n_valid} leaves no training data (the training split has {len(train)})")
    cut = len(train) - n_valid
    return train[:cut], train[cut:]


def shuffled_splits(x: torch.Tensor, y: torch.Tensor | None, n_test: int, n_valid: int,
                    seed: int = 0, factors: torch.Tensor | None = None) -> tuple[Split, Split | None, Split]:
    """Train, validation (None when ``n_valid`` is 0) and test splits of one pool of examples.

    The examples are shuffled by ``numpy.random.default_rng(seed).permutation`` (a numpy
    permutation, not torch's, so the splits are the ones aevb has always cut); the last
    ``n_test`` are the test split and, of the rest, the last ``n_valid`` the validation split.
    """
    return shuffled_pool(Split(x, y, factors), n_test, n_valid, seed)  # type: ignore[return-value]


def shuffled_pool(pool: AnySplit, n_test: int, n_valid: int, seed: int = 0) -> tuple[AnySplit, AnySplit | None, AnySplit]:
    """``shuffled_splits`` of a split of either kind (a ``PackedSplit`` stays packed)."""
    n = len(pool)
    if not 0 < n_test < n:
        raise DataError(f"a test split of {n_test} needs between 1 and {n - 1} of the {n} examples")
    pool = pool[torch.from_numpy(np.random.default_rng(seed).permutation(n))]
    cut = n - n_test
    train, valid = hold_out(pool[:cut], n_valid)
    return train, valid, pool[cut:]
