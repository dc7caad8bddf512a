"""dSprites (Matthey et al. 2017), generated procedurally on the released data set's factor grid.

    aevb train --dataset dsprites_small --epochs 1        # 1,536 images, generated in milliseconds
    aevb train --dataset dsprites --architecture conv     # the full 737,280 (generated once, cached)

The grid is the released file's (``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``): shape
(square, ellipse, heart), 6 scales ``linspace(0.5, 1, 6)``, 40 orientations ``linspace(0, 2 pi, 40)``,
32 x 32 positions ``linspace(0, 1, 32)``, 64 x 64 binary images in the released order (posY varies
fastest, then posX, orientation, scale, shape). The splits' ``factors`` are the released
``latents_classes`` without the constant colour column: (shape, scale, orientation, posX, posY).

The sprites are drawn by ``render`` (see docs/dsprites.md for how they differ from the released
ones: our own heart outline, sizes and margins; one sample at each pixel's centre, no
anti-aliasing). The drawing uses only float32 additions and multiplications of fixed constants
(sines and cosines from Python's ``math``), so the bytes are the same on every machine; they are
checked against ``DSPRITES_SHA256`` after generation, and the packed array (377 MB) is cached as
``dsprites/aevb_dsprites_v1.npy`` in ``data_dir`` (``--data-dir``) or else the user's cache folder
(``~/.cache/aevb``), and read back from any data folder that has it.

With the released ``.npz`` in a data folder (``--data-dir`` or ``AEVB_DATA_DIR``), ``dsprites``
reads it instead (its MD5 checked); ``dsprites_released`` insists on it and downloads it.

Splits: a fixed permutation (numpy seed 0) of the whole set; 10,000 images for test and
10,000 for validation (``valid_size`` changes it), the rest for training. (Small held-out
splits: the evaluation and figure commands unpack a whole split to float32, 164 MB for 10,000.)
``dsprites_small`` holds out 10% for test and 10% for validation.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .dataset import Factors, PackedSplit, pack_bits, shuffled_pool
from .files import DataError, FileSpec, cache_dir, locate, search_dirs, verify

SIZE = 64  # images are SIZE x SIZE
FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
SHAPES = ("square", "ellipse", "heart")  # released latents_values: 1, 2, 3
# The released factor values (latents_values columns 1..5), in float64 as in the file.
FULL_VALUES: tuple[np.ndarray, ...] = (
    np.array([1.0, 2.0, 3.0]),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * np.pi, 40),
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)
FULL_SIZES = tuple(len(v) for v in FULL_VALUES)  # (3, 6, 40, 32, 32): 737,280 images
# dsprites_small: every shape, scales 0.5 and 1, 4 orientations, every 4th position (1,536 images);
# its images are the full set's at the same factor values.
SMALL_INDICES: tuple[tuple[int, ...], ...] = ((0, 1, 2), (0, 5), (0, 10, 20, 30), tuple(range(0, 32, 4)),
                                              tuple(range(0, 32, 4)))

# Geometry, in pixels: the square's half-side at scale 1 (chosen so that 4.20% of all pixels are on, 4.25%
# in the released file), and the margin that keeps every sprite inside the frame (a turned
# square reaches sqrt(2) * 9.5 = 13.4 pixels from its centre; the heart 12.2, the ellipse 11.4).
HALF_SIDE = 9.5
MARGIN = 14.0
ELLIPSE_AXES = (1.2, 0.6)  # semi-axes in half-sides: 22.8 x 11.4 pixels at scale 1
REACH = 14  # every sprite pixel's centre lies within REACH - 0.5 pixels of the sprite's centre

DSPRITES_SHA256 = "268e2249960762b60d4aeb265286b05084aa18a66937b6902d7f286633018a0b"  # sha256 of the packed (737280, 512) uint8 array's bytes
SMALL_SHA256 = "958a951742c1d76e2f4782ac9bd1bab3be818ea9b8c5627fe6db92351bf1c0f5"
CACHE_FILE = "dsprites/aevb_dsprites_v1.npy"

RELEASED_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
_RELEASED_URL = "https://github.com/google-deepmind/dsprites-dataset/raw/master/" + RELEASED_NAME
# The released file's MD5, as published by torchvision-style loaders of it (its home publishes no
# checksum); files.verify reads the "md5:" prefix.
RELEASED_FILE = FileSpec(f"dsprites/{RELEASED_NAME}", "md5:7da33b31b13a06f4b04a70402ce90c2e", (_RELEASED_URL,),
                         alternates=((RELEASED_NAME, "md5:7da33b31b13a06f4b04a70402ce90c2e"),))


def factor_grid(indices: tuple[tuple[int, ...], ...] | None = None) -> Factors:
    """The factor names and values of the full grid (``indices`` None) or of a sub-grid."""
    idx = indices or tuple(tuple(range(n)) for n in FULL_SIZES)
    return Factors(FACTOR_NAMES, tuple(tuple(float(v[i]) for i in ix) for v, ix in zip(FULL_VALUES, idx)))


def grid_classes(sizes: tuple[int, ...]) -> np.ndarray:
    """(prod(sizes), len(sizes)) int64: every combination of class indices, the last factor fastest."""
    return np.stack(np.meshgrid(*(np.arange(n) for n in sizes), indexing="ij"), -1).reshape(-1, len(sizes))


# --- drawing ----------------------------------------------------------------------------


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points (u, v) (sprite coordinates in half-sides, v pointing down) lie in ``shape``."""
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "ellipse":
        a, b = ELLIPSE_AXES
        u = u * np.float32(1 / a)
        v = v * np.float32(1 / b)
        return u * u + v * v <= 1.0
    # The heart (x^2 + y^2 - 1)^3 <= x^2 y^3, y up, tip down, scaled from its width 2.28 to 2.2
    # half-sides and centred (its y extent [-1, 1.24] shifted by -0.12).
    x = u * np.float32(1.14 / 1.1)
    y = (-v) * np.float32(1.14 / 1.1) + np.float32(0.12)
    x2, y2 = x * x, y * y
    r = x2 + y2 - 1.0
    return r * r * r <= x2 * y2 * y


def _offsets(pos: np.ndarray, window: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pixel-centre offsets from the sprite centres at ``pos`` along one axis, (n, 64) float32
    (or, with ``window``, only the window's pixels, (n, len(window)), and their first pixel)."""
    centre = np.float32(MARGIN) + np.asarray(pos, np.float32) * np.float32(SIZE - 2 * MARGIN)  # (n,)
    first = np.zeros(len(centre), np.int64) if window is None else np.floor(centre).astype(np.int64) - REACH
    pixels = first[:, None] + (np.arange(SIZE) if window is None else window)[None, :]
    return (pixels.astype(np.float32) + np.float32(0.5)) - centre[:, None], first


def _sprite(shape: str, scale: float, orientation: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Whether each pixel centre at offsets dx (nx, w) x dy (ny, h) lies in the sprite: (nx, ny, h, w) bool."""
    r = scale * HALF_SIDE
    c, s = np.float32(math.cos(orientation) / r), np.float32(math.sin(orientation) / r)
    # A screen rotation by -theta with y down: u = c dx - s dy, v = s dx + c dy (in half-sides).
    u = (c * dx)[:, None, None, :] - (s * dy)[None, :, :, None]  # (nx, ny, rows, cols)
    v = (s * dx)[:, None, None, :] + (c * dy)[None, :, :, None]
    return _inside(shape, u, v)


def render(shape: str, scale: float, orientation: float, pos_x: np.ndarray, pos_y: np.ndarray) -> np.ndarray:
    """Binary images of one sprite at every (posX, posY) pair: (len(pos_x), len(pos_y), 64, 64) bool.

    The sprite's centre is at MARGIN + pos * (64 - 2 MARGIN) pixels (x: columns, y: rows, from the
    top left); pixel (i, j) is on when its centre (j + 0.5, i + 0.5), turned by ``-orientation``
    about the sprite's centre and divided by ``scale * HALF_SIDE``, lies inside the shape (the
    sprite is turned by ``orientation`` counter-clockwise on the screen). The reference drawing:
    ``generate`` computes the same pixels only near each sprite (``render_near``)."""
    return _sprite(shape, scale, orientation, _offsets(pos_x)[0], _offsets(pos_y)[0])


def render_near(shape: str, scale: float, orientation: float, pos_x: np.ndarray, pos_y: np.ndarray) -> np.ndarray:
    """``render``'s images, the same bits, computed only for the (2 REACH + 1)^2 pixels around each
    sprite's centre (no sprite reaches further) and placed on a blank frame: about 6x faster."""
    window = np.arange(2 * REACH + 1)
    dx, first_x = _offsets(pos_x, window)
    dy, first_y = _offsets(pos_y, window)
    near = _sprite(shape, scale, orientation, dx, dy)  # (nx, ny, h, w)
    nx, ny = len(dx), len(dy)
    frame = np.zeros((nx, ny, SIZE + 1, SIZE + 1), bool)  # one spare row and column: a window may end at 64
    frame[np.arange(nx)[:, None, None, None], np.arange(ny)[None, :, None, None],
          (first_y[None, :, None, None] + window[None, None, :, None]),
          (first_x[:, None, None, None] + window[None, None, None, :])] = near
    return frame[:, :, :SIZE, :SIZE]


def generate(indices: tuple[tuple[int, ...], ...] | None = None) -> np.ndarray:
    """The packed images of the full grid (``indices`` None) or of the sub-grid of those class
    indices per factor, in the released order: (N, 512) uint8, eight pixels a byte (``pack_bits``)."""
    idx = indices or tuple(tuple(range(n)) for n in FULL_SIZES)
    shapes, scales, turns, xs, ys = (np.asarray(v[list(i)]) for v, i in zip(FULL_VALUES, idx))
    per_sprite = len(xs) * len(ys)
    out = np.empty((len(shapes) * len(scales) * len(turns) * per_sprite, SIZE * SIZE // 8), np.uint8)
    row = 0
    for shape in shapes:
        for scale in scales:
            for turn in turns:
                images = render_near(SHAPES[int(shape) - 1], float(scale), float(turn), xs, ys)
                out[row : row + per_sprite] = pack_bits(images.reshape(per_sprite, -1))
                row += per_sprite
    return out


def sha256_of_array(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()


# --- reading: cache, released file --------------------------------------------------------


def _cached(data_dir) -> np.ndarray | None:
    """The cached packed array from the first data folder that has one whose sha256 is the pinned one."""
    for d in search_dirs(data_dir):
        p = d / CACHE_FILE
        if p.is_file():
            try:
                arr = np.load(p, allow_pickle=False)
            except (OSError, ValueError):
                arr = None
            if arr is not None and arr.shape == (math.prod(FULL_SIZES), SIZE * SIZE // 8) and \
                    arr.dtype == np.uint8 and sha256_of_array(arr) == DSPRITES_SHA256:
                return arr
            warnings.warn(f"{p}: not the dSprites array aevb generates (corrupt or from another version); "
                          "generating it again", stacklevel=3)
    return None


def _save_cache(arr: np.ndarray, data_dir) -> Path | None:
    """Write ``arr`` (atomically) to ``data_dir`` when one is given, else to the user's cache folder
    (never into ``$AEVB_DATA_DIR``, often a shared folder of original files); None when it cannot."""
    for d in ([Path(data_dir)] if data_dir else []) + [cache_dir()]:
        dest = d / CACHE_FILE
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, arr)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return dest
        except OSError:
            continue
    return None


def generated_full(data_dir=None) -> np.ndarray:
    """The full packed array (737280, 512) uint8: from the cache, or generated, checked and cached."""
    arr = _cached(data_dir)
    if arr is not None:
        return arr
    arr = generate()
    got = sha256_of_array(arr)
    if got != DSPRITES_SHA256:
        raise DataError(f"the generated dSprites images have sha256 {got[:12]}..., not the pinned "
                        f"{DSPRITES_SHA256[:12]}...: this numpy draws them differently; please report it "
                        "(the released file works: put it in a data folder, see docs/dsprites.md)")
    _save_cache(arr, data_dir)
    return arr


def find_released(data_dir) -> Path | None:
    """The released ``.npz`` in a data folder (its MD5 checked), or None when no folder has it."""
    spec = RELEASED_FILE
    for d in search_dirs(data_dir):
        for rel, checksum in ((spec.path, spec.sha256), *spec.alternates):
            if (d / rel).is_file():
                verify(d / rel, checksum)
                return d / rel
    return None


def read_released(path: Path, chunk: int = 16384) -> np.ndarray:
    """The released file's images, packed: (737280, 512) uint8. ``imgs`` (3 GB as uint8) is read
    from the archive ``chunk`` images at a time, and ``latents_classes`` is checked to be the
    grid in the released order. Nothing pickled is read (the file's ``metadata`` is skipped)."""
    n = math.prod(FULL_SIZES)
    try:
        with zipfile.ZipFile(path) as z:
            with z.open("latents_classes.npy") as f:
                classes = np.lib.format.read_array(f, allow_pickle=False)
            if classes.shape != (n, 6) or not np.array_equal(classes[:, 1:], grid_classes(FULL_SIZES)):
                raise DataError(f"{path}: latents_classes is not the dSprites grid in its released order")
            with z.open("imgs.npy") as f:
                version = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = header(f)
                if shape != (n, SIZE, SIZE) or fortran or dtype != np.uint8:
                    raise DataError(f"{path}: imgs is {shape} {dtype}, expected ({n}, 64, 64) uint8")
                out = np.empty((n, SIZE * SIZE // 8), np.uint8)
                for start in range(0, n, chunk):
                    rows = min(chunk, n - start)
                    block = np.frombuffer(f.read(rows * SIZE * SIZE), np.uint8)
                    if len(block) != rows * SIZE * SIZE:
                        raise DataError(f"{path}: imgs ends early (at image {start + len(block) // (SIZE * SIZE)})")
                    out[start : start + rows] = pack_bits(block.reshape(rows, -1))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise DataError(f"{path}: not the released dSprites archive ({e})") from None
    return out


# --- splits -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DspritesSplits:
    """Cuts the splits of one dSprites variant (the registry calls it with a DataConfig)."""

    source: str  # "full": released file if found, else generated; "released": the released file; "small"
    n_test: int | None = None  # None: 10% of the images
    n_valid: int | None = None  # None: 10% of the images (valid_size overrides)

    def images(self, cfg) -> np.ndarray:
        if self.source == "small":
            return generate(SMALL_INDICES)
        if self.source == "released":
            return read_released(locate(RELEASED_FILE, cfg.data_dir, cfg.download))
        found = find_released(cfg.data_dir)
        return read_released(found) if found is not None else generated_full(cfg.data_dir)

    def __call__(self, cfg):
        bits = self.images(cfg)
        sizes = tuple(len(i) for i in SMALL_INDICES) if self.source == "small" else FULL_SIZES
        factors = torch.from_numpy(grid_classes(sizes))
        pool = PackedSplit(torch.from_numpy(bits), (1, SIZE, SIZE), None, factors)
        n_test = self.n_test if self.n_test is not None else len(pool) // 10
        n_valid = cfg.valid_size if cfg.valid_size is not None else (
            self.n_valid if self.n_valid is not None else len(pool) // 10)
        return shuffled_pool(pool, n_test, n_valid, seed=0)
