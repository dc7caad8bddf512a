"""Your own data: folder:PATH and npy:PATH, the good cases and every bad one, and a
convolutional VAE trained for one epoch on a folder of PNGs through the real command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aevb.config import DataConfig
from aevb.data import DataError, dataset_info, load_dataset
from aevb.data.dataset import shuffled_splits

from .baselines import bits_per_dim, discretized_gaussian_baseline
from .conftest import REPO, run_cli


def png(path, h=12, w=10, mode="RGB", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=None).convert(mode).save(path)
    return path


def load(name: str, **kw):
    return load_dataset(DataConfig(dataset=name, **kw))


@pytest.fixture
def labelled(tmp_path):
    root = tmp_path / "imgs"
    for c in ("b_dogs", "a_cats"):
        for i in range(10):
            png(root / c / f"{i}.png", seed=hash((c, i)) % 1000)
    return root


# --- folders ----------------------------------------------------------------------------


def test_folder_with_class_subfolders(labelled):
    ds = load(f"folder:{labelled}")
    assert ds.shape == (3, 12, 10) and ds.num_classes == 2
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (16, 2, 2)  # 10% test, 10% valid
    x = torch.cat([ds.train.x, ds.valid.x, ds.test.x])
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(x * 255, (x * 255).round())
    y = torch.cat([ds.train.y, ds.valid.y, ds.test.y])
    assert sorted(y.tolist()) == [0] * 10 + [1] * 10  # a_cats -> 0, b_dogs -> 1 (sorted names)
    again = load(f"folder:{labelled}")  # the split is fixed
    assert torch.equal(again.test.x, ds.test.x)
    # the pixel values and labels come through: find an image by content
    img = np.asarray(Image.open(labelled / "b_dogs" / "3.png"), dtype=np.float32) / 255
    target = torch.from_numpy(img).permute(2, 0, 1)
    hits = [i for i in range(len(x)) if torch.equal(x[i], target)]
    assert len(hits) == 1 and y[hits[0]] == 1


def test_flat_folder_grey_resize_crop_and_channels(tmp_path):
    for i in range(5):
        png(tmp_path / f"{i}.png", h=20, w=30, mode="L", seed=i)
    png(tmp_path / "big.jpg", h=40, w=16, mode="L", seed=9)
    with pytest.raises(DataError, match="different sizes.*--image-size"):
        load(f"folder:{tmp_path}")
    ds = load(f"folder:{tmp_path}", image_size=(8, 6))
    assert ds.shape == (1, 8, 6) and ds.train.y is None and ds.num_classes is None
    assert load(f"folder:{tmp_path}", image_size=16, fit="crop").shape == (1, 16, 16)
    assert load(f"folder:{tmp_path}", image_size=(8, 6), channels=3).shape == (3, 8, 6)
    (tmp_path / ".DS_Store").write_bytes(b"junk")  # hidden files are skipped
    assert load(f"folder:{tmp_path}", image_size=4, valid_size=0).valid is None


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "no such folder"),
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: (png(p / "a.png"), png(p / "b.png"), (p / "notes.txt").write_text("x")), "notes.txt is not a PNG or JPEG"),
    (lambda p: (png(p / "a.png"), png(p / "b.png"), (p / "c.png").write_bytes(b"not a png")), "cannot read image c.png"),
    (lambda p: (png(p / "a.png", h=8), png(p / "b.png", h=9), png(p / "c.png")), "different sizes"),
    (lambda p: (png(p / "a.png"), png(p / "cls" / "b.png")), "either directly in the folder"),
    (lambda p: (png(p / "a.png"), png(p / "b.png")), "at least 3 are needed"),
])
def test_bad_folders_raise_one_line_errors(tmp_path, setup, match):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=match) as e:
        load(f"folder:{root}")
    assert "\n" not in str(e.value)


# --- arrays -----------------------------------------------------------------------------


def test_npy_uint8_and_float_layouts(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (30, 9, 7), dtype=np.uint8)
    np.save(tmp_path / "a.npy", u8)
    ds = load(f"npy:{tmp_path / 'a.npy'}")
    assert ds.shape == (1, 9, 7) and len(ds.train) + len(ds.valid) + len(ds.test) == 30
    x = torch.cat([ds.train.x, ds.valid.x, ds.test.x])
    assert torch.allclose(torch.sort(x.flatten())[0], torch.sort(torch.from_numpy(u8).float().flatten() / 255)[0])

    np.save(tmp_path / "hwc.npy", rng.random((12, 9, 7, 3), dtype=np.float32))
    assert load(f"npy:{tmp_path / 'hwc.npy'}").shape == (3, 9, 7)
    np.save(tmp_path / "chw.npy", rng.random((12, 3, 9, 7)))  # float64 is accepted
    assert load(f"npy:{tmp_path / 'chw.npy'}").shape == (3, 9, 7)

    y = np.arange(30) % 4
    np.savez(tmp_path / "b.npz", x=u8, y=y)
    ds = load(f"npy:{tmp_path / 'b.npz'}")
    assert ds.num_classes == 4 and ds.train.y.dtype == torch.int64
    # each image keeps its label through the shuffle
    for xi, yi in zip(ds.test.x, ds.test.y):
        j = next(j for j in range(30) if torch.equal(torch.from_numpy(u8[j]).float() / 255, xi[0]))
        assert y[j] == yi


def bad_float(v):
    a = np.full((5, 4, 4), 0.5, dtype=np.float32)
    a[2, 1, 1] = v
    return a


@pytest.mark.parametrize("name,arrays,match", [
    ("nan.npy", bad_float(np.nan), "NaN or infinite"),
    ("inf.npy", bad_float(np.inf), "NaN or infinite"),
    ("big.npy", bad_float(1.5), r"must lie in \[0, 1\]"),
    ("neg.npy", bad_float(-0.1), r"must lie in \[0, 1\]"),
    ("ndim.npy", np.zeros((5, 16), np.uint8), "got 2 dimensions"),
    ("ndim5.npy", np.zeros((5, 1, 4, 4, 1), np.uint8), "got 5 dimensions"),
    ("chan.npy", np.zeros((5, 5, 4, 4), np.uint8), "cannot tell the channel axis"),
    ("empty.npy", np.zeros((0, 4, 4), np.uint8), "holds no images"),
    ("few.npy", np.zeros((2, 4, 4), np.uint8), "at least 3 are needed"),
    ("y.npz", dict(x=np.zeros((5, 4, 4), np.uint8), y=np.arange(4)), "one label per image"),
    ("y2.npz", dict(x=np.zeros((5, 4, 4), np.uint8), y=np.zeros((5, 2), int)), "one label per image"),
    ("yf.npz", dict(x=np.zeros((5, 4, 4), np.uint8), y=np.zeros(5)), "non-negative integers"),
    ("nox.npz", dict(images=np.zeros((5, 4, 4), np.uint8)), "has no array 'x'"),
    ("str.npy", np.array([["a"] * 4] * 4 * 5).reshape(5, 4, 4), "dtype"),
])
def test_bad_arrays_raise_one_line_errors(tmp_path, name, arrays, match):
    path = tmp_path / name
    if isinstance(arrays, dict):
        np.savez(path, **arrays)
    else:
        np.save(path, arrays)
    with pytest.raises(DataError, match=match) as e:
        load(f"npy:{path}")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("valid_size,n_valid", [(None, 4), (0, 0), (9, 9)])
def test_splits_are_the_shared_helper_with_seed_0(tmp_path, valid_size, n_valid):
    rng = np.random.default_rng(1)
    u8, y = rng.integers(0, 256, (43, 5, 6), dtype=np.uint8), rng.integers(0, 3, 43)
    np.savez(tmp_path / "d.npz", x=u8, y=y)
    ds = load(f"npy:{tmp_path / 'd.npz'}", valid_size=valid_size)
    x = torch.from_numpy(u8).float().div(255).unsqueeze(1)
    want = shuffled_splits(x, torch.from_numpy(y), 4, n_valid)  # 10% (at least 1) for test
    for got, exp in zip((ds.train, ds.valid, ds.test), want):
        assert (got is None) == (exp is None)
        if got is not None:
            assert torch.equal(got.x, exp.x) and torch.equal(got.y, exp.y)
    assert dataset_info(f"npy:{tmp_path / 'd.npz'}") is None  # the shape is known only after reading


def test_missing_and_unreadable_array_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(f"npy:{tmp_path / 'nope.npy'}")
    (tmp_path / "junk.npy").write_bytes(b"definitely not numpy")
    with pytest.raises(DataError, match="not a readable .npy or .npz"):
        load(f"npy:{tmp_path / 'junk.npy'}")
    with pytest.raises(DataError, match="give a path"):
        load("npy:")


# --- the command, end to end --------------------------------------------------------------


def test_cli_trains_a_conv_vae_on_a_folder_of_pngs(labelled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative folder path is stored as an absolute one
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))  # this checkout, whatever the working directory
    run = tmp_path / "run"
    out = run_cli("train", "--dataset", "folder:imgs", "--architecture", "conv", "--conv-channels", "8,16",
                  "--hidden", "32", "--latent-dim", "4", "--likelihood", "discretized_logistic", "--epochs", "1",
                  "--batch-size", "8", "--out", str(run), "--no-progress", cwd=tmp_path)
    assert "run directory" in out.stdout
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["input_shape"] == [3, 12, 10] and cfg["model"]["architecture"] == "conv"
    assert cfg["data"]["dataset"] == f"folder:{labelled}"
    for name in ("model.safetensors", "metrics.jsonl", "samples.png", "reconstructions.png"):
        assert (run / name).is_file(), name
    res = json.loads(run_cli("evaluate", str(run), "--k", "5", "--json").stdout)
    assert res["n"] == 2 and res["data_dim"] == 360
    assert np.isfinite(res["log_likelihood"]) and 0 < res["bits_per_dim"] < 20
    # The images are independent uniform noise, so independent pixels are as good as any model gets:
    # a normalised likelihood cannot score far better than the baseline (8.2 bits/dim; uniform: 8).
    # (A model's use of z is checked where the data has structure: test_cli, test_evaluate.)
    ds = load_dataset(DataConfig(dataset=f"folder:{labelled}"))
    independent = bits_per_dim(discretized_gaussian_baseline(ds.train.x, ds.test.x), 360)
    assert res["bits_per_dim"] > independent - 0.5, (res["bits_per_dim"], independent)  # measured 9.97


def test_cli_reports_bad_custom_data_in_one_line(tmp_path):
    proc = run_cli("train", "--dataset", f"folder:{tmp_path / 'missing'}", "--out", str(tmp_path / "x"), check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aevb: error:") and "no such folder" in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()
