"""The evaluation suite against closed forms and on trained models."""

from __future__ import annotations

import pytest
import torch

from aevb.config import ModelConfig
from aevb.evaluate import evaluate, latent_statistics, log_likelihood, probe_accuracy
from aevb.model import VAE
from aevb.train import apply_overrides, default_config, train

from .test_objectives import D, linear_gaussian


def test_importance_sampled_log_likelihood_matches_closed_form():
    m, marginal = linear_gaussian(perturb=0.1)
    torch.manual_seed(4)
    x = marginal.sample((200,)).view(200, 1, 1, D)
    exact = marginal.log_prob(x.view(-1, D)).mean().item()
    est = log_likelihood(m, x, k=2000, batch_size=50, chunk=500).mean().item()
    assert est == pytest.approx(exact, abs=0.05)
    res = evaluate(m, x, k=2000)
    assert res["elbo"] < res["log_likelihood"] <= exact + 0.05
    assert res["bits_per_dim"] == pytest.approx(-res["log_likelihood"] / (D * 0.6931471805599453))


def test_active_units_and_kl_per_dimension():
    torch.manual_seed(0)
    m = VAE(ModelConfig(input_shape=(1, 2, 3), hidden=(), latent_dim=3))
    with torch.no_grad():
        m.encoder.heads["mu"].weight.zero_()
        m.encoder.heads["mu"].weight[0] = 1.0  # only dimension 0 depends on x
        m.encoder.heads["mu"].bias.zero_()
        m.encoder.heads["log_var"].weight.zero_()
        m.encoder.heads["log_var"].bias.zero_()  # sigma = 1: the KL of a dimension is mu^2 / 2
    x = torch.rand(500, 1, 2, 3)
    st = latent_statistics(m, x)
    assert st["active_units"] == 1 and st["latent_dim"] == 3
    s = x.view(500, -1).sum(1)
    assert st["activity"][0] == pytest.approx(s.var().item(), rel=1e-4)
    assert st["kl_per_dim"][0] == pytest.approx((s**2 / 2).mean().item(), rel=1e-4)
    assert st["kl_per_dim"][1:] == [0.0, 0.0]


def test_probe_on_separable_and_random_codes():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=g)
    codes = torch.randn(600, 4, generator=g) * 0.1 + torch.nn.functional.one_hot(y, 4).float()
    res = probe_accuracy(codes[:400], y[:400], codes[400:], y[400:])
    assert res["probe_logreg_accuracy"] == 1.0 and res["probe_knn_accuracy"] == 1.0
    noise = torch.randn(600, 4, generator=g)
    res = probe_accuracy(noise[:400], y[:400], noise[400:], y[400:])
    assert res["probe_logreg_accuracy"] < 0.5


@pytest.mark.slow
def test_bounds_are_ordered_on_a_trained_model(tmp_path):
    run = train(dataset="digits", epochs=30, hidden=(64,), latent_dim=8, out=tmp_path / "r", progress=False)
    x = run.dataset().test.x
    r1 = evaluate(run.model, x, k=1, seed=1)
    r10 = evaluate(run.model, x, k=10, seed=1)
    r500 = evaluate(run.model, x, k=500, seed=1)
    se = max(r1["log_likelihood_stderr"], r500["log_likelihood_stderr"]) * 0.2  # paired: same images
    assert r1["log_likelihood"] == pytest.approx(r1["elbo"], abs=0.3)
    assert r1["log_likelihood"] < r10["log_likelihood"] + se
    assert r10["log_likelihood"] < r500["log_likelihood"] + se
    assert r500["log_likelihood"] - r1["elbo"] > 0.3  # the bound really tightens
    ds = run.dataset()
    probe = evaluate(run.model, x, k=10, probe=(ds.train.x, ds.train.y, ds.test.y))
    assert probe["probe_logreg_accuracy"] > 0.8 and probe["probe_knn_accuracy"] > 0.8
    assert 1 <= probe["active_units"] <= 8
