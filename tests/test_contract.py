"""Contract tests every model configuration passes: build, forward shapes, a finite objective
and gradient, save -> load -> identical outputs, and determinism with a seed.

Parametrized over architecture x likelihood x image size (28x28x1, 28x20x1, 32x32x3,
64x64x3, 8x8x1), then the same checks for conditional models (a label beside x and z),
plus the discretized logistic likelihood's own checks.
"""

from __future__ import annotations

import math

import pytest
import torch

from aevb.checkpoint import load_model, save_model
from aevb.conditional import LabelError
from aevb.config import ConfigError, LIKELIHOODS, ModelConfig, RunConfig
from aevb.distributions import DiscretizedLogistic
from aevb.evaluate import bits_per_dim
from aevb.models import build_model
from aevb.objectives import ae_loss, elbo, iwae_bound

SHAPES = [(1, 28, 28), (1, 28, 20), (3, 32, 32), (3, 64, 64), (1, 8, 8)]
ARCHS = ["mlp", "conv"]


def small_config(arch: str, likelihood: str, shape, kind: str = "vae", num_classes: int = 0) -> ModelConfig:
    return ModelConfig(input_shape=shape, architecture=arch, likelihood=likelihood, family=kind, hidden=(16,),
                       latent_dim=3, conv_channels=(4, 8), num_classes=num_classes)


def batch(shape, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, *shape), generator=g).float() / 255)  # 8-bit values in [0, 1]


def build(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg)


def labels_for(cfg: ModelConfig, n: int = 2) -> torch.Tensor | None:
    """n distinct labels for a conditional model (None for an unconditional one)."""
    return torch.arange(n) % cfg.num_classes if cfg.num_classes else None


def check_vae_contract(cfg: ModelConfig, tmp_path) -> None:
    """The contract of a VAE; a conditional one gets a label beside every x and z."""
    shape = cfg.input_shape
    model = build(cfg)
    x = batch(shape)
    y = labels_for(cfg)

    # forward: posterior (B, Z); likelihood shaped (L, B, C, H, W); samples and reconstructions (B, C, H, W)
    q = model.encode(x, y)
    assert q.mu.shape == (2, 3) and q.log_var.shape == (2, 3)
    px = model.decode(q.rsample(4), y)
    assert px.mean.shape == (4, 2, *shape)
    assert px.log_prob(x).shape == (4, 2)
    y5 = labels_for(cfg, 5)
    assert model.sample(5, generator=torch.Generator().manual_seed(0), y=y5).shape == (5, *shape)
    assert model.reconstruct(x, y).shape == x.shape
    assert model.embed(x.flatten(1), y).shape == (2, 3)  # flat input works too

    # objective finite, gradient finite and reaching every parameter
    terms = elbo(model, x, samples=2, generator=torch.Generator().manual_seed(1), y=y)
    assert all(torch.isfinite(v).all() for v in terms.values()), terms
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(iwae_bound(model, x, k=3, y=y)["iwae"]).all()

    # save -> load: identical outputs
    save_model(tmp_path, model, RunConfig(model=cfg))
    loaded, loaded_cfg = load_model(tmp_path)
    assert loaded_cfg.model == cfg
    model.eval()
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(2))
    y3 = labels_for(cfg, 3)
    torch.testing.assert_close(loaded.embed(x, y), model.embed(x, y), rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode(z, y3).mean, model.decode(z, y3).mean, rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode(z, y3).log_prob(x[:1]), model.decode(z, y3).log_prob(x[:1]),
                               rtol=0, atol=0)

    # determinism: the same seed gives the same weights and the same objective
    again = build(cfg)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    e1 = elbo(model, x, generator=torch.Generator().manual_seed(3), y=y)["elbo"]
    e2 = elbo(again.eval(), x, generator=torch.Generator().manual_seed(3), y=y)["elbo"]
    assert torch.equal(e1, e2)


def check_autoencoder_contract(cfg: ModelConfig, tmp_path) -> None:
    model = build(cfg)
    x = batch(cfg.input_shape)
    y = labels_for(cfg)
    loss = ae_loss(model, x, y=y)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    save_model(tmp_path, model, RunConfig(model=cfg))
    loaded, _ = load_model(tmp_path)
    torch.testing.assert_close(loaded.reconstruct(x, y), model.eval().reconstruct(x, y), rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_model_contract(arch, likelihood, shape, tmp_path):
    check_vae_contract(small_config(arch, likelihood, shape), tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_autoencoder_contract(arch, tmp_path):
    check_autoencoder_contract(small_config(arch, "gaussian_fixed", (3, 32, 32), kind="ae"), tmp_path)


# --- conditional models: the same contract, given labels -------------------------------

CONDITIONAL = [("bernoulli", (1, 28, 20)), ("discretized_logistic", (3, 32, 32)), ("gaussian", (1, 8, 8))]
CONDITIONAL_IDS = [f"{lik}-{'x'.join(map(str, s))}" for lik, s in CONDITIONAL]


@pytest.mark.parametrize("likelihood,shape", CONDITIONAL, ids=CONDITIONAL_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_conditional_model_contract(arch, likelihood, shape, tmp_path):
    check_vae_contract(small_config(arch, likelihood, shape, num_classes=4), tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_conditional_autoencoder_contract(arch, tmp_path):
    check_autoencoder_contract(small_config(arch, "bernoulli", (1, 8, 8), kind="ae", num_classes=3), tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_label_reaches_encoder_and_decoder(arch):
    model = build(small_config(arch, "bernoulli", (1, 8, 8), num_classes=4)).eval()
    x, z = batch((1, 8, 8), n=1), torch.randn(1, 3, generator=torch.Generator().manual_seed(0))
    means = [model.decode(z, torch.tensor([c])).mean for c in range(4)]
    codes = [model.embed(x, torch.tensor([c])) for c in range(4)]
    for c in range(1, 4):
        assert not torch.equal(means[0], means[c]) and not torch.equal(codes[0], codes[c])
    # label weights (B, K) are the same as integer labels when one-hot
    torch.testing.assert_close(model.decode(z, torch.eye(4)[[2]]).mean, means[2], rtol=0, atol=0)


def test_labels_are_required_exactly_by_conditional_models():
    cond = build(small_config("mlp", "bernoulli", (1, 8, 8), num_classes=4))
    plain = build(small_config("mlp", "bernoulli", (1, 8, 8)))
    x, z = batch((1, 8, 8)), torch.zeros(2, 3)
    with pytest.raises(LabelError, match="conditional on a label"):
        elbo(cond, x)
    with pytest.raises(LabelError, match="conditional on a label"):
        cond.decode(z)
    with pytest.raises(LabelError, match="not conditional"):
        plain.decode(z, torch.tensor([0, 1]))
    with pytest.raises(LabelError, match="one label per image"):
        cond.encode(x, torch.tensor([0, 1, 2]))
    with pytest.raises(LabelError, match="must lie in 0..3"):
        cond.sample(2, y=4)
    with pytest.raises(LabelError, match="4 columns"):
        cond.decode(z, torch.ones(2, 5))


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 7), (1, 3, 64)])
def test_conv_handles_odd_and_tiny_sizes(shape):
    model = build(ModelConfig(input_shape=shape, architecture="conv", hidden=(8,), latent_dim=2, conv_channels=(4, 4, 4)))
    assert model.decode(torch.zeros(1, 2)).mean.shape == (1, *shape)
    assert torch.isfinite(elbo(model, batch(shape))["loss"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(conv_channels=()), "conv_channels must be one or more positive"),
    (dict(conv_channels=(8, 0)), "conv_channels must be one or more positive"),
    (dict(conv_channels=(1,) * 9), "at most 8 layers"),
    (dict(architecture="resnet"), "architecture must be one of"),
])
def test_conv_options_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


def test_conv_config_round_trips_through_json():
    cfg = RunConfig(model=small_config("conv", "discretized_logistic", (3, 32, 32)))
    assert RunConfig.from_json(cfg.to_json()) == cfg
    cond = RunConfig(model=small_config("conv", "bernoulli", (1, 8, 8), num_classes=7))
    assert RunConfig.from_json(cond.to_json()).model.num_classes == 7


# --- the discretized logistic -----------------------------------------------------------

LEVELS = torch.arange(256, dtype=torch.float32) / 255  # every 8-bit value


@pytest.mark.parametrize("mean,log_scale", [(0.5, -3.0), (0.0, -8.0), (1.0, -8.0), (0.3, 2.0), (-4.0, -8.0),
                                            (5.0, -8.0), (0.5 + 0.5 / 255, -8.0), (0.2, -20.0), (0.7, 5.0)])
def test_discretized_logistic_bins_sum_to_one(mean, log_scale):
    d = DiscretizedLogistic(torch.full((256,), mean), torch.full((256,), log_scale), event_ndim=0)
    lp = d.log_prob(LEVELS)
    assert torch.isfinite(lp).all() and (lp <= 1e-6).all()
    assert math.isclose(torch.logsumexp(lp.double(), 0).item(), 0.0, abs_tol=1e-5)


def test_discretized_logistic_is_finite_at_the_edges_and_has_finite_gradients():
    mean = torch.tensor([0.0, 1.0, 0.5, -3.0, 4.0, 1.0, 0.0], requires_grad=True)
    log_scale = torch.tensor([-8.0, -8.0, -8.0, -8.0, -8.0, 3.0, 3.0], requires_grad=True)
    x = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # the worst pairings: far-away edge bins
    lp = DiscretizedLogistic(mean, log_scale, event_ndim=1).log_prob(x)
    assert torch.isfinite(lp)
    lp.backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad).all()
    for v in (0.0, 1.0):  # a sharp logistic on the edge value puts almost all mass in its bin
        d = DiscretizedLogistic(torch.tensor([v]), torch.tensor([-8.0]))
        assert -0.01 < d.log_prob(torch.tensor([v])).item() <= 0


def test_discretized_logistic_matches_the_cdf_difference_and_bits_per_dim():
    mean, s = 0.4, 0.05
    d = DiscretizedLogistic(torch.tensor([mean]), torch.tensor([math.log(s)]))
    k = 100
    x = k / 255
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    expected = math.log(sig((x + 0.5 / 255 - mean) / s) - sig((x - 0.5 / 255 - mean) / s))
    assert math.isclose(d.log_prob(torch.tensor([x])).item(), expected, rel_tol=1e-4)
    # a uniform distribution over 256 levels is 8 bits per dimension
    assert math.isclose(bits_per_dim(-4 * math.log(256), 4), 8.0)


def test_discretized_logistic_samples_are_8_bit_values_in_range():
    d = DiscretizedLogistic(torch.full((1000,), 0.5), torch.full((1000,), -1.0))
    s = d.sample(generator=torch.Generator().manual_seed(0))
    assert s.min() >= 0 and s.max() <= 1
    torch.testing.assert_close(s * 255, (s * 255).round())
    assert (s == 0).any() and (s == 1).any()  # the edge bins collect the tails


def test_a_decoders_log_scale_is_clamped_once_at_the_likelihoods_minimum():
    """A sharp decoder: the likelihood nets.as_likelihood builds from log-scale -8 puts > 99% of an
    interior pixel's mass in its bin (a second clamp at -5 in nets capped it at 0.144)."""
    from aevb.nets import as_likelihood

    cfg = small_config("mlp", "discretized_logistic", (1, 2, 2))
    x = torch.full((1, 1, 2, 2), 100 / 255)
    for raw in (-8.0, -30.0):  # at the minimum, and far below it (clamped to it)
        logit = torch.logit(torch.tensor(100 / 255)).item()  # the decoder's mean goes through a sigmoid
        out = torch.stack([torch.full((1, 1, 2, 2), logit), torch.full((1, 1, 2, 2), raw)], 1)
        lik = as_likelihood(cfg, out)
        p = lik.log_prob_per_dim(x).exp()
        expected = 2 * torch.sigmoid(torch.tensor(0.5 / 255 * math.exp(-DiscretizedLogistic.LOG_SCALE_MIN))) - 1
        torch.testing.assert_close(p, torch.full_like(p, expected.item()))
        assert (p > 0.99).all()
