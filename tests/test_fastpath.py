"""The hand-written ELBO step (``aevb.fastpath``) computes what autograd computes: the terms and every
parameter gradient for each likelihood, estimator, activation and depth; a short training run and a
resumed one follow the autograd run; and the trainer takes it only where it applies."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aevb import fastpath, nets
from aevb.config import ModelConfig
from aevb.models import build_model
from aevb.objectives import elbo
from aevb.runconfig import apply_overrides, default_config
from aevb.train import Trainer

pytestmark = pytest.mark.skipif(not nets.onednn_linear_works(), reason="oneDNN's fused linear is not usable here")

TOL = dict(atol=1e-5, rtol=1e-5)


def _batch(likelihood: str, n: int = 6, shape=(1, 4, 5), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    return (x < 0.4).float() if likelihood == "bernoulli" else x


def _compare(model, x, samples: int, kl: str, beta: float) -> None:
    """The fast step's terms and gradients against objectives.elbo + autograd, from one noise seed."""
    terms = elbo(model, x, samples=samples, kl=kl, beta=beta, generator=torch.Generator().manual_seed(3))
    params = list(model.parameters())
    grads = torch.autograd.grad(terms["loss"], params)
    fast = fastpath.FastELBO(model, samples=samples, kl=kl).step(x, torch.Generator().manual_seed(3), beta)
    assert set(fast) == set(terms)
    for k in terms:
        torch.testing.assert_close(fast[k], terms[k].detach(), **TOL)
    for (name, p), g in zip(model.named_parameters(), grads):
        assert p.grad is not None and p.grad.shape == p.shape, name
        torch.testing.assert_close(p.grad, g, **TOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("hidden", [(), (7,), (7, 5)], ids=["depth0", "depth1", "depth2"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "linear"])
@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("likelihood", fastpath.LIKELIHOODS)
def test_terms_and_every_gradient_equal_autograds(likelihood, kl, activation, hidden):
    cfg = ModelConfig(input_shape=(1, 4, 5), hidden=hidden, activation=activation, latent_dim=3, likelihood=likelihood)
    torch.manual_seed(1)
    model = build_model(cfg)
    assert fastpath.why_not(model, default_config("digits").train) is None
    _compare(model, _batch(likelihood), samples=1, kl=kl, beta=1.0)


@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("likelihood,mean", [("bernoulli", "sigmoid"), ("gaussian", "sigmoid"),
                                             ("gaussian", "identity"), ("gaussian_fixed", "identity")])
def test_several_samples_a_kl_weight_and_an_identity_mean(likelihood, mean, kl):
    cfg = ModelConfig(input_shape=(1, 4, 5), hidden=(9,), activation="tanh", latent_dim=4, likelihood=likelihood,
                      decoder_mean=mean, fixed_sigma=0.3)
    torch.manual_seed(2)
    _compare(build_model(cfg), _batch(likelihood, n=5, seed=1), samples=3, kl=kl, beta=0.37)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_gradients_stop_at_the_log_variance_clamps(likelihood):
    """Biases far outside [log_var_min, log_var_max]: the clamped units pass no gradient, in both paths."""
    cfg = ModelConfig(input_shape=(1, 4, 5), hidden=(6,), activation="relu", latent_dim=4, likelihood=likelihood,
                      log_var_min=-2.0, log_var_max=2.0)
    torch.manual_seed(3)
    model = build_model(cfg)
    with torch.no_grad():
        model.encoder.heads["log_var"].bias.copy_(torch.tensor([-9.0, 9.0, 0.0, 0.5]))
        if model.decoder.log_var is not None:
            model.decoder.log_var.bias[:10] = 9.0
            model.decoder.log_var.bias[10:] = -9.0
    _compare(model, _batch(likelihood), samples=2, kl="mc", beta=1.0)
    assert torch.all(model.encoder.heads["log_var"].bias.grad[:2] == 0)


# --- in the trainer ----------------------------------------------------------------------------------

def _config(**overrides):
    base = {"hidden": (16,), "latent_dim": 3, "batch_size": 32, "epochs": 1, "optimizer": "adam", "lr": 3e-3,
            "seed": 4, "device": "cpu"}
    return apply_overrides(default_config("digits"), {**base, **overrides})


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("overrides", [{}, {"estimator": "mc", "samples": 2, "beta": 0.5, "activation": "tanh"},
                                       {"likelihood": "gaussian", "binarize": "none", "optimizer": "adagrad"}],
                         ids=["bernoulli-B", "bernoulli-A-L2", "gaussian-adagrad"])
def test_a_training_run_follows_the_autograd_run(tmp_path, monkeypatch, overrides):
    cfg = _config(**overrides)
    fast = Trainer(cfg, tmp_path / "fast", progress=False)
    assert fast.fast_step is not None and fast.fast_path_refused is None
    fast_lines = fast.run(stop_after_steps=30)
    monkeypatch.setattr(fastpath, "ENABLED", False)
    slow = Trainer(cfg, tmp_path / "slow", progress=False)
    assert slow.fast_step is None and "AEVB_FASTPATH" in slow.fast_path_refused
    slow.run(stop_after_steps=30)
    assert fast.global_step == slow.global_step == 30
    a, b = _weights(fast), _weights(slow)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=lambda m: f"{k}: {m}")
    for k in fast.sums:
        torch.testing.assert_close(fast.sums[k], slow.sums[k], atol=1e-4, rtol=1e-5)
    assert fast_lines == []  # stopped mid-epoch
    assert torch.equal(fast.noise.get_state(), slow.noise.get_state())  # the same draws, in the same order


def test_a_resumed_run_continues_the_uninterrupted_one_bit_for_bit(tmp_path):
    cfg = _config(epochs=2, checkpoint_every=7)
    whole = Trainer(cfg, tmp_path / "whole", progress=False)
    assert whole.fast_step is not None
    whole.run()
    part = Trainer(cfg, tmp_path / "part", progress=False)
    part.run(stop_after_steps=21)
    resumed = Trainer(cfg, tmp_path / "part", progress=False)
    resumed.restore()
    assert resumed.fast_step is not None and resumed.global_step == 21
    resumed.run()
    a, b = _weights(whole), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(whole.optimizer.state_dict()["state"][0]["exp_avg"],
                       resumed.optimizer.state_dict()["state"][0]["exp_avg"])


def test_a_non_finite_loss_is_skipped_as_on_the_autograd_path(tmp_path):
    trainer = Trainer(_config(), tmp_path / "r", progress=False)
    assert trainer.fast_step is not None
    x = trainer._batch(torch.arange(32))
    before = _weights(trainer)
    x[0, 0, 0, 0] = float("nan")
    _, bad = trainer.step(x)
    assert bool(bad) and int(trainer.guard.skipped) == 1
    after = _weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- what it refuses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,reason", [
    ({"activation": "softplus"}, "softplus has no fused oneDNN form"),
    ({"likelihood": "discretized_logistic", "binarize": "none"}, "discretized_logistic likelihood"),
    ({"flow": "planar"}, "Gaussian posterior"),
    ({"flow": "iaf"}, "Gaussian posterior"),
    ({"prior": "vamp"}, "N(0, I) prior"),
    ({"prior": "mog"}, "N(0, I) prior"),
    ({"stochastic_layers": 2}, "one stochastic layer"),
    ({"objective": "iwae"}, "only the ELBO"),
    ({"algorithm": "wake-sleep"}, "only the ELBO"),
    ({"free_bits": 0.1}, "free bits"),
    ({"input_noise": "mask:0.2"}, "input noise"),
    ({"architecture": "conv", "conv_channels": (4,)}, "MLP networks"),
    ({"family": "ae"}, "only the ELBO"),
])
def test_the_trainer_runs_autograd_where_the_fast_path_does_not_apply(tmp_path, overrides, reason):
    trainer = Trainer(_config(**overrides), tmp_path / "r", progress=False)
    assert trainer.fast_step is None
    assert reason in trainer.fast_path_refused
    trainer.run(stop_after_steps=2)  # and it trains


def test_conditional_models_custom_networks_and_several_processes_are_refused():
    cfg = _config()
    conditional = build_model(dataclasses.replace(cfg.model, num_classes=10))
    assert "unconditional" in fastpath.why_not(conditional, cfg.train)
    model = build_model(cfg.model)
    assert "data-parallel" in fastpath.why_not(model, cfg.train, distributed=True)
    own = build_model(cfg.model, encoder=nets.MLPEncoder(cfg.model, ("mu", "log_var")))
    assert fastpath.why_not(own, cfg.train) is None  # the built-in class itself is fine

    class MyEncoder(nets.MLPEncoder):
        pass

    mine = build_model(cfg.model, encoder=MyEncoder(cfg.model, ("mu", "log_var")))
    assert "built-in MLP" in fastpath.why_not(mine, cfg.train)
    assert "float32" in fastpath.why_not(build_model(cfg.model).double(), cfg.train)
    assert "torch.compile" in fastpath.why_not(model, dataclasses.replace(cfg.train, compile=True))
    assert "fp16" in fastpath.why_not(model, dataclasses.replace(cfg.train, precision="fp16"))


# --- bf16: the networks in bf16 as autocast runs them, log-densities in float32 -------------------------

@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("likelihood", fastpath.LIKELIHOODS)
def test_the_bf16_step_is_autocasts_to_bf16_rounding(likelihood, kl):
    """Both run every GEMM and activation in bf16 and every log-density in float32; they differ only in
    where bf16 rounds the gradients' sums (a few bf16 ulps: 2^-8 = 0.4% each)."""
    cfg = ModelConfig(input_shape=(1, 8, 8), hidden=(16, 12), activation="tanh", latent_dim=5, likelihood=likelihood)
    torch.manual_seed(1)
    model = build_model(cfg)
    x = _batch(likelihood, n=32, shape=(1, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = elbo(model, x, samples=2, kl=kl, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(terms["loss"], list(model.parameters()))
    fast = fastpath.FastELBO(model, 2, kl, torch.bfloat16).step(x, torch.Generator().manual_seed(3))
    for k in terms:
        torch.testing.assert_close(fast[k], terms[k].detach().float(), atol=1e-3, rtol=1e-3)
    for (name, p), g in zip(model.named_parameters(), grads):
        assert p.grad.dtype == torch.float32
        assert float((p.grad - g).norm() / g.norm()) < 2e-2, name


def test_a_bf16_run_takes_the_fast_path_and_follows_autocasts(tmp_path, monkeypatch):
    cfg = _config(precision="bf16")
    fast = Trainer(cfg, tmp_path / "fast", progress=False)
    assert fast.fast_step is not None
    fast.run(stop_after_steps=20)
    monkeypatch.setattr(fastpath, "ENABLED", False)
    slow = Trainer(cfg, tmp_path / "slow", progress=False)
    slow.run(stop_after_steps=20)
    for k in ("elbo", "kl"):
        assert float(fast.sums[k]) == pytest.approx(float(slow.sums[k]), rel=1e-2), k


def test_onednn_off_turns_the_fast_path_off(monkeypatch):
    cfg = _config()
    monkeypatch.setattr(fastpath, "ONEDNN", False)
    assert "oneDNN" in fastpath.why_not(build_model(cfg.model), cfg.train)
