"""The mixture of discretized logistics (``--likelihood discretized_logistic_mixture``): a probability of the
256 values per pixel for 1 and 3 channels, one component is the discretized logistic, draws follow the pmf,
log-densities stay float32, and the conv VAE and the conv hierarchy train with it and load back."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi2

import aevb
from aevb.config import ConfigError, ModelConfig
from aevb.distributions import (LOG_SCALE_MAX, LOG_SCALE_MIN, DiscretizedLogistic, DiscretizedLogisticMixture,
                                mixture_params_per_channel)
from aevb.models import build_model
from aevb.models.hvae import HVAEConfig
from aevb.nets import as_likelihood
from aevb.objectives import OBJECTIVES

VALUES = torch.arange(256, dtype=torch.float64) / 255.0


def random_mixture(k: int, channels: int, pixels: tuple[int, int] = (1, 1), lead: tuple[int, ...] = (),
                   seed: int = 0, dtype=torch.float64) -> DiscretizedLogisticMixture:
    """Random parameters, means partly outside [0, 1] and log-scales past both clamps."""
    g = torch.Generator().manual_seed(seed)
    h, w = pixels

    def rand(*shape):
        return torch.randn(*lead, *shape, h, w, generator=g, dtype=dtype)

    means = 0.5 + 0.6 * rand(k, channels)
    log_scales = -3.0 + 3.0 * rand(k, channels)
    coeffs = 2.0 * rand(k, 3) if channels == 3 else None
    return DiscretizedLogisticMixture(2.0 * rand(k), means, log_scales, coeffs)


def grid_pmf(mix: DiscretizedLogisticMixture) -> torch.Tensor:
    """P(r, g, b) of a one-pixel 3-channel mixture on all 256^3 values (256, 256, 256), float64."""
    g = VALUES.view(256, 1).expand(256, 256)
    b = VALUES.view(1, 256).expand(256, 256)
    rows = [mix.log_prob_per_pixel(torch.stack([r.expand(256, 256), g, b]).unsqueeze(0))[0] for r in VALUES]
    return torch.stack(rows).double().exp()  # each row: (g, b) laid out as a 256 x 256 "image"


# --- a probability of the 256 values ------------------------------------------------------------------------


def test_one_channel_pmf_sums_to_one_over_the_256_values_of_every_pixel():
    mix = random_mixture(5, 1, pixels=(4, 5), lead=(2,), dtype=torch.float32)
    x = VALUES.float().view(256, 1, 1, 1, 1).expand(256, 2, 1, 4, 5)  # every value at every pixel
    pmf = mix.log_prob_per_pixel(x).double().exp()  # (256, 2, 4, 5)
    assert pmf.shape == (256, 2, 4, 5)
    assert (pmf.sum(0) - 1).abs().max() < 1e-5


@pytest.mark.slow
def test_three_channel_pmf_sums_to_one_and_draws_follow_it():
    """All 256^3 colours of one pixel (about 3 s); then 20,000 draws against the pmf on 4 x 4 x 4 colour cells."""
    mix = random_mixture(2, 3, dtype=torch.float32, seed=1)
    pmf = grid_pmf(mix)
    assert abs(pmf.sum().item() - 1) < 1e-5
    n = 20000
    draws = DiscretizedLogisticMixture(*(t.expand(n, *t.shape) for t in (mix.logits, mix.means, mix.log_scales)),
                                       torch.atanh(mix.coeffs).expand(n, *mix.coeffs.shape))
    x = draws.sample(torch.Generator().manual_seed(0))[:, :, 0, 0]  # (n, 3)
    assert torch.equal(x, (x * 255).round() / 255) and x.min() >= 0 and x.max() <= 1
    cells = (x * 255).round().long() // 64  # (n, 3) in 0..3
    observed = torch.bincount(cells[:, 0] * 16 + cells[:, 1] * 4 + cells[:, 2], minlength=64).double()
    expected = n * pmf.view(4, 64, 4, 64, 4, 64).sum((1, 3, 5)).flatten()
    keep = expected >= 5
    stat = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    assert chi2.sf(stat, int(keep.sum()) - 1) > 1e-3, stat
    assert observed[~keep].sum() <= max(10.0, 3 * expected[~keep].sum().item())


def test_one_channel_draws_follow_the_pmf():
    mix = random_mixture(3, 1, dtype=torch.float64, seed=2)
    pmf = mix.log_prob_per_pixel(VALUES.view(256, 1, 1, 1)).exp()[:, 0, 0]  # (256,)
    n = 20000
    many = DiscretizedLogisticMixture(*(t.expand(n, *t.shape) for t in (mix.logits, mix.means, mix.log_scales)))
    x = many.sample(torch.Generator().manual_seed(0))[:, 0, 0, 0]
    observed = torch.bincount((x * 255).round().long(), minlength=256).double()
    expected = n * pmf
    keep = expected >= 5
    stat = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    assert chi2.sf(stat, int(keep.sum()) - 1) > 1e-3, stat
    assert abs(x.mean().item() - (VALUES * pmf).sum().item()) < 4 * x.std().item() / math.sqrt(n)


# --- one component is the discretized logistic ---------------------------------------------------------------


def test_one_component_is_the_discretized_logistic_exactly():
    g = torch.Generator().manual_seed(3)
    mean, log_scale = torch.rand(2, 1, 6, 5, generator=g), torch.randn(2, 1, 6, 5, generator=g) * 4 - 3
    x = torch.randint(0, 256, (2, 1, 6, 5), generator=g) / 255.0
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # both edge bins
    single = DiscretizedLogistic(mean, log_scale, event_ndim=3)
    mix = DiscretizedLogisticMixture(torch.randn(2, 1, 6, 5, generator=g), mean.unsqueeze(1), log_scale.unsqueeze(1))
    assert torch.equal(mix.log_prob_per_pixel(x), single.log_prob_per_dim(x)[:, 0])
    assert torch.equal(mix.log_prob(x), single.log_prob(x))
    assert torch.equal(mix.mean, single.mean)
    assert torch.equal(mix.at_clamp()[:, 0], single.at_clamp())
    # three channels with zero colour coefficients: the channels' discretized logistics, independent
    mean3, log_scale3 = torch.rand(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g) - 3
    x3 = torch.randint(0, 256, (2, 3, 4, 4), generator=g) / 255.0
    mix3 = DiscretizedLogisticMixture(torch.zeros(2, 1, 4, 4), mean3.unsqueeze(1), log_scale3.unsqueeze(1),
                                      torch.zeros(2, 1, 3, 4, 4))
    torch.testing.assert_close(mix3.log_prob(x3), DiscretizedLogistic(mean3, log_scale3, 3).log_prob(x3),
                               rtol=1e-6, atol=1e-4)


def test_the_colour_coefficients_make_green_and_blue_depend_on_red_and_green():
    """PixelCNN++: mu_G = m_G + tanh(a) x_R, mu_B = m_B + tanh(b) x_R + tanh(c) x_G, per component."""
    m = torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64).view(1, 3, 1, 1)
    ls = torch.full((1, 3, 1, 1), -4.0, dtype=torch.float64)
    co = torch.tensor([0.5, -0.3, 0.8], dtype=torch.float64).view(1, 3, 1, 1)
    mix = DiscretizedLogisticMixture(torch.zeros(1, 1, 1, dtype=torch.float64), m, ls, co)
    x = torch.tensor([100, 30, 200], dtype=torch.float64).view(3, 1, 1) / 255.0
    a, b, c = torch.tanh(co.flatten())
    means = torch.stack([m[0, 0], m[0, 1] + a * x[0], m[0, 2] + b * x[0] + c * x[1]])  # (3, 1, 1)
    expected = DiscretizedLogistic(means, ls[0], event_ndim=3).log_prob(x)
    torch.testing.assert_close(mix.log_prob(x), expected, rtol=0, atol=1e-12)


# --- clamps, precision, parameters ---------------------------------------------------------------------------


def test_log_scales_are_clamped_once_and_log_densities_are_float32_from_bf16():
    mix = DiscretizedLogisticMixture(torch.zeros(2, 1, 1), torch.full((2, 1, 1, 1), 0.5),
                                     torch.tensor([-30.0, 30.0]).view(2, 1, 1, 1))
    assert mix.log_scales.flatten().tolist() == [LOG_SCALE_MIN, LOG_SCALE_MAX] and mix.at_clamp().all()
    x = torch.full((1, 1, 1), 0.5)
    bf = random_mixture(3, 3, pixels=(2, 2), dtype=torch.bfloat16)
    lp = bf.log_prob(torch.rand(3, 2, 2))
    assert lp.dtype == torch.float32 and torch.isfinite(lp)
    assert torch.isfinite(mix.log_prob(x))


def test_decoder_planes_are_read_as_logits_means_log_scales_and_coefficients():
    assert mixture_params_per_channel(10, 1) == 30 and mixture_params_per_channel(10, 3) == 40
    cfg = ModelConfig(input_shape=(3, 2, 2), likelihood="discretized_logistic_mixture", mixture_components=2)
    params = torch.randn(5, 8, 3, 2, 2)  # (..., P, C, H, W), P = 4K
    lik = as_likelihood(cfg, params)
    assert isinstance(lik, DiscretizedLogisticMixture)
    torch.testing.assert_close(lik.logits, params[:, :2].sum(2))
    torch.testing.assert_close(lik.means, torch.sigmoid(params[:, 2:4]))
    torch.testing.assert_close(lik.log_scales, params[:, 4:6].clamp(LOG_SCALE_MIN, LOG_SCALE_MAX))
    torch.testing.assert_close(lik.coeffs, torch.tanh(params[:, 6:8]))
    with pytest.raises(ValueError, match=r"returns \(\.\.\., 8, 3, 2, 2\)"):
        as_likelihood(cfg, torch.randn(5, 2, 3, 2, 2))
    with pytest.raises(ConfigError, match="mixture_components must be a positive integer"):
        ModelConfig(likelihood="discretized_logistic_mixture", mixture_components=0)


# --- networks and runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    ModelConfig(input_shape=(1, 12, 10), architecture="conv", conv_channels=(4, 8), hidden=(16,), latent_dim=3),
    ModelConfig(input_shape=(3, 9, 8), architecture="mlp", hidden=(16,), latent_dim=3),
    HVAEConfig(input_shape=(3, 17, 12), architecture="conv", conv_channels=(4, 8), latent_layers=3,
               latent_sizes=(2, 2, 1), ema_decay=0.0),
], ids=["conv-vae", "mlp-vae", "conv-hvae"])
def test_the_vae_and_the_hierarchy_decode_into_the_mixture(cfg):
    from dataclasses import replace

    cfg = replace(cfg, likelihood="discretized_logistic_mixture", mixture_components=3)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, 256, (2, *cfg.input_shape), generator=torch.Generator().manual_seed(0)) / 255.0
    lik = model.decode(model.embed(x))
    assert isinstance(lik, DiscretizedLogisticMixture) and lik.logits.shape == (2, 3, *cfg.input_shape[1:])
    assert lik.log_prob(x).shape == (2,) and lik.sample().shape == x.shape and lik.mean.shape == x.shape
    objective = OBJECTIVES[model.capabilities.objectives[0]]  # the family's default: elbo, hierarchical_elbo
    terms = objective(model, x, generator=torch.Generator().manual_seed(0))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                                 if p.grad is not None)


def test_a_short_conv_run_with_the_mixture_loads_back_with_identical_outputs(tmp_path):
    run = aevb.train(out=tmp_path / "run", dataset="digits", architecture="conv", conv_channels=(4, 8), hidden=(16,),
                     latent_dim=2, likelihood="discretized_logistic_mixture", mixture_components=3, epochs=1,
                     batch_size=64, progress=False, device="cpu", seed=0)
    loaded = aevb.load(tmp_path / "run")
    assert loaded.config.model.mixture_components == 3
    x = run.dataset().test.x[:20]
    a, b = run.model.eval(), loaded.model.eval()
    za, zb = a.embed(x), b.embed(x)
    assert torch.equal(za, zb)
    la, lb = a.decode(za), b.decode(zb)
    assert torch.equal(la.log_prob(x), lb.log_prob(x)) and torch.equal(la.mean, lb.mean)
    result = aevb.evaluate(b, x, k=5)
    assert result["discrete_likelihood"] is True
    assert result["bits_per_dim"] == pytest.approx(-result["log_likelihood"] / (x[0].numel() * math.log(2)))


def test_the_cli_takes_the_likelihood_and_its_components(tmp_path):
    from aevb.cli.train import train

    ctx = train.make_context("train", ["--likelihood", "discretized_logistic_mixture", "--mixture-components", "4"])
    assert ctx.params["likelihood"] == "discretized_logistic_mixture" and ctx.params["mixture_components"] == 4
    from aevb.runconfig import plan_run

    # an out folder of its own: the default, runs/digits, holds the README's main job's run after it ran
    plan = plan_run(out=tmp_path / "run", overrides={"dataset": "digits", "architecture": "conv",
                                                     "likelihood": "discretized_logistic_mixture",
                                                     "mixture_components": 4})
    assert plan.config.model.mixture_components == 4
