"""Every data set from its original files, checksum failures, and the download path
(against a server on 127.0.0.1, never the internet)."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb.config import DataConfig
from aevb.data import DataError, load_dataset, locate
from aevb.data.formats import parse_amat, parse_idx
from aevb.data.registry import BINARIZED_FILES, MNIST_FILES

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def counts(y):
    return torch.bincount(y, minlength=10).tolist()


def test_digits_is_embedded_and_split_as_documented():
    ds = load_dataset(DataConfig(dataset="digits"))
    assert ds.shape == (1, 8, 8)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1297, 200, 300)
    assert sum(counts(ds.train.y)) + sum(counts(ds.valid.y)) + sum(counts(ds.test.y)) == 1797
    assert counts(torch.cat([ds.train.y, ds.valid.y, ds.test.y])) == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert 0.0 == ds.train.x.min() and ds.train.x.max() == 1.0


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets(name, data_dir):
    ds = load_dataset(DataConfig(dataset=name, data_dir=str(data_dir), valid_size=0, download=False))
    assert ds.shape == (1, 28, 28) and ds.valid is None
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    if name == "mnist":
        assert counts(ds.train.y) == MNIST_TRAIN_COUNTS
        assert counts(ds.test.y) == MNIST_TEST_COUNTS
    else:
        assert counts(ds.train.y) == [6000] * 10 and counts(ds.test.y) == [1000] * 10
    held = load_dataset(DataConfig(dataset=name, data_dir=str(data_dir), download=False))
    assert (len(held.train), len(held.valid)) == (50000, 10000)
    assert torch.equal(held.valid.x, ds.train.x[50000:])


def test_binarized_mnist(data_dir):
    ds = load_dataset(DataConfig(dataset="binarized_mnist", download=False))
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (50000, 10000, 10000)
    assert ds.binary and set(torch.unique(ds.test.x).tolist()) == {0.0, 1.0}
    # mean pixel intensity of the Larochelle & Murray test file
    assert ds.test.x.mean().item() == pytest.approx(0.1336, abs=0.002)


def test_frey_face(data_dir):
    ds = load_dataset(DataConfig(dataset="frey_face", download=False))
    assert ds.shape == (1, 28, 20)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1565, 200, 200)
    assert ds.train.y is None
    assert ds.test.x.min() >= 8 / 255 - 1e-6 and ds.test.x.max() <= 238 / 255 + 1e-6


def test_binarization_modes():
    dyn = load_dataset(DataConfig(dataset="digits", binarize="dynamic"))
    assert not dyn.binary  # training batches are resampled by the trainer
    assert set(torch.unique(dyn.test.x).tolist()) <= {0.0, 1.0}
    again = load_dataset(DataConfig(dataset="digits", binarize="dynamic"))
    assert torch.equal(dyn.test.x, again.test.x)  # the evaluation split is drawn once, with a fixed seed
    static = load_dataset(DataConfig(dataset="digits", binarize="static"))
    assert static.binary and set(torch.unique(static.train.x).tolist()) == {0.0, 1.0}


def test_subset_and_bad_names():
    assert len(load_dataset(DataConfig(dataset="digits", subset=100)).train) == 100
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        load_dataset(DataConfig(dataset="nope"))
    with pytest.raises(DataError, match="larger than the training split"):
        load_dataset(DataConfig(dataset="digits", subset=10_000))


# --- checksums ---------------------------------------------------------------------------


def _copy(data_dir: Path, tmp: Path, rel: str) -> Path:
    dest = tmp / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / rel, dest)
    dest.chmod(0o644)
    return dest


def test_corrupt_copy_raises_checksum_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("AEVB_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = _copy(data_dir, tmp_path, "mnist/t10k-labels-idx1-ubyte.gz")
    assert locate(MNIST_FILES["t10k-labels"], tmp_path, download=False) == f
    raw = bytearray(f.read_bytes())
    raw[100] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="sha256 mismatch"):
        locate(MNIST_FILES["t10k-labels"], tmp_path, download=False)


def test_missing_file_without_download_names_the_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("AEVB_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not found in .*AEVB_DATA_DIR"):
        locate(MNIST_FILES["t10k-labels"], tmp_path / "nowhere", download=False)


@pytest.fixture
def mirror(tmp_path, data_dir, monkeypatch):
    """A static file server on 127.0.0.1 serving tmp_path/'mirror'; no other data folder is visible."""
    monkeypatch.delenv("AEVB_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_and_installs(data_dir, tmp_path, mirror, monkeypatch):
    root, url = mirror
    _copy(data_dir, root, "mnist/t10k-labels-idx1-ubyte.gz")
    monkeypatch.setenv("AEVB_DATA_MIRROR", url)
    dest_dir = tmp_path / "data"
    p = locate(MNIST_FILES["t10k-labels"], dest_dir)
    assert p == dest_dir / "mnist/t10k-labels-idx1-ubyte.gz"
    assert p.read_bytes() == (data_dir / "mnist/t10k-labels-idx1-ubyte.gz").read_bytes()
    assert sorted(x.name for x in p.parent.iterdir()) == ["t10k-labels-idx1-ubyte.gz"]


def test_download_of_original_amat_is_accepted(data_dir, tmp_path, mirror, monkeypatch):
    root, url = mirror
    (root / "binarized_mnist").mkdir()
    with gzip.open(data_dir / "binarized_mnist/binarized_mnist_test.amat.gz", "rb") as f:
        (root / "binarized_mnist/binarized_mnist_test.amat").write_bytes(f.read())
    monkeypatch.setenv("AEVB_DATA_MIRROR", url)
    p = locate(BINARIZED_FILES["test"], tmp_path / "data")
    assert p.name == "binarized_mnist_test.amat"


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "missing"])
def test_failed_download_leaves_no_file(data_dir, tmp_path, mirror, monkeypatch, damage):
    root, url = mirror
    f = _copy(data_dir, root, "mnist/t10k-labels-idx1-ubyte.gz")
    raw = f.read_bytes()
    if damage == "corrupt":
        f.write_bytes(raw[:50] + bytes([raw[50] ^ 1]) + raw[51:])
    elif damage == "truncated":
        f.write_bytes(raw[: len(raw) // 2])
    else:
        f.unlink()
    monkeypatch.setenv("AEVB_DATA_MIRROR", url)
    dest_dir = tmp_path / "data"
    with pytest.raises(DataError, match="could not download mnist/t10k-labels"):
        locate(MNIST_FILES["t10k-labels"], dest_dir)
    left = list((dest_dir / "mnist").iterdir()) if (dest_dir / "mnist").exists() else []
    assert left == []


# --- parsers ---------------------------------------------------------------------------


def test_idx_parser_rejects_bad_magic_and_sizes():
    good = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    assert parse_idx(good).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(bytes([1, 0, 8, 1]) + good[4:])
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(bytes([0, 0, 7, 1]) + good[4:])
    with pytest.raises(DataError, match="size mismatch"):
        parse_idx(good[:-1])


def test_amat_parser():
    row = " ".join(["0", "1"] * 392) + "\n"
    arr = parse_amat((row * 3).encode())
    assert arr.shape == (3, 784) and arr.sum() == 3 * 392
    with pytest.raises(DataError, match="whole number"):
        parse_amat((row * 3).encode()[:-10])
    with pytest.raises(DataError, match="values other than 0 and 1"):
        parse_amat(row.replace("1", "2", 1).encode())
    assert np.array_equal(arr[0, :4], [0, 1, 0, 1])
