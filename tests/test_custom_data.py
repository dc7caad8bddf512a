"""Your own data: folder:PATH and npy:PATH, the good cases and every bad one, and a
convolutional VAE trained for one epoch on a folder of PNGs through the real command."""

from __future__ import annotations

import json
import re

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
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "no images found .*; found only notes.txt"),
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


def png16(path, values: np.ndarray):
    """A 16-bit grey PNG of ``values`` (H, W) in 0..65535, written chunk by chunk."""
    import zlib

    from .imagefiles import png_chunk, png_file

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)  # filter byte + big-endian pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_file(values.shape[1], values.shape[0], png_chunk(b"IDAT", zlib.compress(rows)), bit_depth=16))
    return path


def test_16_bit_pngs_are_scaled_by_their_bit_depth(tmp_path):
    rng = np.random.default_rng(0)
    values = [rng.integers(0, 65536, (6, 5)) for _ in range(4)]
    for i, v in enumerate(values):
        png16(tmp_path / f"{i}.png", v)
    png16(tmp_path / "grey.png", np.full((6, 5), 31457))  # 31457 / 65535 = 0.48001
    ds = load(f"folder:{tmp_path}", valid_size=0)
    x = torch.cat([ds.train.x, ds.test.x])
    want = torch.from_numpy(np.stack([*values, np.full((6, 5), 31457)]).astype(np.float32) / 65535).unsqueeze(1)
    assert torch.equal(torch.sort(x.flatten())[0], torch.sort(want.flatten())[0])  # every value exactly
    assert x.mean().item() == pytest.approx(want.mean().item(), abs=1e-6)  # before: clipped at 255, mean near 1
    grey = next(im for im in x if torch.all(im == im.flatten()[0]))
    assert grey.flatten()[0].item() == pytest.approx(0.48001, abs=1e-5)
    resized = load(f"folder:{tmp_path}", image_size=(3, 5), channels=3)  # resized in floating point, then 3 channels
    assert resized.shape == (3, 3, 5) and resized.train.x.max() <= 1 and 0.3 < resized.train.x.mean() < 0.7


def test_other_files_in_an_image_folder_are_skipped_and_named(tmp_path):
    from aevb.data.custom import SkippedFiles

    for i in range(4):
        png(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "notes.txt").write_text("where these came from")
    (tmp_path / "labels.csv").write_text("0,1")
    with pytest.warns(SkippedFiles, match=r"skipped 2 file\(s\) that are not PNG or JPEG images: labels.csv, notes.txt$"):
        ds = load(f"folder:{tmp_path}")  # before: DataError for the whole folder
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 4


def test_the_command_names_the_skipped_files_in_one_line(tmp_path, capsys):
    from aevb.cli import main

    for i in range(4):
        png(tmp_path / "imgs" / f"{i}.png", h=4, w=4, seed=i)
    (tmp_path / "imgs" / "notes.txt").write_text("x")
    assert main(["data", "fetch", f"folder:{tmp_path / 'imgs'}"]) == 0
    err = capsys.readouterr().err
    assert err == (f"aevb: warning: folder:{tmp_path / 'imgs'}: skipped 1 file(s) that are not PNG or JPEG images: "
                   "notes.txt\n")


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
    ("yf.npz", dict(x=np.zeros((5, 4, 4), np.uint8), y=np.zeros(5)), "non-negative integers; got dtype float64"),
    ("yneg.npz", dict(x=np.zeros((5, 4, 4), np.uint8), y=np.array([0, 1, -1, 2, -3])),
     r"y has negative labels \(2 of them, the smallest -3\); labels must be non-negative"),  # before: "got dtype int64"
    ("obj.npz", dict(x=np.array([{"a": 1}] * 5, dtype=object)), "holds an array of Python objects .*never loads"),
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
    with pytest.raises(DataError, match="not a readable .npy or .npz") as e:
        load(f"npy:{tmp_path / 'junk.npy'}")
    assert str(e.value) == (f"npy:{tmp_path / 'junk.npy'}: not a readable .npy or .npz file: it starts with "
                            "b'defini', not with the signature of a NumPy array (np.save) or of a zip archive (np.savez)")
    assert "allow_pickle" not in str(e.value)  # before: numpy's "Cannot load file containing pickled data ..."
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    np.save(tmp_path / "good.npy", np.zeros((5, 4, 4), np.uint8))
    whole = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[:-10])
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "good.npz", x=np.zeros((5, 4, 4), np.uint8))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:200])
    for name, message in (("objects.npy", "holds an array of Python objects (pickled), which aevb never loads"),
                          ("cut.npy", "it is truncated or corrupt"), ("empty.npy", "the file is empty"),
                          ("cut.npz", "it is truncated or corrupt")):
        with pytest.raises(DataError, match=re.escape(message)):
            load(f"npy:{tmp_path / name}")
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
