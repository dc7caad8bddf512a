"""Mixed precision: bf16 leaves the bounds where float32 puts them (eps and z stay float32), the fp16
gradient scaler is checkpointed and left alone by steps skipped for a large finite norm, and CUDA
runs use deterministic kernels."""

from __future__ import annotations

import os

import pytest
import torch

from aevb.checkpoint import restore_train_state, save_train_state
from aevb.config import ModelConfig, TrainConfig
from aevb.models import build_model
from aevb.objectives import elbo, iwae_bound
from aevb.train import Guard, guarded_step

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_fixed", "discretized_logistic")


def sharp_posterior_model(likelihood: str):
    """A fixed VAE whose posterior is sharp (sigma ~ 0.01) around means spread over [-3, 3], where a bf16
    z is off by a large fraction of sigma (as in a trained model's informative dimensions). Its weights,
    and the data (``_data``), are exact in bf16, so that bf16 and float32 differ only by what the
    objective does, not by a network with rounded weights."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(1, 8, 8), hidden=(64,), latent_dim=16, likelihood=likelihood))
    with torch.no_grad():
        heads = model.encoder.heads
        heads["mu"].weight.mul_(20.0)
        heads["log_var"].weight.mul_(5.0)
        heads["log_var"].bias.fill_(-9.0)
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    return model.eval()


def _data(likelihood: str) -> torch.Tensor:
    """256 images: binary for a Bernoulli decoder, else grey levels k/16 (as the digits data set)."""
    x = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(2)) if likelihood == "bernoulli" \
        else (x * 16).round() / 16


ESTIMATORS = {
    "elbo-analytic": lambda m, x, g: elbo(m, x, kl="analytic", generator=g)["elbo"],
    "elbo-mc": lambda m, x, g: elbo(m, x, kl="mc", generator=g)["elbo"],
    "iwae-50": lambda m, x, g: iwae_bound(m, x, k=50, generator=g)["iwae"],
}


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@torch.no_grad()
def test_bf16_bounds_match_float32(likelihood, estimator):
    model, x = sharp_posterior_model(likelihood), _data(likelihood)
    fn = ESTIMATORS[estimator]
    fp32 = fn(model, x, torch.Generator().manual_seed(5)).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = fn(model, x, torch.Generator().manual_seed(5)).item()
    # before eps and z were float32: the Monte Carlo KL ELBO +0.41 to +0.44 nats, IWAE-50 +2.2 to +3.0
    assert bf16 == pytest.approx(fp32, abs=0.05), (fp32, bf16)


@torch.no_grad()
def test_eps_and_z_are_float32_under_autocast():
    model = sharp_posterior_model("bernoulli")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = model.encode(_data("bernoulli")[:4])
        assert q.mu.dtype == torch.bfloat16  # the network ran in bf16
        z = q.rsample(3, generator=torch.Generator().manual_seed(0))
        dream = model.decode(model.prior.sample(4)).sample()
    assert z.dtype == torch.float32 and dream.dtype == torch.float32


def _tiny():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1)
    return lin, torch.optim.Adam(lin.parameters(), lr=0.1)


def _objective(lin, scale):
    def step_fn(x, noise, beta=1.0, y=None):
        return {"loss": scale * lin(x).sum()}
    return step_fn


def test_a_finite_large_norm_leaves_the_gradient_scaler_alone():
    lin, opt = _tiny()
    scaler = torch.amp.GradScaler("cpu")
    before = [p.detach().clone() for p in lin.parameters()]
    t = TrainConfig(skip_grad_norm=1.0)
    guard = Guard.on(torch.device("cpu"))
    x = torch.ones(4, 3)
    _, bad = guarded_step(_objective(lin, 100.0), opt, list(lin.parameters()), x, None, None, 1.0, t, guard,
                          scaler=scaler)
    assert bool(bad)  # the norm, 400 or so, is above 1: skipped
    assert scaler.state_dict()["scale"] == 65536.0 and scaler.state_dict()["_growth_tracker"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
    _, bad = guarded_step(_objective(lin, float("nan")), opt, list(lin.parameters()), x, None, None, 1.0, t, guard,
                          scaler=scaler)
    assert bool(bad) and scaler.state_dict()["scale"] == 32768.0  # a non-finite gradient backs the scale off
    _, bad = guarded_step(_objective(lin, 1e-6), opt, list(lin.parameters()), x, None, None, 1.0, t, guard,
                          scaler=scaler)
    assert not bool(bad) and scaler.state_dict()["_growth_tracker"] == 1  # a good step counts toward growth


def test_gradient_scaler_state_is_checkpointed(tmp_path):
    lin, opt = _tiny()
    scaler = torch.amp.GradScaler("cpu", growth_interval=100)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 1024.0, "_growth_tracker": 37})
    noise = torch.Generator().manual_seed(1)
    save_train_state(tmp_path, lin, opt, {}, {"global_step": 5}, generator=noise, scaler=scaler)
    lin2, opt2 = _tiny()
    fresh = torch.amp.GradScaler("cpu", growth_interval=100)
    restore_train_state(tmp_path, lin2, opt2, torch.Generator(), torch.device("cpu"), scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict()
    assert fresh.get_scale() == 1024.0


def test_deterministic_kernels_on_cuda_only(monkeypatch):
    from aevb.train import deterministic_kernels

    cudnn = torch.backends.cudnn
    start = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_kernels(torch.device("cpu")):
        assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark) == start
    with deterministic_kernels(torch.device("cuda")):  # the flags need no GPU to be set
        assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark) == start
    monkeypatch.setenv("AEVB_DETERMINISTIC", "0")
    with deterministic_kernels(torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled() == start[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_conv_runs_are_reproducible_and_resume_bit_identical(tmp_path, precision):
    from aevb.data import load_dataset
    from aevb.runconfig import apply_overrides, default_config
    from aevb.train import Trainer

    cfg = apply_overrides(default_config("digits"), {
        "architecture": "conv", "conv_channels": (8, 16), "hidden": (32,), "latent_dim": 4, "batch_size": 50,
        "epochs": 2, "binarize": "dynamic", "device": "cuda", "precision": precision})
    data = load_dataset(cfg.data)
    runs = []
    for name in ("a", "b"):
        t = Trainer(cfg, tmp_path / name, dataset=data, progress=False)
        t.run()
        runs.append(t.model.state_dict())
    cut = Trainer(cfg, tmp_path / "cut", dataset=data, progress=False)
    cut.run(stop_after_steps=37)
    resumed = Trainer(cfg, tmp_path / "cut", dataset=data, progress=False)
    resumed.restore()
    if precision == "fp16":
        assert resumed.scaler.state_dict() == cut.scaler.state_dict()
    resumed.run()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
        assert torch.equal(runs[0][k], resumed.model.state_dict()[k]), k
