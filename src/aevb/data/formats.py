"""Parsers for the data sets' original file formats: IDX (MNIST, Fashion-MNIST),
Larochelle's ``.amat`` text (statically binarized MNIST) and MATLAB ``.mat`` (Frey Face)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .files import DataError

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e}); the file is corrupt or truncated") from None


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """An IDX array: magic 0x0000TTNN (type TT, NN dimensions), NN big-endian sizes, the values."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_TYPES.get(data[2]), data[3]
    if dtype is None or ndim == 0:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: IDX header is truncated")
    shape = tuple(int(v) for v in np.frombuffer(data, ">u4", ndim, 4))
    dt = np.dtype(dtype)
    expected = header + int(np.prod(shape)) * dt.itemsize
    if len(data) != expected:
        raise DataError(f"{name}: IDX size mismatch (header says {shape}, needs {expected} bytes, has {len(data)})")
    return np.frombuffer(data, dt, offset=header).reshape(shape)


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    arr = parse_idx(_read_bytes(path), str(path))
    if arr.ndim != expected_ndim:
        raise DataError(f"{path}: expected a {expected_ndim}-dimensional IDX array, got shape {arr.shape}")
    return arr


def parse_amat(data: bytes, cols: int = 784, name: str = "amat data") -> np.ndarray:
    """Rows of ``cols`` single-digit 0/1 tokens separated by spaces (2 bytes per token)."""
    width = 2 * cols
    if not data or len(data) % width:
        raise DataError(f"{name}: size {len(data)} is not a whole number of {cols}-value rows; truncated or not .amat")
    raw = np.frombuffer(data, np.uint8).reshape(-1, width)
    seps = raw[:, 1::2]
    if not ((seps[:, :-1] == ord(" ")).all() and (seps[:, -1] == ord("\n")).all()):
        raise DataError(f"{name}: unexpected separators; not a binarized-MNIST .amat file")
    values = raw[:, ::2] - ord("0")
    if values.max(initial=0) > 1:
        raise DataError(f"{name}: values other than 0 and 1; not a binarized-MNIST .amat file")
    return values.astype(np.uint8)


def read_amat(path: Path) -> np.ndarray:
    return parse_amat(_read_bytes(path), name=str(path))


def read_frey(path: Path) -> np.ndarray:
    """Frey Face: variable ``ff`` (560 x 1965, uint8) -> (1965, 28, 20) images."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several exception types for bad files
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from None
    ff = mat.get("ff")
    if ff is None or ff.shape != (560, 1965):
        raise DataError(f"{path}: expected variable 'ff' of shape (560, 1965)")
    return np.ascontiguousarray(ff.T.reshape(-1, 28, 20))
