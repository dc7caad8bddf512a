"""Every plot kind for 2-D and 10-D latents, grey and colour images; the HTML report."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from aevb.checkpoint import Run, save_model
from aevb.config import DataConfig, ModelConfig, RunConfig
from aevb.data import Dataset, Split
from aevb.report import KINDS, plot, write_report
from aevb.train import train
from aevb.viz import image_grid

from .conftest import run_cli


def colour_data(n=64) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 6, 5, generator=g)
    y = torch.arange(n) % 4
    return Dataset("colour", Split(x, y), None, Split(x, y), binary=False, num_classes=4)


def make_run(tmp_path, latent: int, shape=(3, 6, 5)) -> Run:
    cfg = RunConfig(model=ModelConfig(input_shape=shape, hidden=(16,), latent_dim=latent, likelihood="gaussian"),
                    data=DataConfig(dataset="digits"))
    torch.manual_seed(0)
    from aevb.model import build_model

    model = build_model(cfg.model).eval()
    save_model(tmp_path, model, cfg)
    (tmp_path / "metrics.jsonl").write_text(
        '{"epoch": 1, "train_elbo": -50.0, "train_kl": 3.0, "train_reconstruction": -47.0, "valid_elbo": -52.0, '
        '"valid_kl": 3.1, "valid_reconstruction": -48.9}\n'
        '{"epoch": 2, "train_elbo": -40.0, "train_kl": 4.0, "train_reconstruction": -36.0, "valid_elbo": -43.0, '
        '"valid_kl": 4.1, "valid_reconstruction": -38.9}\n')
    return Run(tmp_path, cfg, model)


@pytest.mark.parametrize("latent", [2, 10])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_for_colour_data(tmp_path, latent, kind):
    run = make_run(tmp_path, latent)
    path = plot(run, kind, tmp_path / f"{kind}.png", data=colour_data())
    with Image.open(path) as im:
        assert im.size[0] >= 200 and im.size[1] >= 100
        arr = np.asarray(im.convert("RGB"))
    assert arr.std() > 5  # not a blank canvas


@pytest.mark.slow
def test_grey_report_with_every_figure(tmp_path):
    run = train(dataset="digits", epochs=3, hidden=(32,), latent_dim=2, out=tmp_path / "r", progress=False)
    page = write_report(run).read_text()
    assert set(re.findall(r'<figure id="(\w+)">', page)) == set(KINDS)
    assert page.count("data:image/png;base64,") == len(KINDS)
    assert "valid_elbo" in page and "&quot;latent_dim&quot;: 2" in page
    out = run_cli("plot", str(tmp_path / "r"), "--kind", "manifold", "--kind", "scatter", "--out", str(tmp_path / "f"))
    assert out.stdout.count("wrote") == 2


def test_manifold_grid_follows_gaussian_quantiles(tmp_path):
    run = make_run(tmp_path, 2, shape=(1, 4, 4))
    decoded = []
    original = run.model.decode

    def spy(z):
        decoded.append(z.clone())
        return original(z)

    run.model.decode = spy
    plot(run, "manifold", tmp_path / "m.png")
    z = decoded[0].view(20, 20, 2)
    q = torch.distributions.Normal(0, 1).icdf(torch.tensor([0.025, 0.975]))
    assert z[0, 0, 0].item() == pytest.approx(q[0].item(), abs=1e-5)  # left column: lowest quantile of z[0]
    assert z[0, 0, 1].item() == pytest.approx(q[1].item(), abs=1e-5)  # top row: highest quantile of z[1]
    with pytest.raises(ValueError, match="two different latent dimensions"):
        plot(run, "manifold", tmp_path / "m.png", dims=(0, 0))


def test_image_grid_layout():
    imgs = torch.stack([torch.full((1, 2, 3), v) for v in (0.0, 0.5, 1.0)])
    grid = image_grid(imgs, ncol=2, pad=1)
    assert grid.shape == (5, 7)
    assert grid[0, 0] == 0.0 and grid[0, 4] == 0.5 and grid[3, 0] == 1.0 and grid[2, 0] == 1.0  # pad is white
