"""Every data set from its original files, checksum failures, and the download path
(against a server on 127.0.0.1, never the internet)."""

from __future__ import annotations

import ast
import functools
import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb.config import LIKELIHOODS, DataConfig
from aevb.data import DATASETS, DEFAULT_LIKELIHOOD, DataError, DatasetInfo, dataset_info, load_dataset, locate
from aevb.data import registry
from aevb.data.dataset import Split, hold_out, shuffled_splits
from aevb.data.formats import parse_amat, parse_idx
from aevb.data.registry import BINARIZED_FILES, MNIST_FILES

from .conftest import REPO

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


def test_the_test_binarization_depends_on_its_own_seed_alone():
    """The test split's dynamic draw is torch.bernoulli with its own generator (seed 12345): the same
    whatever valid_size (which used to draw first from a shared generator) or subset."""
    raw = load_dataset(DataConfig(dataset="digits")).test.x
    want = torch.bernoulli(raw, generator=torch.Generator().manual_seed(registry.TEST_BINARIZE_SEED))
    for kw in ({}, {"valid_size": 0}, {"valid_size": 50}, {"subset": 100}):
        ds = load_dataset(DataConfig(dataset="digits", binarize="dynamic", **kw))
        assert torch.equal(ds.test.x, want), kw
    valid = load_dataset(DataConfig(dataset="digits", binarize="dynamic")).valid.x
    raw_valid = load_dataset(DataConfig(dataset="digits")).valid.x
    assert torch.equal(valid, torch.bernoulli(raw_valid,
                                              generator=torch.Generator().manual_seed(registry.VALID_BINARIZE_SEED)))


def test_subset_and_bad_names():
    assert len(load_dataset(DataConfig(dataset="digits", subset=100)).train) == 100
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        load_dataset(DataConfig(dataset="nope"))
    with pytest.raises(DataError, match="larger than the training split"):
        load_dataset(DataConfig(dataset="digits", subset=10_000))


# --- the records ---------------------------------------------------------------------------


# The full dSprites (737,280 images: 12 GB as float32, generated in seconds of CPU) is left out of the tests that
# read every image; tests/test_dsprites.py covers it and its small variant's images are read here.
READ_WHOLE = [name for name in DATASETS if name not in ("dsprites", "dsprites_released")]
NO_FILES = ("digits", "dsprites_small")  # shipped with scikit-learn, or generated


@pytest.mark.parametrize("name", READ_WHOLE)
def test_record_states_what_the_files_hold(name, request):
    # digits ships with scikit-learn; the others need the real files
    data_dir = None if name in NO_FILES else str(request.getfixturevalue("data_dir"))
    info = dataset_info(name)
    assert isinstance(info, DatasetInfo) and info.name == name and info.likelihood in LIKELIHOODS
    ds = load_dataset(DataConfig(dataset=name, data_dir=data_dir, download=False))
    assert ds.name == name and ds.shape == info.shape
    assert (ds.binary, ds.num_classes) == (info.binary, info.num_classes)
    x = torch.cat([s.x for s in (ds.train, ds.valid, ds.test) if s is not None])
    assert bool(((x == 0) | (x == 1)).all()) == info.binary
    if info.num_classes is None:
        assert ds.train.y is None and ds.test.y is None
    else:
        assert int(torch.cat([ds.train.y, ds.test.y]).max()) == info.num_classes - 1


def test_records_are_listed_by_name_and_documented():
    assert list(DATASETS) == ["digits", "mnist", "fashion_mnist", "binarized_mnist", "frey_face", "dsprites",
                              "dsprites_small", "dsprites_released"]
    assert DEFAULT_LIKELIHOOD == {name: info.likelihood for name, info in DATASETS.items()}
    assert DEFAULT_LIKELIHOOD["frey_face"] == "gaussian" and DEFAULT_LIKELIHOOD["mnist"] == "bernoulli"
    for name in ("folder:/tmp/x", "npy:x.npz", "nope"):  # shape known only after reading, or unknown
        assert dataset_info(name) is None
    # the module docstring's table has one row per record, with its shape and likelihood
    rows = [line.split("|")[1:-1] for line in registry.__doc__.splitlines() if line.startswith("| ``")]
    table = {r[0].strip().strip("`"): (r[1].split(",")[0].strip(), r[-1].strip()) for r in rows}
    assert table == {name: ("x".join(map(str, info.shape)), info.likelihood) for name, info in DATASETS.items()}


# --- splits ----------------------------------------------------------------------------


def _image_keys(split) -> list[bytes]:
    """One key per image: its pixel bytes."""
    return [row.tobytes() for row in split.x.flatten(1).numpy()]


# dSprites repeats images (a square turned by 92.3 degrees, a small sprite turned a little): 714,560
# distinct of 737,280; its splits are disjoint by factor index instead (tests/test_dsprites.py).
DISTINCT_IMAGES = [name for name in READ_WHOLE if name != "dsprites_small"]


@pytest.mark.parametrize("name", DISTINCT_IMAGES)
def test_the_splits_of_every_data_set_are_disjoint_by_content(name, request):
    """No image is in two splits, and none twice in one (each data set's files hold no duplicate):
    a split cut one image off, e.g. test = pool[cut - 1 : -1], shares an image with train."""
    data_dir = None if name in NO_FILES else str(request.getfixturevalue("data_dir"))
    ds = load_dataset(DataConfig(dataset=name, data_dir=data_dir, download=False))  # no binarization
    keys = {split: _image_keys(getattr(ds, split)) for split in ("train", "valid", "test")}
    for split, k in keys.items():
        assert len(set(k)) == len(k), f"{name} {split} holds an image twice"
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not set(keys[a]) & set(keys[b]), f"{name}: {a} and {b} share images"



def _rows(split):
    return split.x.flatten().long().tolist()


@pytest.mark.parametrize("n,n_test,n_valid", [(10, 1, 1), (50, 7, 0), (1797, 300, 200), (5, 1, 3)])
def test_shuffled_splits_partition_the_examples(n, n_test, n_valid):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1)  # each example is its own index
    y = torch.arange(n) * 10
    train, valid, test = shuffled_splits(x, y, n_test, n_valid)
    parts = [s for s in (train, valid, test) if s is not None]
    assert (len(train), len(test)) == (n - n_test - n_valid, n_test)
    assert valid is None if n_valid == 0 else len(valid) == n_valid
    assert sorted(sum((_rows(s) for s in parts), [])) == list(range(n))  # disjoint, and every example once
    assert all(torch.equal(s.y, s.x.flatten().long() * 10) for s in parts)  # labels travel with their example
    again = shuffled_splits(x, y, n_test, n_valid)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(parts, (s for s in again if s)))
    other = shuffled_splits(x, None, n_test, n_valid, seed=1)
    assert all(s.y is None for s in other if s is not None)
    assert [_rows(s) for s in other if s] != [_rows(s) for s in parts]


def test_shuffled_splits_is_the_numpy_permutation_and_checks_sizes():
    x = torch.arange(20, dtype=torch.float32).reshape(20, 1, 1, 1)
    perm = np.random.default_rng(3).permutation(20).tolist()
    train, valid, test = shuffled_splits(x, None, 4, 5, seed=3)
    assert _rows(train) + _rows(valid) + _rows(test) == perm
    for n_test in (0, 20):
        with pytest.raises(DataError, match="test split"):
            shuffled_splits(x, None, n_test, 1)
    with pytest.raises(DataError, match="leaves no training data"):
        shuffled_splits(x, None, 4, 16)


def test_hold_out_takes_the_last_examples():
    s = Split(torch.arange(6.0).reshape(6, 1, 1, 1), torch.arange(6))
    train, valid = hold_out(s, 2)
    assert train.y.tolist() == [0, 1, 2, 3] and valid.y.tolist() == [4, 5] and _rows(valid) == [4, 5]
    assert hold_out(s, 0) == (s, None)
    with pytest.raises(DataError, match="leaves no training data"):
        hold_out(s, 6)


def test_digits_splits_are_the_shared_helper_with_seed_0():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16).unsqueeze(1)
    ds = load_dataset(DataConfig(dataset="digits"))
    for got, want in zip((ds.train, ds.valid, ds.test), shuffled_splits(x, torch.from_numpy(d.target), 300, 200)):
        assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)


# --- the package's import graph --------------------------------------------------------------


def _imports_within(package: Path) -> dict[str, set[str]]:
    """module -> the sibling modules it imports (at module level or inside a function)."""
    modules = {f.stem for f in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in modules:
        deps: set[str] = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("aevb.data."):
                deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("aevb.data.")}
        graph[name] = deps & modules - {name}
    return graph


def test_data_modules_import_each_other_in_one_direction():
    graph = _imports_within(REPO / "src" / "aevb" / "data")
    assert graph["dataset"] <= {"files"} and graph["files"] == set()  # the leaves
    assert "registry" not in graph["custom"]
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name not in done:
            for dep in sorted(graph[name]):
                visit(dep, path + (name,))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())


# --- checksums ---------------------------------------------------------------------------


def _copy(data_dir: Path, tmp: Path, rel: str) -> Path:
    dest = tmp / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / rel, dest)
    dest.chmod(0o644)
    return dest


def test_corrupt_copy_raises_checksum_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("AEVB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    f = _copy(data_dir, tmp_path, "mnist/t10k-labels-idx1-ubyte.gz")
    assert locate(MNIST_FILES["t10k-labels"], tmp_path, download=False) == f
    raw = bytearray(f.read_bytes())
    raw[100] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="sha256 mismatch"):
        locate(MNIST_FILES["t10k-labels"], tmp_path, download=False)


def test_missing_file_without_download_names_the_folders(tmp_path, monkeypatch):
    monkeypatch.delenv("AEVB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="not found in .*AEVB_DATA_DIR"):
        locate(MNIST_FILES["t10k-labels"], tmp_path / "nowhere", download=False)


@pytest.fixture
def mirror(tmp_path, data_dir, monkeypatch):
    """A static file server on 127.0.0.1 serving tmp_path/'mirror'; no other data folder is visible."""
    monkeypatch.delenv("AEVB_DATA_DIR", raising=False)
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


@pytest.mark.slow  # three fresh pytest processes: 2 s each on an idle machine
def test_without_the_data_a_data_test_skips_and_in_ci_fails_unless_no_data_is_expected(tmp_path):
    """The ``data_dir`` fixture's contract, on a one-line test in a fresh pytest (conftest as a plugin)."""
    import os
    import subprocess
    import sys

    (tmp_path / "test_needs_data.py").write_text("def test_it(data_dir):\n    assert data_dir.is_dir()\n")

    def pytest_with(**env: str) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if k not in ("CI", "AEVB_NO_DATA", "AEVB_DATA_DIR")}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p",
                               "tests.conftest", str(tmp_path / "test_needs_data.py")], cwd=REPO, text=True,
                              capture_output=True, env={**clean, "AEVB_DATA_DIR": str(tmp_path / "none"), **env})

    alone = pytest_with()
    assert alone.returncode == 0 and "1 skipped" in alone.stdout and "set AEVB_DATA_DIR" in alone.stdout, alone.stdout
    ci = pytest_with(CI="true")
    assert ci.returncode == 1 and "must point at the shared data folder in CI" in ci.stdout, ci.stdout
    hidden = pytest_with(CI="true", AEVB_NO_DATA="1", AEVB_DATA_DIR=str(REPO.parent / "shared" / "data"))
    assert hidden.returncode == 0 and "AEVB_NO_DATA=1: this pass runs without the real data sets" in hidden.stdout
