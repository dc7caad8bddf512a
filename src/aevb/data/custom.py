"""Your own data: ``folder:PATH`` (a folder of PNG/JPEG images) and ``npy:PATH`` (an array file).

    aevb train --dataset folder:photos --image-size 64 --channels 3 --architecture conv
    aevb train --dataset npy:faces.npz --architecture conv --likelihood discretized_logistic

``folder:PATH``
    Every ``.png``, ``.jpg`` and ``.jpeg`` file under PATH (sub-folders included; hidden
    files skipped; other files skipped with a ``SkippedFiles`` warning naming them), read with
    Pillow in sorted path order. When every image sits in a
    sub-folder of PATH, the sub-folder names (sorted) are the class labels 0, 1, ...;
    when every image sits directly in PATH there are no labels; a mixture is an error.
    ``DataConfig.channels`` 1 or 3 converts to grey or RGB (default: grey when every
    image is grey, else RGB; alpha is dropped). ``DataConfig.image_size`` (height, width)
    brings every image to that size, by ``fit="resize"`` (ignores the aspect ratio) or
    ``fit="crop"`` (scales the shorter side, then cuts the centre); without it every
    image must already have the same size. Pixels are scaled by their bit depth: divided by
    65535 in 16-bit grey PNGs, by 255 in every other image (Pillow reads other 16-bit PNGs as
    8 bits). Before any pixel is decoded, the headers give the data set's size: one that would
    not fit in the free memory is refused with the estimate.

``npy:PATH``
    A ``.npy`` array of images, or a ``.npz`` with key ``x`` and optional ``y`` (integer
    labels, one per image). ``x`` is (N, H, W), or 4-D: channels-last (N, H, W, C) when the
    last axis has 1 or 3 entries, else channels-first (N, C, H, W) with C of 1 or 3.
    uint8 values are divided by 255; float values must already lie in [0, 1] (NaN and
    Inf are rejected). A ``.npz`` may carry ground-truth factors for the disentanglement
    metrics: ``factors``, (N, K) numbers, one row per image (each column's distinct values,
    at most 1000, sorted, become that factor's classes 0, 1, ...), and optionally
    ``factor_names``, K strings (default ``factor_0``, ``factor_1``, ...).

Splits (both sources, cut by ``aevb.data.dataset.shuffled_splits`` as for digits and frey_face):
the images are shuffled with a fixed permutation (numpy seed 0);
the last 10% (at least 1) are the test split, and the last ``valid_size`` (default 10%,
at least 1; 0 for none) of the rest the validation split. At least 3 images are needed.
Every problem raises ``DataError`` with one line that names the file.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from .dataset import Dataset, Factors, shuffled_splits
from .files import DataError

PREFIXES = ("folder:", "npy:")
NPY_MAGIC, ZIP_MAGIC, EMPTY_ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def is_custom(name: str) -> bool:
    return name.startswith(PREFIXES)


def absolute(name: str) -> str:
    """``folder:rel/path`` -> ``folder:/abs/rel/path``; other names unchanged."""
    if not is_custom(name):
        return name
    kind, _, path = name.partition(":")
    return f"{kind}:{Path(path).expanduser().absolute()}" if path else name


def load_custom(cfg: DataConfig) -> Dataset:
    """The ``Dataset`` named ``folder:PATH`` or ``npy:PATH``."""
    kind, _, path = cfg.dataset.partition(":")
    if not path:
        raise DataError(f"{cfg.dataset!r}: give a path after '{kind}:'")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{kind}:{path}: no such {'folder' if kind == 'folder' else 'file'}")
    x, y, classes = _read_folder(p, cfg) if kind == "folder" else _read_arrays(p)
    factors, grid = _read_factors(p, len(x)) if kind == "npy" else (None, None)
    return _splits(cfg.dataset, x, y, classes, cfg.valid_size, factors, grid)


# --- folders of images ------------------------------------------------------------------


class SkippedFiles(UserWarning):
    """Files of a ``folder:`` data set that are not PNG or JPEG images, left out (the message names them)."""


def _read_folder(root: Path, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"folder:{root}: not a folder (use npy:{root} for an array file)")
    found = sorted(f for f in root.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))
    files = [f for f in found if f.suffix.lower() in IMAGE_SUFFIXES]
    other = [str(f.relative_to(root)) for f in found if f.suffix.lower() not in IMAGE_SUFFIXES]
    if not files:
        also = f"; found only {_some(other)}" if other else ""
        raise DataError(f"folder:{root}: no images found (expected .png, .jpg or .jpeg files){also}")
    if other:
        warnings.warn(f"folder:{root}: skipped {len(other)} file(s) that are not PNG or JPEG images: {_some(other)}",
                      SkippedFiles, stacklevel=4)
    depths = {len(f.relative_to(root).parts) for f in files}
    if depths - {1, 2} or depths == {1, 2}:
        raise DataError(f"folder:{root}: put every image either directly in the folder (no labels) or in one level "
                        "of sub-folders named by class (labels); found a mixture or deeper nesting")
    labelled = depths == {2}
    classes = sorted({f.parent.name for f in files}) if labelled else []

    def opened(f: Path, decode: bool):
        try:
            im = Image.open(f)
            if decode:
                im.load()
            return im
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
            raise DataError(f"folder:{root}: cannot read image {f.relative_to(root)} ({e})") from None

    headers = []  # (width, height), mode: read from each file's header, no pixel decoded yet
    for f in files:
        with opened(f, decode=False) as im:
            headers.append((im.size, im.mode))
    channels = cfg.channels or (1 if all(mode in _GREY_MODES for _, mode in headers) else 3)
    size = cfg.image_size
    if size is None:
        sizes = {wh for wh, _ in headers}
        if len(sizes) > 1:
            (w0, h0), (w1, h1) = sorted(sizes)[:2]
            raise DataError(f"folder:{root}: images have {len(sizes)} different sizes (e.g. {h0}x{w0} and {h1}x{w1}, "
                            "height x width); choose one: image_size (--image-size on the command line)")
        w, h = sizes.pop()
        size = (h, w)
    _check_memory(f"folder:{root}", len(files), channels, size,
                  hint="choose a smaller image_size (--image-size on the command line)" if cfg.image_size else
                  "bring them to a smaller size with image_size (--image-size on the command line, e.g. 64)")
    x = torch.empty(len(files), channels, *size)  # (N, C, H, W), filled one image at a time
    for i, f in enumerate(files):
        with opened(f, decode=True) as im:
            x[i] = _pixels(im, channels, size, cfg.fit)
    y = torch.tensor([classes.index(f.parent.name) for f in files], dtype=torch.int64) if labelled else None
    return x, y, (len(classes) if labelled else None)


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grey PNGs (Pillow keeps their depth)


def _pixels(im, channels: int, size: tuple[int, int], fit: str) -> torch.Tensor:
    """One image as (C, H, W) float32 values in [0, 1], scaled by its bit depth (16-bit grey by
    1/65535; Pillow gives every other PNG and JPEG as 8 bits, scaled by 1/255)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        im = im.convert("F")  # exact for 16-bit values; resized in floating point
        scale = 65535.0
    else:
        im = im.convert("L" if channels == 1 else "RGB")
        scale = 255.0
    if im.size != (size[1], size[0]):
        im = _fit(im, size, fit)
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32) / scale).clamp_(0, 1)
    if arr.ndim == 2:  # grey: (H, W) -> (C, H, W), copied into 3 channels for an RGB data set
        return arr.expand(channels, *arr.shape)
    return arr.permute(2, 0, 1)


def _some(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` names, and how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _check_memory(name: str, n: int, channels: int, size: tuple[int, int], hint: str) -> None:
    """Refuse ``n`` images of ``size`` (H, W) that would not fit in the free memory as float32
    tensors (the data set and, while it is split, a second copy), before any is decoded."""
    from ..memory import FLOAT_BYTES, available_bytes, format_bytes

    need = 2 * n * channels * size[0] * size[1] * FLOAT_BYTES
    free = available_bytes("cpu")
    if free is None or need <= free:
        return
    h, w = size
    raise DataError(f"{name}: {n} images of {h}x{w} pixels ({channels} channel(s)) need about {format_bytes(need)} "
                    f"as float32 tensors but this machine has {format_bytes(free)} free; {hint}")


def _fit(im, size: tuple[int, int], fit: str):
    from PIL import Image, ImageOps

    h, w = size
    if fit == "crop":
        return ImageOps.fit(im, (w, h), method=Image.Resampling.BILINEAR)
    return im.resize((w, h), Image.Resampling.BILINEAR)


# --- arrays -----------------------------------------------------------------------------


def _read_arrays(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    name = f"npy:{path}"
    if path.is_dir():
        raise DataError(f"{name}: is a folder (use folder:{path} for a folder of images)")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic:
        raise DataError(f"{name}: the file is empty")
    if not magic.startswith((NPY_MAGIC, ZIP_MAGIC, EMPTY_ZIP_MAGIC)):
        raise DataError(f"{name}: not a readable .npy or .npz file: it starts with {magic!r}, not with the "
                        "signature of a NumPy array (np.save) or of a zip archive (np.savez)")
    try:
        # a .npy is mapped, not read: its shape is checked against the free memory before its values are read
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if magic.startswith(NPY_MAGIC) else None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "allow_pickle" in text or "Python objects" in text:  # an array of Python objects, stored pickled
            raise DataError(f"{name}: holds an array of Python objects (pickled), which aevb never loads; "
                            "save a numeric array (uint8 or float)") from None
        raise DataError(f"{name}: not a readable .npy or .npz file ({text}); it is truncated or corrupt") from None
    if isinstance(loaded, np.ndarray):
        x, y = loaded, None
    else:
        with loaded:
            if "x" not in loaded.files:
                raise DataError(f"{name}: the .npz has no array 'x' (found: {', '.join(loaded.files) or 'none'})")
            try:
                x = loaded["x"]
                y = loaded["y"] if "y" in loaded.files else None
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                text = str(e).splitlines()[0] if str(e) else type(e).__name__
                if "allow_pickle" in text:
                    raise DataError(f"{name}: holds an array of Python objects (pickled), which aevb never loads; "
                                    "save numeric arrays (uint8 or float images, integer labels)") from None
                raise DataError(f"{name}: cannot read its arrays ({text}); the file is truncated or corrupt") from None
    x = _images_from_array(x, name)
    labels, n_classes = None, None
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{name}: y must hold one label per image ({len(x)}); got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{name}: y must hold the class labels as non-negative integers; got dtype {y.dtype}")
        if len(y) and y.min() < 0:
            raise DataError(f"{name}: y has negative labels ({int((y < 0).sum())} of them, the smallest {y.min()}); "
                            "labels must be non-negative integers 0, 1, ...")
        labels = torch.from_numpy(y.astype(np.int64))
        n_classes = int(y.max()) + 1 if len(y) else None
    return x, labels, n_classes


MAX_FACTOR_VALUES = 1000


def _read_factors(path: Path, n: int) -> tuple[torch.Tensor | None, Factors | None]:
    """A ``.npz``'s ground-truth factors, as (n, K) int64 classes and their ``Factors``; (None, None) without."""
    name = f"npy:{path}"
    with open(path, "rb") as f:
        if not f.read(4).startswith(ZIP_MAGIC):
            return None, None
    with np.load(path, allow_pickle=False) as loaded:
        if "factors" not in loaded.files:
            return None, None
        try:
            values = loaded["factors"]
            names = loaded["factor_names"] if "factor_names" in loaded.files else None
        except ValueError:
            raise DataError(f"{name}: factors and factor_names must be numeric and string arrays, not Python "
                            "objects (pickled)") from None
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or len(values) != n:
        raise DataError(f"{name}: factors must be (N, K) with one row per image ({n}); got shape {values.shape}")
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
        raise DataError(f"{name}: factors must be numbers; got dtype {values.dtype}")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise DataError(f"{name}: factors has NaN or infinite values")
    k = values.shape[1]
    if names is None:
        names = [f"factor_{i}" for i in range(k)]
    elif names.shape != (k,) or not (np.issubdtype(names.dtype, np.str_) or np.issubdtype(names.dtype, np.bytes_)):
        raise DataError(f"{name}: factor_names must be {k} strings, one per factor column; got {names.dtype} {names.shape}")
    classes, grid = [], []
    for j in range(k):
        uniq, inverse = np.unique(values[:, j], return_inverse=True)
        if len(uniq) > MAX_FACTOR_VALUES:
            raise DataError(f"{name}: factor {names[j]} has {len(uniq)} distinct values; the metrics need discrete "
                            f"factors (at most {MAX_FACTOR_VALUES} values each): bin it first")
        classes.append(inverse.reshape(-1))
        grid.append(tuple(float(v) for v in uniq))
    factors = torch.from_numpy(np.stack(classes, 1).astype(np.int64))
    return factors, Factors(tuple(str(v) for v in names), tuple(grid))


def _images_from_array(x: np.ndarray, name: str) -> torch.Tensor:
    if x.ndim not in (3, 4):
        raise DataError(f"{name}: x must be (N, H, W), (N, H, W, C) or (N, C, H, W); got {x.ndim} dimensions {x.shape}")
    if x.ndim == 4:
        if x.shape[-1] in (1, 3):
            x = np.moveaxis(x, -1, 1)  # (N, H, W, C) -> (N, C, H, W)
        elif x.shape[1] not in (1, 3):
            raise DataError(f"{name}: cannot tell the channel axis of shape {x.shape}; need 1 or 3 channels, first or last")
    if 0 in x.shape:
        raise DataError(f"{name}: x holds no images (shape {x.shape})")
    n, c, h, w = (x.shape[0], 1, *x.shape[1:]) if x.ndim == 3 else x.shape
    _check_memory(name, n, c, (h, w), hint="use fewer or smaller images")
    x = np.array(x)  # read a mapped .npy into memory (and never share a tensor with the file)
    if x.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    elif np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise DataError(f"{name}: x has {bad} NaN or infinite value(s)")
        lo, hi = x.min(), x.max()
        if lo < 0 or hi > 1:
            raise DataError(f"{name}: values of dtype {x.dtype} must lie in [0, 1] (uint8 is scaled by 1/255); "
                            f"found [{lo}, {hi}]")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    else:
        raise DataError(f"{name}: x has dtype {x.dtype}; expected uint8 or float")
    return t.unsqueeze(1) if t.ndim == 3 else t  # (N, H, W) -> (N, 1, H, W)


# --- splits -----------------------------------------------------------------------------


def _splits(name: str, x: torch.Tensor, y: torch.Tensor | None, n_classes: int | None,
            valid_size: int | None, factors: torch.Tensor | None = None, grid: Factors | None = None) -> Dataset:
    n = len(x)
    if n < 3:
        raise DataError(f"{name}: found {n} image(s); at least 3 are needed (train, validation and test)")
    n_test = max(1, n // 10)
    n_valid = max(1, n // 10) if valid_size is None else valid_size
    if n_valid >= n - n_test:
        raise DataError(f"{name}: valid_size {n_valid} leaves no training data ({n} images, {n_test} for test)")
    train, valid, test = shuffled_splits(x, y, n_test, n_valid, factors=factors)
    binary = bool(((x == 0) | (x == 1)).all())
    return Dataset(name, train, valid, test, binary=binary, num_classes=n_classes, factors=grid)
