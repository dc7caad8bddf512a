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


def model_using_only(dims: tuple[int, ...], latent_dim: int = 6):
    """A VAE whose posterior carries x only in ``dims``: every other dimension is exactly the prior
    (mean 0, log-variance 0), so its KL is 0."""
    from aevb.config import ModelConfig
    from aevb.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=latent_dim)).eval()
    keep = torch.zeros(latent_dim, dtype=torch.bool)
    keep[list(dims)] = True
    with torch.no_grad():
        for head in ("mu", "log_var"):
            model.encoder.heads[head].weight[~keep] = 0
            model.encoder.heads[head].bias[~keep] = 0
        model.encoder.heads["mu"].weight[keep] *= 5  # and in dims a clearly non-zero KL
    return model


def test_the_manifold_spans_the_two_most_active_dimensions_by_default(tmp_path):
    from types import SimpleNamespace

    from aevb.data import Split

    model = model_using_only((4, 1))
    data = Split(torch.rand(200, 1, 8, 8))
    scores, measure = viz.latent_activity(model, data.x)
    assert measure == "KL" and [s == 0 for s in scores] == [True, False, True, True, False, True]
    dims, why = viz.manifold_dims(SimpleNamespace(model=model), data)
    assert sorted(dims) == [1, 4] and scores[dims[0]] >= scores[dims[1]] and "most active dimensions, by KL" in why
    # without data, the KL of the run's latest evaluation decides
    run = SimpleNamespace(model=model, evaluation={"kl_per_dim": [0.0, 0.1, 2.0, 0.0, 3.0, 0.0]})
    assert viz.manifold_dims(run) == ((4, 2), "the two most active dimensions, by KL in evaluation.json")
    assert viz.manifold_dims(SimpleNamespace(model=model, evaluation=None)) == ((0, 1), "")
    assert viz.top_two([1.0, 5.0, 5.0]) == (1, 2)  # ties to the lower index


def test_make_plot_defaults_the_manifold_to_the_active_dimensions(tmp_path, monkeypatch):
    run = digits_run(10)
    drawn = {}
    monkeypatch.setattr(viz, "plot_manifold", lambda model, path, dims, n, label, why: drawn.update(dims=dims, why=why))
    viz.make_plot(run, "manifold", tmp_path / "m.png")
    test = run.dataset().test
    assert drawn["dims"] == viz.top_two(viz.latent_activity(run.model, test.x)[0]) and "KL" in drawn["why"]
    viz.make_plot(run, "manifold", tmp_path / "m.png", dims=(0, 1))
    assert drawn == {"dims": (0, 1), "why": None}


def test_curves_of_a_short_run_have_integer_epoch_ticks(tmp_path, monkeypatch):
    ticks = []
    real_save = viz.save_figure

    def keep_ticks(fig, path, **kw):
        fig.canvas.draw()
        ticks.extend(t for ax in fig.axes for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
        return real_save(fig, path, **kw)

    monkeypatch.setattr(viz, "save_figure", keep_ticks)
    metrics = [{"epoch": e, "train_elbo": -3.0 + e, "valid_elbo": -3.5 + e} for e in (1, 2, 3)]
    viz.plot_curves(metrics, tmp_path / "c.png")
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_each_kind_has_its_own_count_and_n_is_a_deprecated_alias(tmp_path, capsys):
    run = digits_run(2)
    rc, out, err = aevb(capsys, "plot", run.dir, "--kind", "manifold", "--grid", "5", "--kind", "interpolate",
                        "--steps", "3", "--kind", "samples", "--images", "4", "--out", tmp_path / "own")
    assert rc == 0 and err == "" and out.count("wrote") == 3
    rc, out, err = aevb(capsys, "plot", run.dir, "--kind", "manifold", "--n", "5", "--out", tmp_path / "alias")
    assert rc == 0 and "--n is deprecated" in err and "--grid (manifold)" in err
    # the alias means the same as the kind's own flag
    assert png(tmp_path / "alias" / "manifold.png").shape == png(tmp_path / "own" / "manifold.png").shape
    rc, _, err = aevb(capsys, "plot", run.dir, "--kind", "manifold", "--grid", "100")
    assert rc == 2 and "--grid" in err
    with pytest.raises(ValueError, match="images for a reconstructions plot must be between 2 and 256; got 300"):
        viz.make_plot(run, "reconstructions", tmp_path / "r.png", images=300)


def _legend_overlaps(fig) -> list[int]:
    """The panels whose area the figure's legends cover."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    return [i for i, ax in enumerate(fig.axes) for legend in legends
            if legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))]


def test_paper_figures_are_wide_and_their_legends_cover_no_curve(tmp_path):
    import matplotlib.pyplot as plt

    from aevb.reproduce import figure2, figure3

    rows2 = [{"nz": nz, "algorithm": alg, "samples": s, "train_bound": -200.0 + 10 * i, "test_bound": -205.0 + 9 * i}
             for nz in (2, 5) for alg in ("aevb", "wake-sleep") for i, s in enumerate((100, 1000, 10000))]
    rows3 = [{"method": m, "n_train": 1000, "samples": s, "train_log_px": -150.0 + 5 * i, "test_log_px": -155.0 + 4 * i}
             for m in ("aevb", "wake-sleep", "mcem") for i, s in enumerate((100, 1000, 10000))]
    for fig in (figure2.figure(rows2, "t"), figure2.figure(rows2[:6]), figure3.figure(rows3)):
        assert _legend_overlaps(fig) == []
        plt.close(fig)
    for path in (figure2.plot(rows2[:6], tmp_path / "f2.png"), figure3.plot(rows3, tmp_path / "f3.png")):
        assert png(path).shape[1] >= 1600  # one panel each: the narrowest these figures get
