"""The data sets aevb knows by name, each read from its original files.

| name | shape | train / valid / test | labels | likelihood |
|---|---|---|---|---|
| ``digits`` | 1x8x8, grey in [0, 1] (values /16) | 1297 / 200 / 300 (fixed permutation, seed 0) | 10 classes | bernoulli |
| ``mnist`` | 1x28x28, grey in [0, 1] | 50000 / 10000 / 10000 (valid = last 10000 of the official train set) | 10 | bernoulli |
| ``fashion_mnist`` | 1x28x28, grey in [0, 1] | 50000 / 10000 / 10000 (as mnist) | 10 | bernoulli |
| ``binarized_mnist`` | 1x28x28, {0, 1} | 50000 / 10000 / 10000 (Larochelle & Murray's files) | none | bernoulli |
| ``frey_face`` | 1x28x20, grey in [0, 1] | 1565 / 200 / 200 (fixed permutation, seed 0) | none | gaussian |
| ``dsprites`` | 1x64x64, {0, 1} | 717280 / 10000 / 10000 (fixed permutation, seed 0) | none; 5 factors | bernoulli |
| ``dsprites_small`` | 1x64x64, {0, 1} | 1230 / 153 / 153 (as dsprites) | none; 5 factors | bernoulli |
| ``dsprites_released`` | 1x64x64, {0, 1}: the released ``.npz`` (downloaded when missing) | as dsprites | none; 5 factors | bernoulli |

Each row is one ``DatasetInfo`` record in ``DATASETS``; ``dataset_info(name)`` looks one
up. The likelihood is the decoder the data set is usually modelled with (the paper:
Bernoulli for MNIST, learned-variance Gaussian for Frey Face), the default of
``aevb.train.default_config``.

``valid_size`` changes how many training examples mnist, fashion_mnist, digits,
frey_face and the dsprites sets hold out (0 trains on all of them). Every split is a float32
tensor of shape (N, C, H, W), except the dsprites sets', held packed eight pixels a byte
(``PackedSplit``, unpacked per batch); labels are int64 (N,). The permuted splits are cut by
``aevb.data.dataset.shuffled_splits``, as are those of your own data.

dSprites (``aevb.data.dsprites``, docs/dsprites.md) is generated on the released factor grid,
or read from the released file when a data folder has it. Its splits carry ``factors``, the
ground-truth factor classes of every image, described by the record's and the ``Dataset``'s
``factors`` (names and values), which the disentanglement metrics use (``aevb.disentanglement``).

Your own data, ``folder:PATH`` and ``npy:PATH``, is read by ``aevb.data.custom``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..config import DataConfig
from .custom import is_custom, load_custom
from .dataset import Dataset, Factors, Split, hold_out, shuffled_splits
from .dsprites import SMALL_INDICES, DspritesSplits, factor_grid
from .files import DataError, FileSpec, locate
from .formats import read_amat, read_frey, read_idx

_MNIST_URLS = ("https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_BINARIZED_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"


def _idx_files(folder: str, urls: tuple[str, ...], sums: dict[str, str]) -> dict[str, FileSpec]:
    return {key: FileSpec(f"{folder}/{name}", sha, tuple(u + name for u in urls))
            for key, (name, sha) in ((k, (f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz", v)) for k, v in sums.items())}


MNIST_FILES = _idx_files("mnist", _MNIST_URLS, {
    "train-images": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
})
FASHION_FILES = _idx_files("fashion_mnist", _FASHION_URLS, {
    "train-images": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
})
# The originals are uncompressed text; a gzip copy (as in the shared data folder) is accepted too.
BINARIZED_FILES = {
    split: FileSpec(f"binarized_mnist/binarized_mnist_{split}.amat", raw, (f"{_BINARIZED_URL}binarized_mnist_{split}.amat",),
                    alternates=((f"binarized_mnist/binarized_mnist_{split}.amat.gz", gz),))
    for split, raw, gz in (
        ("train", "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
         "af247bd6075cf9adc4715459dcd5f13eaa99a2c92d8d81379a05da94770b6c0e"),
        ("valid", "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
         "533b71bc0198f4d73c54ae5fe6c96fc08dc3cf1b3fae24c5521dbc0452507e38"),
        ("test", "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
         "32a3c54d03504632bf9f131b4a148c7567aa6fc87da017049b044bdc14c2a0f2"),
    )
}
FREY_FILE = FileSpec("frey_face/frey_rawface.mat", "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64",
                     ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",))


def _images(arr: np.ndarray, scale: float) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    x /= scale
    return x.unsqueeze(1) if x.ndim == 3 else x  # (N, H, W) -> (N, 1, H, W)


def _labels(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.int64))


Splits = tuple[Split, Split | None, Split]  # train, valid (None for valid_size 0), test


def _valid_size(cfg: DataConfig, default: int) -> int:
    return default if cfg.valid_size is None else cfg.valid_size


def _digits(cfg: DataConfig) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    return shuffled_splits(_images(d.images, 16.0), _labels(d.target), 300, _valid_size(cfg, 200))


def _idx_splits(name: str, files: dict[str, FileSpec]) -> Callable[[DataConfig], Splits]:
    def read(cfg: DataConfig) -> Splits:
        def get(key: str, ndim: int) -> np.ndarray:
            return read_idx(locate(files[key], cfg.data_dir, cfg.download), ndim)

        full = Split(_images(get("train-images", 3), 255.0), _labels(get("train-labels", 1)))
        test = Split(_images(get("t10k-images", 3), 255.0), _labels(get("t10k-labels", 1)))
        for split, n in ((full, 60000), (test, 10000)):
            if len(split.x) != n or len(split.y) != n:
                raise DataError(f"{name}: expected {n} images and labels, found {len(split.x)} and {len(split.y)}")
        return (*hold_out(full, _valid_size(cfg, 10000)), test)

    return read


def _binarized_mnist(cfg: DataConfig) -> Splits:
    def get(split: str, n: int) -> Split:
        arr = read_amat(locate(BINARIZED_FILES[split], cfg.data_dir, cfg.download))
        if arr.shape != (n, 784):
            raise DataError(f"binarized_mnist {split}: expected ({n}, 784), found {arr.shape}")
        return Split(_images(arr.reshape(-1, 28, 28), 1.0))

    return get("train", 50000), get("valid", 10000), get("test", 10000)


def _frey_face(cfg: DataConfig) -> Splits:
    x = _images(read_frey(locate(FREY_FILE, cfg.data_dir, cfg.download)), 255.0)
    return shuffled_splits(x, None, 200, _valid_size(cfg, 200))


@dataclass(frozen=True)
class DatasetInfo:
    """Everything aevb knows about a built-in data set before reading it."""

    name: str
    splits: Callable[[DataConfig], Splits]  # reads the files, cuts train, valid (None for valid_size 0), test
    shape: tuple[int, int, int]  # (C, H, W) of every example
    likelihood: str  # the decoder it is usually modelled with (a ModelConfig.likelihood)
    num_classes: int | None  # None: no labels
    binary: bool  # every value is exactly 0 or 1, before any --binarize
    description: str
    files: tuple[FileSpec, ...] = ()  # the files it is read from (their sha256 identify its content); () for none
    factors: Factors | None = None  # the ground-truth factors its splits carry (names and values)

    def read(self, cfg: DataConfig) -> Dataset:
        """The data set as read from its files: no binarization or subset (``load_dataset`` applies those)."""
        return Dataset(self.name, *self.splits(cfg), binary=self.binary, num_classes=self.num_classes,
                       factors=self.factors)


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo("digits", _digits, shape=(1, 8, 8), likelihood="bernoulli", num_classes=10, binary=False,
                description="scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn)"),
    DatasetInfo("mnist", _idx_splits("mnist", MNIST_FILES), shape=(1, 28, 28), likelihood="bernoulli",
                num_classes=10, binary=False, description="MNIST handwritten digits, the original IDX files",
                files=tuple(MNIST_FILES.values())),
    DatasetInfo("fashion_mnist", _idx_splits("fashion_mnist", FASHION_FILES), shape=(1, 28, 28),
                likelihood="bernoulli", num_classes=10, binary=False,
                description="Fashion-MNIST clothing images, the original IDX files",
                files=tuple(FASHION_FILES.values())),
    DatasetInfo("binarized_mnist", _binarized_mnist, shape=(1, 28, 28), likelihood="bernoulli", num_classes=None,
                binary=True, description="statically binarized MNIST (Larochelle & Murray's .amat files)",
                files=tuple(BINARIZED_FILES.values())),
    DatasetInfo("frey_face", _frey_face, shape=(1, 28, 20), likelihood="gaussian", num_classes=None, binary=False,
                description="Frey Face video frames (Roweis's frey_rawface.mat)", files=(FREY_FILE,)),
    DatasetInfo("dsprites", DspritesSplits("full", n_test=10000, n_valid=10000), shape=(1, 64, 64),
                likelihood="bernoulli", num_classes=None, binary=True, factors=factor_grid(),
                description="dSprites, 737,280 sprites on the released factor grid: generated (cached), or the "
                            "released .npz when a data folder has it"),
    DatasetInfo("dsprites_small", DspritesSplits("small"), shape=(1, 64, 64), likelihood="bernoulli",
                num_classes=None, binary=True, factors=factor_grid(SMALL_INDICES),
                description="a 1,536-image sub-grid of the generated dSprites (2 scales, 4 orientations, "
                            "8 x 8 positions), for tests and quick runs"),
    DatasetInfo("dsprites_released", DspritesSplits("released", n_test=10000, n_valid=10000), shape=(1, 64, 64),
                likelihood="bernoulli", num_classes=None, binary=True, factors=factor_grid(),
                description="dSprites from DeepMind's released .npz only (downloaded when missing, MD5 checked)"),
)}


def dataset_info(name: str) -> DatasetInfo | None:
    """The record of a built-in data set; None for any other name: ``folder:``/``npy:`` data,
    whose shape is known only after reading it, and unknown names (``load_dataset`` reports those)."""
    return DATASETS.get(name)


# Each built-in data set's usual likelihood, from its record.
DEFAULT_LIKELIHOOD: dict[str, str] = {name: info.likelihood for name, info in DATASETS.items()}


# Each evaluation split's dynamic binarization is drawn once, from a generator of its own, so that
# the test images scored depend on nothing but this seed (not on valid_size, subset or the order of
# the draws). 12345 keeps the test draw of runs with valid_size 0, which drew the test split first.
TEST_BINARIZE_SEED = 12345
VALID_BINARIZE_SEED = 12346


def _draw(split: Split | None, seed: int) -> Split | None:  # a float split (packed ones are binary)
    """One Bernoulli(pixel) draw of every value of ``split``, from a generator seeded with ``seed``."""
    if split is None:
        return None
    return dataclasses.replace(split, x=torch.bernoulli(split.x, generator=torch.Generator().manual_seed(seed)))


def binarize(ds: Dataset, mode: str) -> Dataset:
    """``ds`` binarized as ``DataConfig.binarize`` ``mode`` says (what ``load_dataset`` applies). Static: threshold every split at 0.5. Dynamic: training batches are resampled by the
    trainer; the evaluation splits are sampled once, each with its own fixed seed, so scores are comparable."""
    if mode == "none" or ds.binary:
        return ds
    if mode == "static":
        f = lambda s: dataclasses.replace(s, x=(s.x > 0.5).float())  # noqa: E731
        return dataclasses.replace(ds, train=f(ds.train), valid=f(ds.valid) if ds.valid else None, test=f(ds.test),
                                   binary=True)
    return dataclasses.replace(ds, valid=_draw(ds.valid, VALID_BINARIZE_SEED), test=_draw(ds.test, TEST_BINARIZE_SEED),
                               binary=False)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Read the data set named by ``cfg.dataset`` with its splits, binarization and subset applied."""
    if is_custom(cfg.dataset):
        ds = load_custom(cfg)
    elif cfg.dataset in DATASETS:
        ds = DATASETS[cfg.dataset].read(cfg)
    else:
        raise DataError(f"unknown data set {cfg.dataset!r}; choose one of {', '.join(DATASETS)}, "
                        "folder:PATH or npy:PATH")
    ds = binarize(ds, cfg.binarize)
    if cfg.subset is not None:
        if cfg.subset > len(ds.train):
            raise DataError(f"subset {cfg.subset} is larger than the training split ({len(ds.train)})")
        ds = dataclasses.replace(ds, train=ds.train[: cfg.subset])
    return ds
