"""The evaluation suite: the importance-sampled log p(x), the bound ordering, the flat result dict."""

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
import torch.nn.functional as F
from torch import nn

from aevb import importance

from aevb.cli import cli
from aevb.config import ModelConfig
from aevb.distributions import Gaussian
from aevb.evaluate import evaluate, latent_statistics, log_likelihood, probe_accuracy
from aevb.importance import (bernoulli_mlp_log_weights, bernoulli_prep, decoder_row_bytes, has_fast_path,
                            onednn_linear_works, plan_chunks)
from aevb.models import VAE
from aevb.objectives import iwae_bound
from aevb.train import train
from aevb.runconfig import default_config

from .baselines import bernoulli_baseline
from .linear_gaussian import marginal as linear_marginal, set_exact_posterior_encoder

D, Z, SIGMA = 6, 2, 0.5


class LinearGaussianDecoder(nn.Module):
    """p(x|z) = N(W z + b, sigma^2 I): the mean without the MLP decoder's sigmoid."""

    def __init__(self, W, b, sigma):
        super().__init__()
        self.W, self.b, self.sigma = nn.Parameter(W), nn.Parameter(b), sigma

    def forward(self, z):
        mean = (z @ self.W.T + self.b).reshape(*z.shape[:-1], 1, 1, D)
        return Gaussian(mean, torch.full_like(mean, 2 * math.log(self.sigma)), event_ndim=3)


def linear_gaussian_model():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(D, Z, generator=g), torch.randn(D, generator=g)
    cfg = ModelConfig(input_shape=(1, 1, D), likelihood="gaussian_fixed", hidden=(D,), activation="linear",
                      latent_dim=Z, fixed_sigma=SIGMA)
    model = VAE(cfg)
    model.decoder = LinearGaussianDecoder(W, b, SIGMA)
    # The encoder gets the posterior mean exactly and a diagonal, 1.5x inflated variance: a good but imperfect q.
    set_exact_posterior_encoder(model, W, b, SIGMA, inflate=1.5)
    marginal = linear_marginal(W, b, SIGMA)
    return model, marginal


def test_importance_sampling_matches_closed_form_linear_gaussian():
    model, marginal = linear_gaussian_model()
    x = marginal.sample(torch.Size([20]))
    exact = marginal.log_prob(x).double()
    est = log_likelihood(model, x.reshape(20, 1, 1, D), k=5000, batch_size=7, chunk=1000)
    assert est.shape == (20,)
    assert (est - exact).abs().max().item() < 0.05
    # the one-sample bound (the ELBO) is measurably below it: the test has teeth
    elbo1 = log_likelihood(model, x.reshape(20, 1, 1, D), k=1)
    assert (exact - elbo1).mean().item() > 0.05


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    # 20 epochs: enough to beat the independent-pixel baseline (test_evaluate_returns_flat_suite)
    return train(default_config("digits"), out=out, epochs=20, latent_dim=4, hidden=(64,), progress=False, lr=3e-3,
                 device="cpu")


def test_elbo_below_iwae_k_below_iwae_larger_k(digits_run):
    model = digits_run.model.eval()
    x = digits_run.dataset().test.x[:200]
    torch.manual_seed(0)
    values = {}
    with torch.no_grad():
        for k in (1, 10, 200):
            values[k] = iwae_bound(model, x, k, generator=torch.Generator().manual_seed(k), reduction="none")["iwae"].double()
    for lo, hi in ((1, 10), (10, 200)):
        diff = values[hi] - values[lo]
        se = diff.std().item() / math.sqrt(len(diff))
        assert diff.mean().item() > -2 * se, (lo, hi, diff.mean().item(), se)
    assert (values[200] - values[1]).mean().item() > 0  # strictly better on average on a trained model


def test_evaluate_returns_flat_suite(digits_run):
    model = digits_run.model
    ds = digits_run.dataset()
    res = evaluate(model, ds.test.x[:100], k=50, y=ds.test.y[:100], probe_train=(ds.train.x, ds.train.y))
    for key in ("elbo", "log_likelihood", "k", "log_likelihood_stderr", "bits_per_dim", "active_units",
                "probe_logreg_accuracy", "probe_knn_accuracy", "kl_dim_0", "kl_dim_3"):
        assert key in res, key
    assert res["k"] == 50 and res["n"] == 100
    assert res["log_likelihood"] >= res["elbo"] - 3 * res["log_likelihood_stderr"]
    independent = bernoulli_baseline(ds.train.x, ds.test.x[:100])  # -27.5: the best of a decoder ignoring z
    assert res["log_likelihood"] > independent + 1.5, (res["log_likelihood"], independent)  # measured -24.5
    assert 0 <= res["active_units"] <= 4
    assert sum(res[f"kl_dim_{j}"] for j in range(4)) == pytest.approx(res["kl"], rel=1e-4)
    assert res["bits_per_dim"] == pytest.approx(-res["log_likelihood"] / (64 * math.log(2)))
    assert 0.2 < res["probe_logreg_accuracy"] <= 1 and 0.2 < res["probe_knn_accuracy"] <= 1  # chance is 0.1
    json.dumps(res)


def test_active_units_counts_variance_of_posterior_means():
    model, marginal = linear_gaussian_model()
    x = marginal.sample(torch.Size([500])).reshape(500, 1, 1, D)
    stats = latent_statistics(model, x)
    assert stats["active_units"] == Z
    with torch.no_grad():
        model.encoder.heads["mu"].weight[1].zero_()  # dimension 1 ignores x: inactive
    assert latent_statistics(model, x)["active_units"] == 1


def test_probe_accuracy_separable_codes():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    codes = torch.randn(200, 3, generator=g) * 0.1 + y[:, None].float() * 3
    res = probe_accuracy(codes[:150], y[:150], codes[150:], y[150:])
    assert res["probe_logreg_accuracy"] == 1.0 and res["probe_knn_accuracy"] == 1.0


def test_cli_evaluate_json(digits_run):
    r = CliRunner().invoke(cli, ["evaluate", str(digits_run.dir), "--k", "20", "--n", "50", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["split"] == "test" and res["k"] == 20 and "probe_knn_accuracy" in res and "active_units" in res
    r = CliRunner().invoke(cli, ["evaluate", str(digits_run.dir), "--k", "0", "--no-probe", "--split", "valid",
                                 "--n", "30"])
    assert r.exit_code == 0, r.output
    assert "active_units" in r.output and "probe" not in r.output and "log_likelihood " not in r.output


def bernoulli_mlp_model(input_shape=(1, 28, 28), activation="tanh", hidden=(64, 48), latent_dim=5):
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=input_shape, hidden=hidden, activation=activation, latent_dim=latent_dim))
    with torch.no_grad():
        for p in model.parameters():  # logits of a few units, as in a trained model (the default init gives ~0.3)
            p.mul_(2)
    return model.eval()


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("input_shape,activation", [((1, 28, 28), "tanh"), ((1, 5, 10), "relu"),
                                                    ((1, 28, 28), "softplus")])
def test_fast_bernoulli_path_equals_straightforward_log_weights(input_shape, activation, onednn):
    if onednn and not onednn_linear_works():
        pytest.skip("oneDNN's linear is not available in this torch build")
    model = bernoulli_mlp_model(input_shape, activation)
    assert has_fast_path(model)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, *input_shape, generator=g)
    x[:4] = x[:4].bernoulli(generator=g)  # binary images, and two grey ones (a Bernoulli log_prob accepts [0, 1])
    eps = torch.randn(6, 40, model.config.latent_dim, generator=g)
    with torch.no_grad():
        q = model.encode(x)
        prep = bernoulli_prep(model.decoder, x, q.mu, q.log_var)
        fast = bernoulli_mlp_log_weights(model.decoder, prep, eps, onednn)
        # the straightforward computation, in float64: sum x l - softplus(l) + log p(z) - log q(z|x)
        m64 = copy.deepcopy(model).double()
        mu, log_var = q.mu.double()[:, None], q.log_var.double()[:, None]
        z = mu + torch.exp(0.5 * log_var) * eps.double()
        logits = m64.decoder(z).logits.flatten(2)
        log_px_z = (x.double().flatten(1)[:, None] * logits - F.softplus(logits)).sum(-1)
        log_pz = -0.5 * ((z**2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))
        log_qz = (-0.5 * (math.log(2 * math.pi) + log_var + (z - mu) ** 2 * torch.exp(-log_var))).sum(-1)
        reference = log_px_z + log_pz - log_qz
    assert fast.shape == (6, 40)
    # 1e-4 nats plus float32's own rounding of values of this size (|log w| here is 60 to 1500 nats;
    # the straightforward float32 computation is off by as much)
    assert ((fast - reference).abs() <= 1e-4 + 1.5e-7 * reference.abs()).all()


def test_fast_and_generic_log_likelihood_agree_for_a_seed():
    model = bernoulli_mlp_model()
    x = torch.rand(9, 1, 28, 28, generator=torch.Generator().manual_seed(2)).bernoulli()
    fast = log_likelihood(model, x, k=300, batch_size=4, seed=3)
    generic = log_likelihood(model, x, k=300, batch_size=4, seed=3, fast=False)
    addmm = log_likelihood(model, x, k=300, batch_size=4, seed=3, gemm="torch")
    tolerance = 1e-4 + 1.5e-7 * generic.abs()  # float32 rounding of ~570-nat log-weights: 6e-5 a step
    assert ((fast - generic).abs() <= tolerance).all()  # the same chunks, hence the same noise, on every path
    assert ((fast - addmm).abs() <= tolerance).all()


@pytest.mark.parametrize("k,n,row_bytes,budget", [(5000, 10000, 16704, 16 * 2**20), (1, 7, 100, 10**4),
                                                  (37, 3, 1000, 5000), (5000, 1, 10**9, 10**6), (10, 1000, 8, 10**9)])
def test_chunk_plan_never_exceeds_its_budget(k, n, row_bytes, budget):
    plan = plan_chunks(k, n, row_bytes, budget, max_images=100)
    assert plan.chunk_bytes <= max(budget, row_bytes)  # one row is the least a chunk can be
    assert 1 <= plan.images <= min(n, 100) and 1 <= plan.samples <= k
    n_chunks = math.ceil(k / plan.samples)
    assert k - (n_chunks - 1) * plan.samples <= plan.samples  # equal chunks, the last one no larger


@pytest.mark.parametrize("fast", [True, False])
def test_decoded_rows_stay_within_the_byte_budget(monkeypatch, fast):
    model = bernoulli_mlp_model()
    budget = 200 * decoder_row_bytes(model)
    shapes = []
    real = importance.draw_noise

    def record(generator, images, samples, latent_dim, like):
        shapes.append((images, samples))
        return real(generator, images, samples, latent_dim, like)

    monkeypatch.setattr(importance, "draw_noise", record)
    x = torch.rand(5, 1, 28, 28).bernoulli()
    log_likelihood(model, x, k=1000, max_chunk_bytes=budget, fast=fast)
    assert max(b * s for b, s in shapes) <= 200
    assert sum(b * s for b, s in shapes) == 5 * 1000  # every (image, sample) row once


def test_conditional_model_takes_the_fast_path_with_its_label():
    torch.manual_seed(0)
    model = VAE(ModelConfig(hidden=(64,), activation="tanh", latent_dim=5, num_classes=3)).eval()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(4)).bernoulli()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert has_fast_path(model)
    fast = log_likelihood(model, x, k=200, batch_size=4, seed=1, y=y)
    generic = log_likelihood(model, x, k=200, batch_size=4, seed=1, y=y, fast=False)
    assert ((fast - generic).abs() <= 1e-4 + 1.5e-7 * generic.abs()).all()
    other = log_likelihood(model, x, k=200, batch_size=4, seed=1, y=(y + 1) % 3)
    assert (fast - other).abs().max().item() > 1e-3  # the label reaches the decoder on the fast path


# --- what the suite reports for which likelihood ----------------------------------------------


def _small(likelihood: str, shape=(1, 2, 5)) -> VAE:
    torch.manual_seed(0)
    return VAE(ModelConfig(input_shape=shape, likelihood=likelihood, hidden=(8,), latent_dim=2))


@pytest.mark.parametrize("likelihood,discrete", [("bernoulli", True), ("discretized_logistic", True),
                                                 ("gaussian", False), ("gaussian_fixed", False)])
def test_bits_per_dim_only_for_discrete_likelihoods(likelihood, discrete):
    """Bits/dim are -log P(x) / (D ln 2) of a probability; a Gaussian density's (Frey Face's -2.88)
    is no such number. The likelihood object says whether it is discrete."""
    model = _small(likelihood)
    x = (torch.randint(0, 2, (6, 1, 2, 5)) if likelihood == "bernoulli" else torch.randint(0, 256, (6, 1, 2, 5)) / 255)
    res = evaluate(model, x.float(), k=4)
    assert ("bits_per_dim" in res) is discrete and ("elbo_bits_per_dim" in res) is discrete
    assert "log_likelihood" in res and res["discrete_likelihood"] is discrete  # says why bits/dim are absent
    if discrete:
        assert res["bits_per_dim"] == pytest.approx(-res["log_likelihood"] / (10 * math.log(2)))


def test_evaluate_reports_the_fraction_of_decoder_log_variances_at_the_clamp():
    """3 of the 10 pixels' log-variances are pushed past log_var_min (-10), 1 past log_var_max: 0.4."""
    model = _small("gaussian")
    with torch.no_grad():
        head = model.decoder.log_var
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-30.0, -12.0, -10.5, 40.0, 0.0, -9.9, 9.9, 1.0, 2.0, 3.0]))
    x = torch.rand(7, 1, 2, 5)
    res = evaluate(model, x, k=0)
    assert res["decoder_scale_at_clamp"] == pytest.approx(0.4)
    with torch.no_grad():
        head.bias.zero_()
    assert evaluate(model, x, k=0)["decoder_scale_at_clamp"] == 0.0
    # the discretized logistic's log-scale has one clamp, [LOG_SCALE_MIN, LOG_SCALE_MAX] = [-8, 5]
    model = _small("discretized_logistic")
    with torch.no_grad():
        model.decoder.log_var.weight.zero_()
        model.decoder.log_var.bias.copy_(torch.tensor([-9.0, -8.5, 6.0, 0, 0, 0, 0, 0, 0, -7.9]))
    assert evaluate(model, x, k=0)["decoder_scale_at_clamp"] == pytest.approx(0.3)
    assert "decoder_scale_at_clamp" not in evaluate(_small("bernoulli"), (x > 0.5).float(), k=0)  # no scale


def test_log_likelihood_stderr_is_the_standard_error_over_images():
    model = _small("bernoulli")
    x = torch.randint(0, 2, (40, 1, 2, 5)).float()
    res = evaluate(model, x, k=8, seed=3)
    ll = log_likelihood(model, x, k=8, seed=3)
    assert res["log_likelihood"] == pytest.approx(ll.mean().item(), rel=1e-12)
    assert res["log_likelihood_stderr"] == pytest.approx(ll.std().item() / math.sqrt(40), rel=1e-9)
