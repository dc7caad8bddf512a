"""The disentangling models: beta-TCVAE's estimators of the total correlation, DIP-VAE's covariance penalties,
the capacity schedule, FactorVAE's discriminator and family, and Locatello et al.'s 64x64 network."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import aevb
from aevb.run import load
from aevb.config import ConfigError
from aevb.data import load_dataset
from aevb.distributions import DiagonalGaussian
from aevb.models import build_model
from aevb.models.factorvae import FactorVAE, FactorVAEConfig, permute_dims
from aevb.nets import Conv64Decoder, Conv64Encoder
from aevb.objectives import (OBJECTIVES, aggregate_log_densities, covariance_penalties, dip_covariance,
                             minibatch_log_weights)
from aevb.runconfig import apply_overrides, default_config
from aevb.schedules import capacity
from aevb.train import Trainer, make_objective

from .factorvae_ranks import TOY, CodesAreInputs, discriminator_after_steps, rank_main

# --- beta-TCVAE: the estimators of log q(z) -----------------------------------------------------------


def gaussian_aggregate_tc(d: int, rho: float, s2: float, batch: int, batches: int, estimator: str,
                          seed: int = 0) -> tuple[float, float]:
    """(closed-form TC, the mean estimate over ``batches`` minibatches) for an aggregate posterior that is
    exactly N(0, Sigma), Sigma = (1 - rho) I + rho 11^T: x ~ N(0, Sigma - s2 I), q(z|x) = N(x, s2 I), a data
    set of N = 10^6 examples of which each minibatch is a sample."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.full((d, d), rho, dtype=torch.float64).fill_diagonal_(1.0)
    tc = 0.5 * (torch.log(torch.diagonal(sigma)).sum() - torch.logdet(sigma)).item()  # KL(N(0, S) || prod_j)
    chol = torch.linalg.cholesky(sigma - s2 * torch.eye(d, dtype=torch.float64))
    estimates = []
    for _ in range(batches):
        x = torch.randn(batch, d, generator=g, dtype=torch.float64) @ chol.T  # (B, d)
        q = DiagonalGaussian(x, torch.full_like(x, math.log(s2)))
        z = x + math.sqrt(s2) * torch.randn(batch, d, generator=g, dtype=torch.float64)
        log_qz, log_prod = aggregate_log_densities(q, z, 10**6, estimator)
        estimates.append((log_qz - log_prod).mean().item())
    return tc, float(np.mean(estimates))


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("d, rho, s2", [(2, 0.8, 0.1), (3, 0.6, 0.2)])
def test_both_estimators_find_a_gaussians_total_correlation_at_large_batches(estimator, d, rho, s2):
    # Measured (these 4 batches of 1024): mws 0.545 and mss 0.541 against 0.511 (2-d); 0.560 and 0.548 against 0.522.
    tc, estimate = gaussian_aggregate_tc(d, rho, s2, batch=1024, batches=4, estimator=estimator)
    assert tc == pytest.approx({2: 0.5108, 3: 0.5221}[d], abs=1e-4)
    assert estimate == pytest.approx(tc, abs=0.05)


def test_at_small_batches_mws_overestimates_and_mss_underestimates_a_low_dimensional_tc():
    # 200 batches of 64: mws 0.535, mss 0.486 against 0.511 (standard errors 0.007): they bracket it.
    tc, mws = gaussian_aggregate_tc(2, 0.8, 0.1, batch=64, batches=200, estimator="mws")
    _, mss = gaussian_aggregate_tc(2, 0.8, 0.1, batch=64, batches=200, estimator="mss")
    assert mss < tc < mws


def test_mss_is_far_closer_than_mws_with_tight_posteriors_in_ten_dimensions():
    # The regime of a trained model (10 latents, posteriors much narrower than the aggregate): mws's own
    # posterior term, weighted 1/B instead of 1/N, dominates. Measured: 10.45 (mws) and 2.30 (mss) against 0.95.
    tc, mws = gaussian_aggregate_tc(10, 0.3, 0.05, batch=64, batches=10, estimator="mws")
    _, mss = gaussian_aggregate_tc(10, 0.3, 0.05, batch=64, batches=10, estimator="mss")
    assert mws - tc > 8
    assert abs(mss - tc) < (mws - tc) / 4


def test_the_stratified_weights_are_the_papers():
    w = minibatch_log_weights(4, 100, "mss").exp().double()
    n, m = 100, 4
    assert torch.allclose(torch.diagonal(w), torch.full((4,), 1 / n, dtype=torch.float64))
    assert w[0, 1].item() == pytest.approx((n - m + 1) / (n * (m - 1)))  # the next example: the stratum's weight
    assert w[3, 0].item() == pytest.approx((n - m + 1) / (n * (m - 1)))  # cyclically
    assert w[0, 2].item() == pytest.approx(1 / (m - 1))
    assert torch.allclose(w.sum(1), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(minibatch_log_weights(5, 100, "mws").exp(), torch.full((5, 5), 0.2))
    with pytest.raises(ValueError, match="batch size <= data set size"):
        minibatch_log_weights(8, 4, "mss")


# --- DIP-VAE and the capacity schedule -----------------------------------------------------------------


def test_dip_covariances_and_penalties_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    mu, log_var = torch.randn(50, 4, generator=g) * 2, torch.randn(50, 4, generator=g)
    q = DiagonalGaussian(mu, log_var)
    cov_mu = np.cov(mu.numpy(), rowvar=False, bias=True)  # 1/B, as the batch estimate
    assert np.allclose(dip_covariance(q, "i").numpy(), cov_mu, atol=1e-5)
    cov_z = cov_mu + np.diag(np.exp(log_var.numpy()).mean(0))  # E[diag sigma^2] + Cov[mu]
    assert np.allclose(dip_covariance(q, "ii").numpy(), cov_z, atol=1e-5)
    off, diag = covariance_penalties(torch.tensor(cov_z))
    assert off.item() == pytest.approx(sum(cov_z[i, j] ** 2 for i in range(4) for j in range(4) if i != j))
    assert diag.item() == pytest.approx(sum((cov_z[i, i] - 1) ** 2 for i in range(4)))
    assert [v.item() for v in covariance_penalties(torch.eye(3))] == [0.0, 0.0]


def test_the_capacity_rises_linearly_to_its_maximum_and_stays():
    assert [capacity(s, 25.0, 100) for s in (0, 40, 100, 250)] == [0.0, 10.0, 25.0, 25.0]
    assert torch.allclose(capacity(torch.tensor([0, 50, 300]), 10.0, 100), torch.tensor([0.0, 5.0, 10.0]))


# --- every objective on a batch: its terms, and the loss they make -------------------------------------


def digits_batch(**settings):
    cfg = apply_overrides(default_config("digits"), {"hidden": (16,), "latent_dim": 3, "binarize": "static",
                                                     **settings})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    x = load_dataset(cfg.data).train.x[:40]
    return cfg, model, x


def terms_of(name: str, model, x, seed: int = 5, **kw):
    return OBJECTIVES[name](model, x, generator=torch.Generator().manual_seed(seed), reduction="none", **kw)


def test_tcvae_terms_telescope_to_the_monte_carlo_kl_and_weigh_into_the_loss():
    _, model, x = digits_batch()
    t = terms_of("tcvae", model, x, dataset_size=1000, alpha=0.5, beta=3.0, gamma=2.0)
    assert all(torch.isfinite(v).all() for v in t.values())
    expected = (-t["reconstruction"].mean() + 0.5 * t["mutual_information"].mean() + 3 * t["total_correlation"].mean()
                + 2 * t["dimension_kl"].mean())
    assert t["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    q = model.encode(x)  # the same z (the same seed): MI + TC + dim-KL = log q(z|x) - log p(z)
    z = q.rsample(1, generator=torch.Generator().manual_seed(5))[0]
    mc_kl = q.log_prob(z) - model.prior.log_prob(z)
    total = t["mutual_information"] + t["total_correlation"] + t["dimension_kl"]
    assert torch.allclose(total, mc_kl, atol=1e-4)
    assert torch.allclose(t["elbo"], t["reconstruction"] - t["kl"])
    unweighted = terms_of("tcvae", model, x, dataset_size=1000)  # at 1, 1, 1: the Monte Carlo -ELBO
    assert unweighted["loss"].item() == pytest.approx(-(unweighted["reconstruction"] - mc_kl).mean().item(), rel=1e-5)


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_dip_vae_loss_is_the_beta_elbo_plus_the_weighted_penalties(variant):
    _, model, x = digits_batch()
    t = terms_of(f"dipvae-{variant}", model, x, lambda_od=3.0, beta=2.0)
    lambda_d = 30.0 if variant == "i" else 3.0  # the paper's default for each variant
    off, diag = covariance_penalties(dip_covariance(model.encode(x), variant))
    assert t["dip_off_diagonal"][0].item() == pytest.approx(off.item())
    assert t["dip_diagonal"][0].item() == pytest.approx(diag.item())
    expected = -t["reconstruction"].mean() + 2 * t["kl"].mean() + 3 * off + lambda_d * diag
    assert t["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_capacity_loss_is_gamma_times_the_distance_of_the_kl_from_c():
    _, model, x = digits_batch()
    t = terms_of("capacity", model, x, step=30, capacity_max=4.0, capacity_steps=60, gamma=7.0)
    assert torch.all(t["capacity"] == 2.0)
    expected = -t["reconstruction"].mean() + 7 * (t["kl"].mean() - 2.0).abs()
    assert t["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_factor_vae_loss_adds_gamma_times_the_discriminators_logit_and_leaves_it_untrained():
    _, model, x = digits_batch(model="factorvae", discriminator_hidden=(8,))
    t = terms_of("factorvae", model, x, gamma=5.0, beta=1.5)
    z = model.encode(x).rsample(1, generator=torch.Generator().manual_seed(5))[0]
    assert torch.allclose(t["total_correlation"], model.discriminator(z), atol=1e-6)
    expected = -t["reconstruction"].mean() + 1.5 * t["kl"].mean() + 5 * t["total_correlation"].mean()
    assert t["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    t["loss"].backward()
    assert all(p.grad is None for p in model.discriminator.parameters())  # the VAE loss does not train D
    assert next(model.encoder.parameters()).grad is not None


def test_objectives_a_family_does_not_have_are_refused():
    cfg = apply_overrides(default_config("digits"), {"flow": "planar", "objective": "tcvae"})
    with pytest.raises(ConfigError, match="does not apply"):
        make_objective(cfg)
    cfg = apply_overrides(default_config("digits"), {"model": "factorvae", "objective": "tcvae"})
    with pytest.raises(ConfigError, match="trains on factorvae"):
        make_objective(cfg)
    with pytest.raises(ConfigError, match="leave beta at 1"):
        apply_overrides(default_config("digits"), {"objective": "capacity", "beta": 4.0})
    with pytest.raises(ConfigError, match="tc_estimator"):
        apply_overrides(default_config("digits"), {"tc_estimator": "exact"})


# --- training: each objective, FactorVAE's resume, round trips -------------------------------------------

SMALL = {"hidden": (16,), "latent_dim": 3, "batch_size": 50, "subset": 200, "lr": 0.01, "epochs": 1}
RUNS = {"tcvae-mws": {"objective": "tcvae", "tc_estimator": "mws", "beta": 4.0},
        "tcvae-mss": {"objective": "tcvae", "beta": 4.0},
        "dipvae-i": {"objective": "dipvae-i"}, "dipvae-ii": {"objective": "dipvae-ii"},
        "capacity": {"objective": "capacity", "capacity_max": 5.0, "capacity_steps": 2, "capacity_gamma": 10.0},
        "factorvae": {"model": "factorvae", "discriminator_hidden": (16, 16), "factor_gamma": 6.0}}


@pytest.mark.parametrize("name", list(RUNS))
def test_each_disentangling_model_trains_on_digits_with_finite_terms(name, tmp_path):
    cfg = apply_overrides(default_config("digits"), {**SMALL, **RUNS[name]})
    trainer = Trainer(cfg, tmp_path / name, progress=False)
    line = trainer.run()[-1]
    train_terms = {k: v for k, v in line.items() if k.startswith("train_")}
    assert len(train_terms) >= 4 and all(math.isfinite(v) for v in train_terms.values()), train_terms
    assert math.isfinite(line["valid_elbo"])
    if name == "capacity":  # C at steps 0, 1, 2, 3 of capacity_steps 2: 0, 2.5, 5, 5
        assert line["train_capacity"] == pytest.approx(12.5 / 4)
    if name == "factorvae":
        assert 0 <= line["train_discriminator_accuracy"] <= 1 and line["train_discriminator_loss"] > 0


def test_factorvae_resumes_exactly_with_its_discriminator(tmp_path):
    cfg = apply_overrides(default_config("digits"), {**SMALL, **RUNS["factorvae"], "epochs": 2})
    data = load_dataset(cfg.data)
    full = Trainer(cfg, tmp_path / "full", dataset=data, progress=False)
    trained = {id(p) for g in full.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in full.model.discriminator.parameters())
    full.run()
    Trainer(cfg, tmp_path / "cut", dataset=data, progress=False).run(stop_after_steps=5)
    resumed = Trainer(cfg, tmp_path / "cut", dataset=data, progress=False)
    resumed.restore()
    assert resumed.auxiliary["discriminator"].state_dict()["state"]  # its Adam moments came back
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert any(k.startswith("discriminator.") for k in a)


def test_a_saved_factorvae_loads_with_identical_outputs(tmp_path):
    run = aevb.train(out=tmp_path / "r", progress=False, **{**SMALL, **RUNS["factorvae"]})
    loaded = load(tmp_path / "r")
    assert isinstance(loaded.model, FactorVAE) and loaded.config.model.discriminator_hidden == (16, 16)
    x = loaded.dataset().test.x[:8]
    z = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    for a, b in ((run.model, loaded.model),):
        assert torch.equal(a.embed(x), b.embed(x))
        assert torch.equal(a.log_density_ratio(z), b.log_density_ratio(z))
        assert torch.equal(a.reconstruct(x), b.reconstruct(x))
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["family"] == "factorvae" and saved["train"]["factor_gamma"] == 6.0


# --- FactorVAE's discriminator on a toy case -------------------------------------------------------------


def test_the_discriminator_learns_to_tell_dependent_codes_from_permuted_ones():
    cfg = FactorVAEConfig(input_shape=(1, 1, 4), latent_dim=4, hidden=(8,), likelihood="gaussian_fixed",
                          discriminator_hidden=(64, 64), discriminator_lr=2e-3)
    torch.manual_seed(0)
    model = FactorVAE(cfg, encoder=CodesAreInputs())
    g = torch.Generator().manual_seed(1)

    def dependent(n):  # four noisy copies of one factor: strongly dependent dimensions
        return torch.randn(n, 1, generator=g) + 0.1 * torch.randn(n, 4, generator=g)

    for _ in range(300):  # after_step: the family's own discriminator step, the paper's Adam betas
        out = model.after_step(dependent(256).view(-1, 1, 1, 4), None, g, torch.tensor(False))
    assert out["discriminator_accuracy"] > 0.85
    with torch.no_grad():
        z = dependent(2000)
        logits = torch.cat([model.discriminator(z), model.discriminator(permute_dims(z, g))])
    labels = torch.cat([torch.ones(2000), torch.zeros(2000)])
    accuracy = ((logits > 0).float() == labels).float().mean().item()
    assert accuracy > 0.9, accuracy  # measured 0.991
    # and the logit estimates the log density ratio: large on dependent codes, negative on permuted ones
    assert model.log_density_ratio(z).mean() > 2 > 0 > model.log_density_ratio(permute_dims(z, g)).mean()


def test_a_skipped_step_leaves_the_discriminator_and_its_adam_as_they_were():
    torch.manual_seed(0)
    model = FactorVAE(FactorVAEConfig(**TOY), encoder=CodesAreInputs())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 1, 4, generator=g)
    model.after_step(x, None, g, torch.tensor(False))
    before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    steps = model.auxiliary_optimizers()["discriminator"].state_dict()["state"][0]["step"].clone()
    model.after_step(x, None, g, torch.tensor(True))  # the trainer skipped its step: D skips its own
    assert all(torch.equal(before[k], v) for k, v in model.discriminator.state_dict().items())
    assert torch.equal(model.auxiliary_optimizers()["discriminator"].state_dict()["state"][0]["step"], steps)
    model.after_step(x, None, g, torch.tensor(False))
    assert not torch.equal(before["layers.0.weight"], model.discriminator.layers[0].weight)


def test_permute_dims_shuffles_each_column_on_its_own():
    z = torch.arange(40.0).view(10, 4) + torch.tensor([0, 100, 200, 300])
    p = permute_dims(z, torch.Generator().manual_seed(0))
    assert all(sorted(p[:, j].tolist()) == z[:, j].tolist() for j in range(4))  # each column a permutation
    assert not all(torch.equal(p[:, j] - 100 * j, p[:, 0]) for j in range(1, 4))  # not the same permutation


# --- Locatello et al.'s 64x64 network ------------------------------------------------------------------


def test_conv64_has_locatellos_layers_and_shapes_on_random_64x64_images():
    cfg = apply_overrides(default_config("digits"), {"input_shape": (1, 64, 64), "architecture": "conv64",
                                                     "hidden": (256,), "latent_dim": 10})
    enc, dec = Conv64Encoder(cfg.model, heads=("mu", "log_var")), Conv64Decoder(cfg.model)
    sizes = []
    for m in [*enc.convs[0::2], *dec.deconvs[0::2], dec.out]:
        m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    x = torch.rand(3, 1, 64, 64)
    out = enc(x)
    lik = dec(out["mu"])
    assert sizes == [(32, 32, 32), (32, 16, 16), (64, 8, 8), (64, 4, 4), (64, 8, 8), (32, 16, 16), (32, 32, 32),
                     (1, 64, 64)]
    assert out["mu"].shape == out["log_var"].shape == (3, 10) and lik.logits.shape == (3, 1, 64, 64)
    # disentanglement_lib's conv_encoder and deconv_decoder, parameter for parameter
    encoder = (32 * 16 + 32) + (32 * 32 * 16 + 32) + (64 * 32 * 4 + 64) + (64 * 64 * 4 + 64) + (1024 * 256 + 256) \
        + 2 * (256 * 10 + 10)
    decoder = (10 * 256 + 256) + (256 * 1024 + 1024) + (64 * 64 * 16 + 64) + (64 * 32 * 16 + 32) \
        + (32 * 32 * 16 + 32) + (32 * 16 + 1)
    assert sum(p.numel() for p in enc.parameters()) == encoder
    assert sum(p.numel() for p in dec.parameters()) == decoder
    with pytest.raises(ConfigError, match="conv64 is for 64x64 images"):
        build_model(apply_overrides(default_config("digits"), {"architecture": "conv64"}).model)


def test_conv64_takes_two_parameter_likelihoods_and_labels():
    cfg = apply_overrides(default_config("digits"), {"input_shape": (3, 64, 64), "architecture": "conv64",
                                                     "hidden": (32,), "latent_dim": 4, "likelihood": "gaussian",
                                                     "num_classes": 5})
    model = build_model(cfg.model)
    y = torch.tensor([0, 4])
    lik = model.decode(model.embed(torch.rand(2, 3, 64, 64), y), y)
    assert lik.mean.shape == (2, 3, 64, 64)


def test_a_built_in_64x64_data_set_defaults_to_locatellos_network_and_training(monkeypatch):
    from aevb.data import registry

    digits = registry.DATASETS["digits"]
    fake = registry.DatasetInfo("square64", digits.splits, shape=(1, 64, 64), likelihood="bernoulli",
                                num_classes=None, binary=True, description="a 64x64 test record")
    monkeypatch.setitem(registry.DATASETS, "square64", fake)
    cfg = default_config("square64")
    m, t = cfg.model, cfg.train
    assert (m.architecture, m.hidden, m.latent_dim, m.likelihood) == ("conv64", (256,), 10, "bernoulli")
    assert (t.optimizer, t.lr, t.batch_size) == ("adam", 1e-4, 64)
    assert default_config("digits").model.architecture == "mlp"  # other sizes keep theirs
    flags = apply_overrides(cfg, {"latent_dim": 6, "model": "factorvae"})  # given settings win; a family keeps them
    assert (flags.model.architecture, flags.model.latent_dim, flags.model.family) == ("conv64", 6, "factorvae")


# --- end to end on 64x64 images --------------------------------------------------------------------------


@pytest.fixture
def random64(tmp_path):
    path = tmp_path / "random64.npy"
    rng = np.random.default_rng(0)
    np.save(path, (rng.random((48, 64, 64)) < 0.3).astype(np.uint8) * 255)
    return path


TINY64 = ["--architecture", "conv64", "--hidden", "32", "--latent-dim", "4", "--batch-size", "8", "--epochs", "1",
          "--lr", "1e-3", "--no-progress", "--no-figures"]


def aevb_command(*args: str) -> None:
    """``aevb ARGS`` in this process (click's runner: no interpreter to start)."""
    from click.testing import CliRunner

    from aevb.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_aevb_train_factorvae_runs_end_to_end_on_64x64_images(random64, tmp_path):
    aevb_command("train", "--dataset", f"npy:{random64}", "--model", "factorvae", "--discriminator-hidden", "16",
                 "--factor-gamma", "10", "--out", str(tmp_path / "f"), *TINY64)
    run = load(tmp_path / "f")
    line = run.metrics[-1]
    assert run.config.model.architecture == "conv64" and run.config.train.factor_gamma == 10.0
    assert math.isfinite(line["train_total_correlation"]) and "train_discriminator_accuracy" in line


@pytest.mark.parametrize("flags", [["--objective", "tcvae", "--beta", "6"], ["--objective", "dipvae-ii"],
                                   ["--objective", "capacity", "--capacity-max", "3", "--capacity-steps", "4"]])
def test_the_objectives_run_end_to_end_on_64x64_images(flags, random64, tmp_path):
    aevb_command("train", "--dataset", f"npy:{random64}", "--out", str(tmp_path / "o"), *TINY64, *flags)
    line = load(tmp_path / "o").metrics[-1]
    assert all(math.isfinite(v) for k, v in line.items() if k.startswith(("train_", "test_")))


# --- FactorVAE under data parallelism: the discriminator's gradients are averaged -------------------------


@pytest.mark.slow
def test_two_processes_keep_one_discriminator_with_averaged_gradients(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(2, port, str(tmp_path)), nprocs=2)
    alone = discriminator_after_steps(True)
    for same in (True, False):
        d0, d1 = (torch.load(tmp_path / f"rank{r}-{same}.pt") for r in (0, 1))
        assert all(torch.equal(d0[k], d1[k]) for k in d0)  # one discriminator on every process
        if same:  # the average of two equal gradients is the one-process gradient: the same steps
            assert all(torch.allclose(d0[k], alone[k], atol=1e-6) for k in d0)
        else:  # each process's own batch counted: not one process's steps
            assert not all(torch.allclose(d0[k], alone[k], atol=1e-3) for k in d0)
