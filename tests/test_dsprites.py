"""dSprites: the generator's grid, shapes and bytes, packed storage, the released file's reader, factors
through npy:, and a training run on the small variant.

The full set's sha256 (``DSPRITES_SHA256``) is checked by a slow test (about 8 s of CPU, 1 GB of memory)
and by a documented command (docs/dsprites.md: ``aevb data fetch dsprites``).
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile

import numpy as np
import pytest
import torch

from click.testing import CliRunner

from aevb.run import load
from aevb.cli import cli
from aevb.config import DataConfig
from aevb.data import DataError, PackedSplit, Split, dataset_info, load_dataset
from aevb.data import dsprites as d
from aevb.data.dataset import pack_bits, unpack_bits
from aevb.data.files import locate
from aevb.report import _disentanglement_section
from aevb.train import train

from .conftest import run_cli

SMALL_SIZES = tuple(len(i) for i in d.SMALL_INDICES)  # (3, 2, 4, 8, 8)


@pytest.fixture(scope="module")
def small_bits() -> np.ndarray:
    return d.generate(d.SMALL_INDICES)


def test_the_factor_grid_is_the_released_one():
    assert d.FACTOR_NAMES == ("shape", "scale", "orientation", "posX", "posY")
    assert d.FULL_SIZES == (3, 6, 40, 32, 32) and math.prod(d.FULL_SIZES) == 737280
    np.testing.assert_array_equal(d.FULL_VALUES[0], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(d.FULL_VALUES[1], np.linspace(0.5, 1, 6))
    np.testing.assert_array_equal(d.FULL_VALUES[2], np.linspace(0, 2 * np.pi, 40))
    np.testing.assert_array_equal(d.FULL_VALUES[3], np.linspace(0, 1, 32))
    info = dataset_info("dsprites")
    assert info.shape == (1, 64, 64) and info.binary and info.likelihood == "bernoulli"
    assert info.factors.names == d.FACTOR_NAMES and info.factors.sizes == d.FULL_SIZES
    assert info.factors.values[1] == tuple(np.linspace(0.5, 1, 6).tolist())
    # the released order: posY fastest, then posX, orientation, scale, shape (row i = unravel_index(i))
    classes = d.grid_classes(d.FULL_SIZES)
    for i in (0, 1, 32, 1024, 40959, 737279):
        assert tuple(classes[i]) == np.unravel_index(i, d.FULL_SIZES)


def test_the_small_variant_has_its_documented_grid_and_pinned_bytes(small_bits):
    assert small_bits.shape == (1536, 512) and small_bits.dtype == np.uint8
    assert d.sha256_of_array(small_bits) == d.SMALL_SHA256
    assert d.sha256_of_array(d.generate(d.SMALL_INDICES)) == d.SMALL_SHA256  # the same bytes every time
    grid = dataset_info("dsprites_small").factors
    assert grid.sizes == SMALL_SIZES and grid.values[1] == (0.5, 1.0)
    assert grid.values[3] == tuple(np.linspace(0, 1, 32)[::4].tolist())


@pytest.mark.slow
def test_the_full_generation_has_the_pinned_checksum():
    bits = d.generate()
    assert bits.shape == (737280, 512) and d.sha256_of_array(bits) == d.DSPRITES_SHA256


def test_the_windowed_drawing_is_the_reference_drawing():
    xs = d.FULL_VALUES[3]
    for shape in d.SHAPES:
        for scale, turn in ((1.0, math.pi / 4), (0.5, 1.0), (0.8, 5.5)):
            np.testing.assert_array_equal(d.render_near(shape, scale, turn, xs, xs), d.render(shape, scale, turn, xs, xs))


def test_the_sprites_have_their_documented_shapes():
    at = np.array([0.0])
    square = d.render("square", 1.0, 0.0, at, at)[0, 0]
    rows, cols = np.nonzero(square)
    # half-side 9.5 pixels around the centre (14, 14): the pixel centres 4.5 .. 23.5, a 20 x 20 block
    assert square.sum() == 400 and (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 23, 4, 23)
    ellipse = d.render("ellipse", 1.0, 0.0, np.array([0.5]), np.array([0.5]))[0, 0]
    r, c = np.nonzero(ellipse)
    assert c.max() - c.min() + 1 == 22 and r.max() - r.min() + 1 == 12  # semi-axes 11.4 and 5.7 pixels
    heart = d.render("heart", 1.0, 0.0, np.array([0.5]), np.array([0.5]))[0, 0]
    r, c = np.nonzero(heart)
    widths = heart.sum(1)[r.min() : r.max() + 1]
    assert widths[-1] < widths[len(widths) // 3] and heart.sum() > 0  # the tip points down, the lobes are up
    # the turn by 2 pi is the turn by 0 (the released grid's first and last orientations coincide)
    np.testing.assert_array_equal(d.render("heart", 1.0, 2 * np.pi, at, at), d.render("heart", 1.0, 0.0, at, at))
    # no sprite touches the frame's border
    ends = np.array([0.0, 1.0])
    for shape in d.SHAPES:
        for turn in np.linspace(0, np.pi / 2, 7):
            im = d.render(shape, 1.0, turn, ends, ends)
            assert not (im[..., 0, :].any() or im[..., -1, :].any() or im[..., :, 0].any() or im[..., :, -1].any())


def test_packed_bits_round_trip():
    rng = np.random.default_rng(0)
    for shape in ((1, 64, 64), (1, 3, 5), (3, 2, 7)):  # 15 and 42 pixels: not whole bytes
        images = rng.random((6, *shape)) < 0.3
        bits = torch.from_numpy(pack_bits(images))
        assert bits.shape == (6, math.ceil(math.prod(shape) / 8))
        torch.testing.assert_close(unpack_bits(bits, shape), torch.from_numpy(images).float())
    split = PackedSplit(torch.from_numpy(pack_bits(images)), (3, 2, 7), None, torch.arange(6)[:, None])
    rows = torch.tensor([4, 1, 1])
    torch.testing.assert_close(split.images(rows), split.x[rows])
    assert split[rows].factors.view(-1).tolist() == [4, 1, 1] and split.value_range() == (0.0, 1.0, True)
    plain = Split(split.x, None, split.factors)
    torch.testing.assert_close(plain.images(rows), split.images(rows))
    assert plain.value_range() == (0.0, 1.0, True)


def test_dsprites_small_loads_packed_with_its_factors(small_bits):
    ds = load_dataset(DataConfig(dataset="dsprites_small"))
    assert isinstance(ds.train, PackedSplit) and ds.shape == (1, 64, 64) and ds.binary
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1230, 153, 153)
    assert ds.factors.names == d.FACTOR_NAMES and ds.train.storage.shape == (1230, 512)
    # every image once, each with the factors it was drawn from
    factors = torch.cat([ds.train.factors, ds.valid.factors, ds.test.factors]).numpy()
    flat = np.ravel_multi_index(factors.T, SMALL_SIZES)
    assert sorted(flat.tolist()) == list(range(1536))
    bits = torch.cat([ds.train.bits, ds.valid.bits, ds.test.bits]).numpy()
    np.testing.assert_array_equal(bits, small_bits[flat])
    assert len(load_dataset(DataConfig(dataset="dsprites_small", valid_size=0, subset=100)).train) == 100


def test_the_generated_set_is_cached_and_checked(tmp_path, monkeypatch, small_bits):
    # the full set's path, on the small grid: generated, checked against the pinned sha256, cached, read back
    monkeypatch.setattr(d, "FULL_SIZES", SMALL_SIZES)
    monkeypatch.setattr(d, "DSPRITES_SHA256", d.SMALL_SHA256)
    monkeypatch.setattr(d, "generate", lambda indices=None: small_bits.copy())
    np.testing.assert_array_equal(d.generated_full(tmp_path), small_bits)
    assert (tmp_path / d.CACHE_FILE).is_file()
    monkeypatch.setattr(d, "generate", lambda indices=None: pytest.fail("generated again instead of read from the cache"))
    np.testing.assert_array_equal(d.generated_full(tmp_path), small_bits)
    # a corrupt cache is regenerated; bytes that differ from the pinned ones are refused
    cache = tmp_path / d.CACHE_FILE
    np.save(cache, small_bits[::-1])
    monkeypatch.setattr(d, "generate", lambda indices=None: small_bits[::-1].copy())
    with pytest.warns(UserWarning, match="not the dSprites array aevb generates"), \
            pytest.raises(DataError, match="not the pinned"):
        d.generated_full(tmp_path)


def _fake_release(path, small_bits: np.ndarray) -> None:
    """An .npz laid out as the released file, holding the small grid."""
    imgs = np.unpackbits(small_bits, axis=1).reshape(-1, 64, 64)
    classes = np.concatenate([np.zeros((len(imgs), 1), np.int64), d.grid_classes(SMALL_SIZES)], 1)
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=classes.astype(float))


def test_the_released_file_is_read_in_chunks_and_checked(tmp_path, monkeypatch, small_bits):
    npz = tmp_path / d.RELEASED_NAME
    _fake_release(npz, small_bits)
    monkeypatch.setattr(d, "FULL_SIZES", SMALL_SIZES)
    np.testing.assert_array_equal(d.read_released(npz, chunk=100), small_bits)
    # found in a data folder only with the released file's MD5; never downloaded here
    with pytest.raises(DataError, match="md5 mismatch"):
        locate(d.RELEASED_FILE, tmp_path, download=False)
    md5 = hashlib.md5(npz.read_bytes()).hexdigest()
    monkeypatch.setattr(d, "RELEASED_FILE", d.FileSpec(f"dsprites/{d.RELEASED_NAME}", f"md5:{md5}",
                                                       alternates=((d.RELEASED_NAME, f"md5:{md5}"),)))
    assert d.find_released(tmp_path) == npz
    assert d.find_released(tmp_path / "empty") is None
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        z.writestr("latents_classes.npy", b"not an array")
    with pytest.raises(DataError, match="not the released dSprites archive"):
        d.read_released(tmp_path / "bad.npz")


def test_npz_factors_travel_through_npy(tmp_path):
    rng = np.random.default_rng(0)
    size = rng.choice([0.25, 0.75], size=40)
    x = np.zeros((40, 8, 8), np.uint8)
    x[:, :4] = (size[:, None, None] * 255).astype(np.uint8)  # each image shows its own factor value
    colour = np.arange(40) % 3
    np.savez(tmp_path / "f.npz", x=x, factors=np.stack([size, colour], 1), factor_names=np.array(["size", "colour"]))
    ds = load_dataset(DataConfig(dataset=f"npy:{tmp_path / 'f.npz'}"))
    assert ds.factors.names == ("size", "colour") and ds.factors.values == ((0.25, 0.75), (0.0, 1.0, 2.0))
    for part in (ds.train, ds.valid, ds.test):
        value = np.array(ds.factors.values[0])[part.factors[:, 0].numpy()]
        np.testing.assert_allclose(part.x[:, 0, 0, 0].numpy(), np.floor(value * 255) / 255)
    np.savez(tmp_path / "g.npz", x=x, factors=np.zeros((39, 2)))
    with pytest.raises(DataError, match="one row per image"):
        load_dataset(DataConfig(dataset=f"npy:{tmp_path / 'g.npz'}"))
    np.savez(tmp_path / "h.npz", x=x, factors=np.arange(40.0))
    ds = load_dataset(DataConfig(dataset=f"npy:{tmp_path / 'h.npz'}"))
    assert ds.factors.names == ("factor_0",) and ds.factors.sizes == (40,)


def test_continuous_npz_factors_are_refused(tmp_path, monkeypatch):
    import aevb.data.custom as custom

    monkeypatch.setattr(custom, "MAX_FACTOR_VALUES", 10)
    np.savez(tmp_path / "c.npz", x=np.zeros((40, 4, 4), np.uint8), factors=np.linspace(0, 1, 40))
    with pytest.raises(DataError, match="factor factor_0 has 40 distinct values.*bin it first"):
        load_dataset(DataConfig(dataset=f"npy:{tmp_path / 'c.npz'}"))


SIZES = ["beta_vae_train=30", "beta_vae_eval=20", "beta_vae_batch=8", "factor_vae_train=30", "factor_vae_eval=20",
         "factor_vae_variance=200", "factor_vae_batch=8", "mig_points=300", "sap_train=100", "sap_test=50",
         "dci_train=40", "dci_test=20"]


def _evaluate(run_dir, *extra: str):
    return CliRunner().invoke(cli, ["evaluate", str(run_dir), "--k", "0", "--n", "20", "--no-probe", *extra])


def test_evaluate_disentanglement_on_dsprites_small(tmp_path):
    run = train(dataset="dsprites_small", epochs=1, batch_size=200, hidden=(32,), latent_dim=4, out=tmp_path / "run",
                progress=False, device="cpu")
    r = _evaluate(run.dir, "--disentanglement", "--json", *(a for s in SIZES for a in ("--disentanglement-size", s)))
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    for key in ("beta_vae_score", "factor_vae_score", "mig", "sap", "dci_disentanglement", "dci_completeness",
                "dci_informativeness"):
        assert 0.0 <= res[key] <= 1.0, key
    details = res["disentanglement"]
    assert details["factor_names"] == list(d.FACTOR_NAMES) and len(details["factor_of_dim"]) == 4
    assert details["disentanglement_sizes"]["dci_train"] == 40 and details["disentanglement_sizes"]["sap_test"] == 50
    assert (run.dir / "figures" / "factor_traversal.png").is_file()
    assert json.loads((run.dir / "evaluation.json").read_text())["mig"] == res["mig"]
    section = _disentanglement_section(load(run.dir))  # the report's section (the whole page draws every figure)
    assert f"<tr><th>mig</th><td class=num>{res['mig']:.4f}</td></tr>" in section and 'id="fig-factor-traversal"' in section
    bad = _evaluate(run.dir, "--disentanglement-size", "dci=3")
    assert bad.exit_code != 0 and "--disentanglement-size" in bad.output


def test_a_run_trained_on_a_subset_is_scored_on_the_whole_factor_grid(tmp_path):
    """The metrics draw from every image of the data set, not from the run's --subset (which would be a
    partial grid); --disentanglement-jobs fits DCI's classifiers in parallel with the same answer."""
    from aevb.disentanglement import SCORE_KEYS, evaluate_disentanglement

    run = train(dataset="dsprites_small", subset=100, epochs=1, batch_size=100, hidden=(32,), latent_dim=4,
                out=tmp_path / "run", progress=False, device="cpu")
    r = _evaluate(run.dir, "--disentanglement", "--json", "--disentanglement-jobs", "2",
                  *(a for s in SIZES for a in ("--disentanglement-size", s)))
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    sizes = {k: int(v) for k, v in (s.split("=") for s in SIZES)}
    whole = evaluate_disentanglement(load(run.dir).model, load_dataset(DataConfig(dataset="dsprites_small")),
                                     sizes=sizes)
    assert {k: res[k] for k in SCORE_KEYS} == {k: whole[k] for k in SCORE_KEYS}


def test_a_data_set_without_factors_says_so_in_one_line(tmp_path):
    run = train(dataset="digits", epochs=1, hidden=(8,), latent_dim=2, out=tmp_path / "digits", progress=False,
                device="cpu")
    r = _evaluate(run.dir, "--disentanglement")
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == ["Error: data set digits has no ground-truth factors: --disentanglement "
                                             "needs one with factors (dsprites, dsprites_small, or npy: with a "
                                             "factors array)"]


@pytest.mark.slow
def test_aevb_train_runs_on_dsprites_small(tmp_path):
    """The real command, with the default model, end to end."""
    out = tmp_path / "run"
    run_cli("train", "--dataset", "dsprites_small", "--epochs", "1", "--out", str(out))
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["epoch"] == 1 and math.isfinite(line["valid_elbo"])
