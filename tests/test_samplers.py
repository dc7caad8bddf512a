"""Post-hoc samplers (``aevb.samplers``): each kind fits a known distribution, survives save and load with the
same samples, and a run without one says how to fit it (library and CLI)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aevb.checkpoint import CheckpointError, save_model
from aevb.run import load
from aevb.config import DataConfig, ModelConfig, RunConfig
from aevb.models import VAE, build_model
from aevb.samplers import SAMPLERS, SamplerError, StaleSamplerWarning, encode_codes, fit_prior, fit_sampler

from .linear_gaussian import marginal as linear_marginal, set_exact_posterior_encoder
from .vizmodels import aevb

# A correlated 2-D Gaussian away from the origin: what the MAF and the two-stage VAE are fitted on.
MEAN = torch.tensor([1.0, -2.0])
COV = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
# Small fits for the save/load tests (the fits' quality is not what they test).
TINY = {"gmm": {"components": 3}, "maf": {"epochs": 2, "hidden": 16, "layers": 2},
        "two-stage": {"epochs": 2, "hidden": 16}}


def gaussian_draws(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return MEAN + torch.randn(n, 2, generator=g) @ torch.linalg.cholesky(COV).T


def tiny_run(path, kind: str = "ae", latent_dim: int = 3, num_classes: int = 0):
    """An untrained model on the embedded digits data set (1297 training images), saved as a run."""
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(family=kind, input_shape=(1, 8, 8), latent_dim=latent_dim, hidden=(16,),
                                      num_classes=num_classes),
                    data=DataConfig(dataset="digits", binarize="dynamic"))
    save_model(path, build_model(cfg.model), cfg)
    return load(path)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny AE run with one sampler of every kind fitted on its codes."""
    run = tiny_run(tmp_path_factory.mktemp("samplers") / "ae")
    for kind, options in TINY.items():
        fit_prior(run, kind, seed=0, **options)
    return run


# --- the GMM ------------------------------------------------------------------------------------


def linear_gaussian_vae(D: int = 6, Z: int = 2, sigma: float = 0.5):
    """A VAE whose encoder is the exact posterior of x = W z + b + sigma eps, with W's columns orthogonal
    so that the posterior N(A (x - b), S) is diagonal: S = diag(1 / (1 + |w_j|^2 / sigma^2)), A = S W^T / sigma^2.
    Returns (model, the data distribution p(x), S)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, Z, generator=g))
    W, b = q * torch.tensor([2.0, 1.0]), torch.randn(D, generator=g)
    cfg = ModelConfig(input_shape=(1, 1, D), likelihood="gaussian_fixed", hidden=(D,), activation="linear",
                      latent_dim=Z, fixed_sigma=sigma)
    model = VAE(cfg)
    S = set_exact_posterior_encoder(model, W, b, sigma)
    return model.eval(), linear_marginal(W, b, sigma), S


def test_one_component_gmm_on_a_gaussian_aggregate_posterior_reproduces_the_prior():
    model, data, S = linear_gaussian_vae()
    x = data.sample((20000,)).view(-1, 1, 1, 6)
    # The posterior means are N(0, I - S) (the law of total variance: I = Cov(mean) + E[Cov]): closed form.
    means = fit_sampler("gmm", encode_codes(model, x), seed=0, components=1)
    assert means.means[0].abs().max() < 0.03
    assert torch.allclose(means.covariances[0].float(), torch.eye(2) - S, atol=0.03)
    # One z ~ q(z|x) per image is a draw of the aggregate posterior, here exactly the prior N(0, I).
    gmm = fit_sampler("gmm", encode_codes(model, x, codes="sample", seed=1), seed=0, components=1)
    assert torch.allclose(gmm.covariances[0].float(), torch.eye(2), atol=0.04)
    ours = gmm.sample(20000, torch.Generator().manual_seed(2))
    prior = model.sample_codes(20000, generator=torch.Generator().manual_seed(3))
    assert (ours.mean(0) - prior.mean(0)).abs().max() < 0.04  # each mean's standard error: 0.007
    assert (torch.cov(ours.T) - torch.cov(prior.T)).abs().max() < 0.06  # each variance's: 0.01


def test_gmm_at_temperature_zero_draws_the_component_means_by_their_weights():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    pick = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), 3000, replacement=True, generator=g)
    gmm = fit_sampler("gmm", centres[pick] + 0.3 * torch.randn(3000, 2, generator=g), seed=0, components=3)
    z = gmm.sample(5000, torch.Generator().manual_seed(1), temperature=0.0)
    nearest = torch.cdist(z.double(), gmm.means).argmin(1)
    assert torch.equal(z.double(), gmm.means[nearest].float().double())  # exactly a mean, every one
    share = torch.bincount(nearest, minlength=3).double() / 5000
    assert (share - gmm.weights).abs().max() < 0.03
    assert torch.allclose(torch.sort(gmm.weights).values, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64),
                          atol=0.03)
    # temperature 2 doubles every component's spread
    hot = gmm.sample(20000, torch.Generator().manual_seed(1), temperature=2.0)
    k = torch.cdist(hot.double(), gmm.means).argmin(1)
    assert hot[k == 0].std(0).mean().item() == pytest.approx(2 * gmm.covariances[0].diagonal().sqrt().mean().item(),
                                                            rel=0.06)


def test_gmm_density_is_scikit_learns():
    from sklearn.mixture import GaussianMixture

    x = gaussian_draws(500, 0)
    ours = fit_sampler("gmm", x, seed=0, components=2)
    theirs = GaussianMixture(2, covariance_type="full", random_state=0, reg_covar=1e-6, max_iter=200).fit(x.double().numpy())
    assert torch.allclose(ours.log_prob(x), torch.from_numpy(theirs.score_samples(x.double().numpy())), atol=1e-8)


# --- MAF and the two-stage VAE ------------------------------------------------------------------


def test_maf_fits_a_correlated_gaussian():
    torch.set_num_threads(1)
    maf = fit_sampler("maf", gaussian_draws(3000, 0), seed=0, epochs=10, hidden=32, layers=3)
    z = maf.sample(8000, torch.Generator().manual_seed(1))
    assert (z.mean(0) - MEAN).abs().max() < 0.1
    assert (torch.cov(z.T) - COV).abs().max() < 0.15
    # Held-out cross-entropy within 0.05 nats of the truth's own (its entropy, 2.548 nats).
    test = gaussian_draws(4000, 5)
    truth = torch.distributions.MultivariateNormal(MEAN, COV)
    assert -maf.log_prob(test).mean() < -truth.log_prob(test).mean() + 0.05


def test_two_stage_vae_fits_a_correlated_gaussian():
    torch.set_num_threads(1)
    codes = gaussian_draws(3000, 0)
    two = fit_sampler("two-stage", codes, seed=0, epochs=20, hidden=64, decoder_noise=False)
    z = two.sample(8000, torch.Generator().manual_seed(1))
    assert (z.mean(0) - MEAN).abs().max() < 0.12
    # Decoded means leave out the decoder's noise gamma (in standardized units): with it, the codes' covariance.
    noise = torch.diag(two.fit_stats["gamma"] * two.scale**2)
    assert (torch.cov(z.T) + noise - COV).abs().max() < 0.25
    assert two.fit_stats["gamma"] < 0.5  # it explains most of the variance through u (standardized variance 1)


def test_two_stage_samples_draw_the_decoders_noise():
    """Dai & Wipf sample z ~ p(z|u) = N(g(u), gamma I), not g(u): the samples have the codes' covariance, where
    decoded means alone fall short of it by gamma (standardized units) on the diagonal."""
    torch.set_num_threads(1)
    two = fit_sampler("two-stage", gaussian_draws(3000, 0), seed=0, epochs=20, hidden=64)
    assert two.options["decoder_noise"] is True
    z = two.sample(8000, torch.Generator().manual_seed(1))
    assert (z.mean(0) - MEAN).abs().max() < 0.12
    assert (torch.cov(z.T) - COV).abs().max() < 0.12
    assert torch.equal(two.sample(5, torch.Generator().manual_seed(2), temperature=0.0),
                       two.sample(5, torch.Generator().manual_seed(3), temperature=0.0))  # T = 0: g(0), no noise


def test_a_two_stage_sampler_stored_before_decoder_noise_still_samples_decoded_means():
    """A record without the skip and decoder_noise options (aevb before them) rebuilds the plain MLPs and samples
    g(u), the decoded means, as it did."""
    two = fit_sampler("two-stage", gaussian_draws(200, 0), seed=0, epochs=1, hidden=8, skip=False)
    tensors, meta = two.state()
    for key in ("skip", "decoder_noise"):
        del meta["options"][key]
    old = type(two).from_state(tensors, meta)
    u = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = two.vae.decoder(u) * two.scale + two.shift
    assert torch.allclose(old.sample(4, torch.Generator().manual_seed(0)), expected)


# --- storage --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SAMPLERS))
def test_a_fitted_sampler_survives_save_and_load(fitted, kind):
    again = load(fitted.dir)
    a = fitted.sample(6, sampler=kind, seed=3)
    assert a.shape == (6, 1, 8, 8)
    assert torch.equal(a, again.sample(6, sampler=kind, seed=3))
    assert not torch.equal(a, again.sample(6, sampler=kind, seed=4))
    record = json.loads((fitted.dir / f"sampler-{kind}.json").read_text())
    assert record["kind"] == kind and record["n_codes"] == 1297 and record["weights"] == "last"
    assert record["codes"] == "mean" and record["binarized"] is True and record["dim"] == 3
    assert record["options"].items() >= TINY[kind].items()


def test_the_runs_samplers_are_listed(fitted):
    assert fitted.samplers == sorted(SAMPLERS)


def test_a_run_without_a_prior_or_sampler_says_how_to_fit_one(tmp_path, capsys):
    run = tiny_run(tmp_path / "ae")
    with pytest.raises(SamplerError, match=r"aevb fit-prior .*ae --sampler gmm$") as e:
        run.sample(4)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=r"has no fitted maf sampler; fit one with: aevb fit-prior .* --sampler maf$"):
        run.sample(4, sampler="maf")
    rc, _, err = aevb(capsys, "sample", tmp_path / "ae", "--sampler", "two-stage")
    assert rc == 1 and err.count("\n") == 1 and f"aevb fit-prior {tmp_path / 'ae'} --sampler two-stage" in err
    rc, _, err = aevb(capsys, "sample", tmp_path / "ae", "--temperature", "0.5")
    assert rc == 1 and err.count("\n") == 1 and "--sampler gmm" in err


def test_a_torn_or_stale_sampler_is_named(tmp_path):
    run = tiny_run(tmp_path / "ae")
    fit_prior(run, "gmm", components=2)
    (tmp_path / "ae" / "sampler-gmm.safetensors").write_bytes(
        (tmp_path / "ae" / "sampler-gmm.safetensors").read_bytes()[:-8] + bytes(8))
    with pytest.raises(CheckpointError, match="does not match sampler-gmm.json .*aevb fit-prior"):
        run.sample(2, sampler="gmm")
    fit_prior(run, "gmm", components=2)
    save_model(run.dir, build_model(run.config.model), run.config)  # the run's weights change (trained further)
    with pytest.warns(StaleSamplerWarning, match="fitted on other weights"):
        load(run.dir).sample(2, sampler="gmm")


def test_prior_temperature_scales_a_standard_normals_codes(tmp_path):
    run = tiny_run(tmp_path / "vae", kind="vae")
    assert torch.equal(run.sample_codes(5, temperature=0.5, seed=1), 0.5 * run.sample_codes(5, seed=1))
    g = torch.Generator().manual_seed(1)
    assert torch.equal(run.sample(5, seed=1), run.model.sample(5, generator=g))  # the model's own sample
    with pytest.raises(SamplerError, match="temperature must be a finite number >= 0"):
        run.sample(2, temperature=-1.0)


def test_a_conditional_model_decodes_sampled_codes_with_its_label(tmp_path):
    from aevb.conditional import LabelError

    run = tiny_run(tmp_path / "cae", num_classes=10)
    fit_prior(run, "gmm", components=2)
    z = run.sample_codes(4, sampler="gmm", seed=0)
    assert torch.equal(run.sample(4, sampler="gmm", seed=0, y=7),
                       run.model.decode(z, torch.full((4,), 7)).mean)
    with pytest.raises(LabelError):
        run.sample(4, sampler="gmm", seed=0)


def test_options_are_checked():
    x = gaussian_draws(50, 0)
    with pytest.raises(SamplerError, match="the gmm sampler has no option epochs"):
        fit_sampler("gmm", x, epochs=3)
    with pytest.raises(SamplerError, match="components 60 is more than the 50 codes"):
        fit_sampler("gmm", x, components=60)
    with pytest.raises(SamplerError, match="unknown sampler 'vq'"):
        fit_sampler("vq", x)
    with pytest.raises(SamplerError, match="NaN or infinite"):
        fit_sampler("gmm", torch.full((5, 2), math.nan))


def test_the_cli_lists_the_library_kinds():
    from aevb.cli import samplers as cli_samplers
    from aevb.samplers import CODE_KINDS

    assert cli_samplers.SAMPLER_KINDS == tuple(SAMPLERS) and cli_samplers.CODE_KINDS == CODE_KINDS


def test_fit_prior_refuses_an_option_of_another_kind(fitted, capsys):
    rc, _, err = aevb(capsys, "fit-prior", fitted.dir, "--sampler", "gmm", "--epochs", "3")
    assert rc == 2 and "--epochs applies to --sampler maf or two-stage, not gmm" in err


@pytest.mark.slow
def test_fit_prior_and_sample_on_mnist(tmp_path, data_dir, capsys):
    """An AE trained briefly on real MNIST: fit-prior writes the sampler, sample --sampler draws from it."""
    run = tmp_path / "mnist-ae"
    rc, _, err = aevb(capsys, "train", "--dataset", "mnist", "--data-dir", data_dir, "--subset", "600",
                      "--model", "ae", "--latent-dim", "4", "--hidden", "32", "--epochs", "1",
                      "--batch-size", "100", "--out", run, "--no-progress", "--no-figures")
    assert rc == 0, err
    rc, out, err = aevb(capsys, "fit-prior", run, "--sampler", "gmm", "--components", "3", "--data-dir", data_dir)
    assert rc == 0, err
    assert "fitted the gmm sampler on 600 codes" in out
    rc, out, err = aevb(capsys, "sample", run, "--sampler", "gmm", "--temperature", "0.7", "--n", "16",
                        "--out", tmp_path / "s.png")
    assert rc == 0, err
    assert (tmp_path / "s.png").stat().st_size > 1000
    images = load(run).sample(16, sampler="gmm", seed=0)
    assert images.shape == (16, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
