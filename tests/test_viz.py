"""`aevb.viz` and `aevb plot`: every kind of figure, for 2-D and 10-D latents, grey and colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aevb import viz
from aevb.cli.figures import PLOT_KINDS as CLI_KINDS

from .vizmodels import aevb, colour_run, digits_run


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_cli_kinds_match_viz():
    assert CLI_KINDS == viz.PLOT_KINDS


@pytest.mark.parametrize("latent_dim", [2, 10])
@pytest.mark.parametrize("kind", viz.PLOT_KINDS)
def test_every_kind_renders(tmp_path, latent_dim, kind):
    run = digits_run(latent_dim)
    path = viz.make_plot(run, kind, tmp_path / f"{kind}.png")
    arr = png(path)
    assert arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.std() > 10  # not a blank canvas


@pytest.mark.parametrize("kind", ["manifold", "samples", "reconstructions", "interpolate", "traverse", "scatter"])
def test_colour_images_render(tmp_path, kind):
    run = colour_run()
    x = torch.rand(20, 3, 10, 14)
    y = torch.arange(20) % 3
    m = run.model
    path = tmp_path / f"{kind}.png"
    {
        "manifold": lambda: viz.plot_manifold(m, path, dims=(0, 2), n=6),
        "samples": lambda: viz.plot_samples(m, path, n=9),
        "reconstructions": lambda: viz.plot_reconstructions(m, x, path, n=5),
        "interpolate": lambda: viz.plot_interpolation(m, x[0], x[1], path, steps=4),
        "traverse": lambda: viz.plot_traversal(m, x[0], path, steps=5),
        "scatter": lambda: viz.plot_scatter(m, x, y, path),
    }[kind]()
    arr = png(path)
    # colour pixels present: some channels differ from each other
    assert (np.abs(arr[..., 0].astype(int) - arr[..., 1].astype(int)) > 20).any()


def test_manifold_grid_follows_inverse_gaussian_cdf():
    q = viz.gaussian_quantiles(5)
    assert q[2].item() == pytest.approx(0.0, abs=1e-6)
    assert q[-1].item() == pytest.approx(1.6449, abs=1e-3)  # Phi^-1(0.95)
    assert torch.allclose(q, -q.flip(0), atol=1e-6)


def test_manifold_rejects_bad_dims(tmp_path):
    with pytest.raises(ValueError, match="two different latent dimensions"):
        viz.plot_manifold(digits_run(2).model, tmp_path / "m.png", dims=(0, 2))


def test_project_2d_pca_keeps_most_variance():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(500, 6, generator=g) * torch.tensor([5.0, 3.0, 0.1, 0.1, 0.1, 0.1])
    xy, labels, mean, comps = viz.project_2d(codes)
    assert xy.shape == (500, 2)
    assert "principal component 1" in labels[0]
    assert xy[:, 0].var() > xy[:, 1].var() > 5  # the two big directions survive
    assert viz.project_2d(codes[:, :2])[1] == ["z[0]", "z[1]"]


def test_curves_need_metrics(tmp_path):
    with pytest.raises(ValueError, match="no training metrics"):
        viz.plot_curves([], tmp_path / "c.png")
    path = viz.plot_curves([{"epoch": 1, "train_elbo": -3.0, "train_kl": 1.0},
                            {"epoch": 2, "train_elbo": -2.0, "train_kl": 1.5}], tmp_path / "c.png")
    assert png(path).std() > 10
    # a run without a validation split logs test_ values: they are drawn too
    train_only = png(viz.plot_curves([{"epoch": 1, "train_elbo": -3.0}, {"epoch": 2, "train_elbo": -2.0}],
                                     tmp_path / "a.png"))
    with_test = png(viz.plot_curves([{"epoch": 1, "train_elbo": -3.0, "test_elbo": -3.5},
                                     {"epoch": 2, "train_elbo": -2.0, "test_elbo": -2.2}], tmp_path / "b.png"))
    assert train_only.shape != with_test.shape or (train_only != with_test).mean() > 0.01
    assert png(viz.plot_curves([{"epoch": 1, "test_elbo": -3.5}], tmp_path / "t.png")).std() > 10


def test_plot_command_writes_pngs_and_rejects_bad_input(tmp_path, capsys):
    run = digits_run(2)
    rc, out, _ = aevb(capsys, "plot", run.dir, "--kind", "manifold", "--kind", "curves", "--out", tmp_path, "--n", "8")
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "manifold.png"]
    assert out.count("wrote") == 2
    rc, _, err = aevb(capsys, "plot", run.dir, "--kind", "interpolate", "--b", "99999")
    assert rc == 1
    assert err.count("\n") == 1 and "outside the test split" in err
    rc, _, err = aevb(capsys, "plot", run.dir, "--dims", "0")
    assert rc == 2 and "--dims" in err
    rc, _, err = aevb(capsys, "plot", tmp_path / "missing")
    assert rc == 1 and err.count("\n") == 1


def test_n_is_bounded_per_kind(tmp_path):
    with pytest.raises(ValueError, match="between 2 and 64"):
        viz.make_plot(digits_run(2), "manifold", tmp_path / "m.png", n=500)


def test_every_kind_renders_for_an_autoencoder(tmp_path):
    run = digits_run(2, kind="ae")
    for kind in viz.PLOT_KINDS:
        assert png(viz.make_plot(run, kind, tmp_path / f"{kind}.png")).std() > 10
