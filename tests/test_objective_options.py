"""beta, KL warm-up schedules, free bits, and training on the IWAE bound."""

from __future__ import annotations

import pytest
import torch

from aevb.config import ConfigError, ModelConfig, TrainConfig
from aevb.models import VAE
from aevb.objectives import elbo
from aevb.schedules import kl_weight
from aevb.train import Trainer
from aevb.runconfig import apply_overrides, default_config

from .baselines import bernoulli_baseline


@pytest.mark.parametrize("step,expected", [(0, 0.0), (25, 0.5), (50, 1.0), (99, 1.0), (100, 0.0),
                                           (125, 0.5), (150, 1.0), (10_030, 0.6)])
def test_cyclical_schedule(step, expected):
    assert kl_weight(step, 1.0, "cyclical", 100) == pytest.approx(expected)


@pytest.mark.parametrize("step,expected", [(0, 0.0), (250, 1.0), (500, 2.0), (10_000, 2.0)])
def test_linear_schedule_with_beta(step, expected):
    assert kl_weight(step, 2.0, "linear", 500) == pytest.approx(expected)


def test_constant_and_validation():
    assert kl_weight(12345, 0.25) == 0.25
    with pytest.raises(ConfigError, match="needs warmup_steps > 0"):
        TrainConfig(kl_schedule="linear")
    with pytest.raises(ConfigError, match="free_bits must be >= 0"):
        TrainConfig(free_bits=-1)


def _model_and_batch():
    torch.manual_seed(0)
    m = VAE(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=3)).double()
    return m, torch.rand(32, 1, 4, 4, dtype=torch.float64).round()


def test_beta_and_free_bits_change_the_loss_not_the_bound():
    m, x = _model_and_batch()
    def run(**kw):
        return elbo(m, x, generator=torch.Generator().manual_seed(1), **kw)
    base, beta, fb = run(), run(beta=3.0), run(free_bits=0.5)
    assert beta["elbo"].item() == base["elbo"].item() == fb["elbo"].item()
    assert beta["loss"].item() == pytest.approx(-base["reconstruction"].item() + 3.0 * base["kl"].item(), rel=1e-12)
    kl_dims = m.encode(x).kl_per_dim().mean(0)
    expected = -base["reconstruction"].item() + torch.clamp(kl_dims, min=0.5).sum().item()
    assert fb["loss"].item() == pytest.approx(expected, rel=1e-12)
    assert (kl_dims < 0.5).any()  # the clamp is active for some dimension here


def test_free_bits_stop_the_kl_gradient_below_the_threshold():
    m, x = _model_and_batch()
    terms = elbo(m, x, free_bits=100.0, generator=torch.Generator().manual_seed(1))  # every dimension below 100 nats
    terms["loss"].backward()
    recon_only = elbo(m, x, beta=0.0, generator=torch.Generator().manual_seed(1))
    g_fb = [p.grad.clone() for p in m.encoder.parameters()]
    m.zero_grad()
    recon_only["loss"].backward()
    for a, p in zip(g_fb, m.encoder.parameters()):
        assert torch.allclose(a, p.grad)


def test_mc_kl_per_dimension_sums_to_the_mc_estimate():
    m, x = _model_and_batch()
    a = elbo(m, x, kl="mc", samples=3, generator=torch.Generator().manual_seed(2))
    b = elbo(m, x, kl="mc", samples=3, free_bits=1e-12, generator=torch.Generator().manual_seed(2))
    assert a["elbo"].item() == pytest.approx(b["elbo"].item())


def test_trainer_with_warmup_and_iwae_objective(tmp_path):
    cfg = apply_overrides(default_config("digits"), {"hidden": (32,), "latent_dim": 4, "batch_size": 50, "epochs": 3,
                                                     "kl_schedule": "linear", "warmup_steps": 50})
    lines = Trainer(cfg, tmp_path / "w", progress=False).run()
    assert [round(l["kl_weight"], 6) for l in lines] == [0.5, 1.0, 1.0]  # 25 steps an epoch
    # 10 epochs at 3e-3: enough to beat the independent-pixel baseline below
    cfg = apply_overrides(cfg, {"objective": "iwae", "iwae_k": 5, "kl_schedule": "constant", "warmup_steps": 0,
                                "epochs": 10, "lr": 3e-3})
    trainer = Trainer(cfg, tmp_path / "i", progress=False)
    lines = trainer.run()
    assert "train_iwae" in lines[-1] and lines[-1]["train_iwae"] > lines[0]["train_iwae"]
    assert lines[-1]["valid_elbo"] > -45
    # a decoder ignoring z does no better than independent pixels: -27.3 (valid), -27.1 (train)
    train_x, valid_x = trainer.data.train.x.cpu(), trainer.data.valid.x.cpu()
    assert lines[-1]["valid_elbo"] > bernoulli_baseline(train_x, valid_x) + 0.5  # measured -26.0
    assert lines[-1]["train_iwae"] > bernoulli_baseline(train_x, train_x) + 1  # measured -24.9
