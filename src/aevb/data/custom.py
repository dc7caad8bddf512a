"""Your own data: ``folder:PATH`` (a folder of PNG/JPEG images) and ``npy:PATH`` (an array file).

    aevb train --dataset folder:photos --image-size 64 --channels 3 --architecture conv
    aevb train --dataset npy:faces.npz --architecture conv --likelihood discretized_logistic

``folder:PATH``
    Every ``.png``, ``.jpg`` and ``.jpeg`` file under PATH (sub-folders included; hidden
    files skipped), read with Pillow in sorted path order. When every image sits in a
    sub-folder of PATH, the sub-folder names (sorted) are the class labels 0, 1, ...;
    when every image sits directly in PATH there are no labels; a mixture is an error.
    ``DataConfig.channels`` 1 or 3 converts to grey or RGB (default: grey when every
    image is grey, else RGB; alpha is dropped). ``DataConfig.image_size`` (height, width)
    brings every image to that size, by ``fit="resize"`` (ignores the aspect ratio) or
    ``fit="crop"`` (scales the shorter side, then cuts the centre); without it every
    image must already have the same size. Pixels are divided by 255.

``npy:PATH``
    A ``.npy`` array of images, or a ``.npz`` with key ``x`` and optional ``y`` (integer
    labels, one per image). ``x`` is (N, H, W), or 4-D: channels-last (N, H, W, C) when the
    last axis has 1 or 3 entries, else channels-first (N, C, H, W) with C of 1 or 3.
    uint8 values are divided by 255; float values must already lie in [0, 1] (NaN and
    Inf are rejected).

Splits (both sources, cut by ``aevb.data.dataset.shuffled_splits`` as for digits and frey_face):
the images are shuffled with a fixed permutation (numpy seed 0);
the last 10% (at least 1) are the test split, and the last ``valid_size`` (default 10%,
at least 1; 0 for none) of the rest the validation split. At least 3 images are needed.
Every problem raises ``DataError`` with one line that names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from .dataset import Dataset, shuffled_splits
from .files import DataError

PREFIXES = ("folder:", "npy:")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


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
    return _splits(cfg.dataset, x, y, classes, cfg.valid_size)


# --- folders of images ------------------------------------------------------------------


def _read_folder(root: Path, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"folder:{root}: not a folder (use npy:{root} for an array file)")
    files = sorted(f for f in root.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))
    if not files:
        raise DataError(f"folder:{root}: no images found (expected .png, .jpg or .jpeg files)")
    other = [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
    if other:
        raise DataError(f"folder:{root}: {other[0].relative_to(root)} is not a PNG or JPEG image "
                        f"({len(other)} such file(s)); remove it or move it out of the folder")
    depths = {len(f.relative_to(root).parts) for f in files}
    if depths - {1, 2} or depths == {1, 2}:
        raise DataError(f"folder:{root}: put every image either directly in the folder (no labels) or in one level "
                        "of sub-folders named by class (labels); found a mixture or deeper nesting")
    labelled = depths == {2}
    classes = sorted({f.parent.name for f in files}) if labelled else []

    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"folder:{root}: cannot read image {f.relative_to(root)} ({e})") from None
    channels = cfg.channels or (1 if all(im.mode in _GREY_MODES for im in images) else 3)
    mode = "L" if channels == 1 else "RGB"
    size = cfg.image_size
    if size is None:
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            (w0, h0), (w1, h1) = sorted(sizes)[:2]
            raise DataError(f"folder:{root}: images have {len(sizes)} different sizes (e.g. {h0}x{w0} and {h1}x{w1}, "
                            "height x width); choose one: image_size (--image-size on the command line)")
    arrays = []
    for im in images:
        im = im.convert(mode)
        if size is not None and im.size != (size[1], size[0]):
            im = _fit(im, size, cfg.fit)
        arrays.append(np.asarray(im, dtype=np.uint8))
    arr = np.stack(arrays)  # (N, H, W) or (N, H, W, 3)
    x = torch.from_numpy(arr).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()  # -> (N, C, H, W)
    y = torch.tensor([classes.index(f.parent.name) for f in files], dtype=torch.int64) if labelled else None
    return x, y, (len(classes) if labelled else None)


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
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{name}: not a readable .npy or .npz file ({str(e).splitlines()[0] if str(e) else e})") from None
    if isinstance(loaded, np.ndarray):
        x, y = loaded, None
    else:
        with loaded:
            if "x" not in loaded.files:
                raise DataError(f"{name}: the .npz has no array 'x' (found: {', '.join(loaded.files) or 'none'})")
            x = loaded["x"]
            y = loaded["y"] if "y" in loaded.files else None
    x = _images_from_array(x, name)
    labels, n_classes = None, None
    if y is not None:
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{name}: y must hold one label per image ({len(x)}); got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise DataError(f"{name}: y must be non-negative integers; got dtype {y.dtype}")
        labels = torch.from_numpy(y.astype(np.int64))
        n_classes = int(y.max()) + 1 if len(y) else None
    return x, labels, n_classes


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
            valid_size: int | None) -> Dataset:
    n = len(x)
    if n < 3:
        raise DataError(f"{name}: found {n} image(s); at least 3 are needed (train, validation and test)")
    n_test = max(1, n // 10)
    n_valid = max(1, n // 10) if valid_size is None else valid_size
    if n_valid >= n - n_test:
        raise DataError(f"{name}: valid_size {n_valid} leaves no training data ({n} images, {n_test} for test)")
    train, valid, test = shuffled_splits(x, y, n_test, n_valid)
    binary = bool(((x == 0) | (x == 1)).all())
    return Dataset(name, train, valid, test, binary=binary, num_classes=n_classes)
