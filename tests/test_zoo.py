"""The model zoo: flow posteriors, learned priors, two stochastic layers, their compositions, and
``aevb reproduce zoo``.

Flows against autograd's Jacobian and their own inverses; mixtures against a direct computation and their
samples' moments; importance sampling with every new q (and prior) on linear-Gaussian models whose log p(x)
is known in closed form; every combination trained a few steps and loaded back; the zoo's rows end to end.
"""

from __future__ import annotations

import csv
import itertools
import math

import pytest
import torch
from torch import nn

import aevb
from aevb.config import ConfigError, ModelConfig, RunConfig
from aevb.distributions import DiagonalGaussian, StandardNormal
from aevb.evaluate import log_likelihood
from aevb.flows import IAF, FlowPosterior, PlanarFlow
from aevb.models import VAE, build_model
from aevb.objectives import elbo
from aevb.priors import MixtureOfGaussians, mixture_log_prob

# --- flows -------------------------------------------------------------------------------------------


def _randomise_(module: nn.Module, std: float, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _flows(z_dim: int = 3, steps: int = 4, context: int = 3):
    torch.manual_seed(0)
    planar = _randomise_(PlanarFlow(z_dim, steps, context), 0.8)
    iaf = _randomise_(IAF(z_dim, steps, context, hidden=8), 0.5)
    return {"planar": planar, "iaf": iaf}


@pytest.mark.parametrize("name", ["planar", "iaf"])
def test_flow_log_determinant_matches_autograd_jacobian(name):
    flow = _flows()[name].double()
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 3, generator=g, dtype=torch.float64)  # two images' contexts
    z = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)  # 5 samples of each
    _, logdet = flow(z, h)
    for s in range(5):
        for b in range(2):
            jac = torch.autograd.functional.jacobian(lambda v: flow(v, h[b : b + 1])[0][0], z[s, b : b + 1])
            expected = torch.linalg.slogdet(jac.reshape(3, 3))[1]
            assert torch.allclose(logdet[s, b], expected, atol=1e-10), (s, b)


def test_iaf_is_autoregressive_and_the_order_alternates():
    flow = _flows()["iaf"].double()
    h = torch.randn(1, 3, dtype=torch.float64)
    for k, step in enumerate(flow.steps):
        jac = torch.autograd.functional.jacobian(lambda v: step(v, h)[0], torch.randn(1, 3, dtype=torch.float64))
        jac = jac.reshape(3, 3)
        upper, lower = torch.triu(jac, 1), torch.tril(jac, -1)
        assert (upper == 0).all() if k % 2 == 0 else (lower == 0).all()  # z_i' reads only earlier z_j


@pytest.mark.parametrize("name", ["planar", "iaf"])
def test_an_identity_flow_gives_the_gaussian_log_q_exactly(name):
    flow = {"planar": PlanarFlow(3, 5, 3), "iaf": IAF(3, 5, 3, hidden=8)}[name]
    if name == "planar":  # zero amortiser: u = w = b = 0 at every x
        nn.init.zeros_(flow.amortize.weight)
        nn.init.zeros_(flow.amortize.bias)
    # (an IAF starts as the identity: its MADEs' output layers are zero)
    g = torch.Generator().manual_seed(2)
    base = DiagonalGaussian(torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g))
    q = FlowPosterior(base, flow, torch.randn(4, 3, generator=g))
    z, log_q = q.rsample_with_log_prob(6, generator=torch.Generator().manual_seed(3))
    z0 = base.rsample(6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(z, z0) and torch.equal(log_q, base.log_prob(z0))
    assert torch.equal(q.mean, base.mu)


@pytest.mark.parametrize("name", ["planar", "iaf"])
def test_flows_invert_and_log_prob_agrees_with_the_sample(name):
    flow = _flows()[name].double()
    g = torch.Generator().manual_seed(4)
    base = DiagonalGaussian(torch.randn(2, 3, generator=g, dtype=torch.float64),
                            torch.randn(2, 3, generator=g, dtype=torch.float64) * 0.3)
    h = torch.randn(2, 3, generator=g, dtype=torch.float64)
    z0 = base.rsample(7, generator=g)
    zk, logdet = flow(z0, h)
    back, logdet_back = flow.inverse(zk, h)
    assert torch.allclose(back, z0, atol=1e-9) and torch.allclose(logdet_back, logdet, atol=1e-9)
    q = FlowPosterior(base, flow, h)
    assert torch.allclose(q.log_prob(zk), base.log_prob(z0) - logdet, atol=1e-9)


def test_the_planar_inverse_carries_the_gradient_of_the_implicit_function():
    flow = _flows()["planar"].double()
    h = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 3, dtype=torch.float64)
    torch.autograd.gradcheck(lambda c: flow.inverse(y, c)[0], (h,))


def test_planar_steps_stay_invertible_for_any_u():
    flow = PlanarFlow(2, 1, 2)
    with torch.no_grad():  # w.u very negative: without the reparameterisation the step would fold
        flow.amortize.weight.zero_()
        flow.amortize.bias.copy_(torch.tensor([-5.0, -5.0, 1.0, 1.0, 0.0]))
    u_hat, w, _ = flow.step_parameters(torch.zeros(1, 2))
    assert (w * u_hat).sum().item() >= -1
    line = torch.linspace(-6, 6, 2001).view(-1, 1) * torch.tensor([[1.0, 1.0]]) / math.sqrt(2)  # along w
    out = flow(line.unsqueeze(1), torch.zeros(1, 2))[0].squeeze(1)
    assert (out @ torch.tensor([1.0, 1.0]) / math.sqrt(2)).diff().min() > 0  # monotone along w: one-to-one


# --- learned priors ----------------------------------------------------------------------------------


def _direct_mixture(z, mu, log_var):
    dist = torch.distributions
    comps = dist.Independent(dist.Normal(mu.double(), torch.exp(0.5 * log_var.double())), 1)
    weights = dist.Categorical(torch.ones(len(mu), dtype=torch.float64))
    return dist.MixtureSameFamily(weights, comps).log_prob(z.double())


def test_mixture_log_prob_matches_a_direct_mixture():
    g = torch.Generator().manual_seed(5)
    mu, log_var = torch.randn(7, 4, generator=g) * 2, torch.randn(7, 4, generator=g)
    z = torch.randn(3, 5, 4, generator=g) * 2
    got = mixture_log_prob(z, mu, log_var)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got.double(), _direct_mixture(z, mu, log_var), rtol=1e-5, atol=1e-4)


def test_mog_and_vamp_priors_log_prob_against_their_components():
    torch.manual_seed(0)
    mog = MixtureOfGaussians(4, 6)
    with torch.no_grad():
        mog.log_var.normal_(0, 0.5)
    z = torch.randn(10, 4)
    direct = _direct_mixture(z, mog.means, mog.log_var)
    torch.testing.assert_close(mog.log_prob(z).double(), direct, rtol=1e-5, atol=1e-4)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=4, prior="vamp", prior_components=6))
    q = model.encode(model.prior.inputs()[0])  # the posterior at the pseudo-inputs
    torch.testing.assert_close(model.prior.log_prob(z).double(), _direct_mixture(z, q.mu, q.log_var), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_prior_samples_have_the_mixture_moments(prior):
    torch.manual_seed(1)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=3, prior=prior, prior_components=5))
    if prior == "mog":
        with torch.no_grad():
            model.prior.log_var.normal_(0, 0.5)
    with torch.no_grad():
        q = model.prior.components()
        mu, var = q.mu.double(), torch.exp(q.log_var.double())
        n = 200_000
        s = model.prior.sample(n, generator=torch.Generator().manual_seed(0)).double()
    mean = mu.mean(0)  # equal weights
    second = (var + mu**2).mean(0)
    std_err = (second - mean**2).sqrt() / math.sqrt(n)
    assert ((s.mean(0) - mean).abs() < 5 * std_err).all()
    assert torch.allclose(s.var(0), second - mean**2, rtol=0.02)


# --- importance sampling on linear-Gaussian models ---------------------------------------------------

from .test_evaluate import SIGMA, Z, D, LinearGaussianDecoder  # noqa: E402  (p(x|z) = N(W z + b, sigma^2 I))


def _set_affine(linear_in: nn.Linear, head: nn.Linear, A: torch.Tensor, c: torch.Tensor) -> None:
    """An identity first layer, then head(v) = A v + c."""
    with torch.no_grad():
        linear_in.weight.copy_(torch.eye(linear_in.weight.shape[0], linear_in.weight.shape[1]))
        linear_in.bias.zero_()
        head.weight.copy_(A)
        head.bias.copy_(c)


def _set_constant(head: nn.Linear, value: torch.Tensor) -> None:
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(value)


def _mild_planar_(flow: PlanarFlow, along: float = 0.1, across: float = 0.03) -> None:
    """The same steps at every x, each moving z by a few hundredths (the posterior's scale is 0.2): |w| = 3,
    w.u' = ``along`` (so the step stretches along w by up to 1 + along), and ``across`` orthogonal to w."""
    g = torch.Generator().manual_seed(1)
    params = []
    for _ in range(flow.steps):
        w = torch.randn(Z, generator=g)
        w = 3 * w / w.norm()
        u_hat = along * w / w.dot(w) + across * torch.tensor([-w[1], w[0]]) / w.norm()
        wu = math.log(math.expm1(along + 1))  # the w.u whose reparameterisation m(w.u) = -1 + softplus(w.u) is `along`
        u = u_hat - (along - wu) * w / w.dot(w)
        params.append(torch.cat([u, w, torch.tensor([0.1])]))
    _set_constant(flow.amortize, torch.cat(params))


def linear_gaussian(**components):
    """A VAE with p(x|z) = N(W z1 + b, sigma^2 I), linear networks, and a q close to the exact posterior;
    with the marginal p(x) (a torch distribution with ``log_prob``)."""
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(D, Z, generator=g), torch.randn(D, generator=g)
    cfg = ModelConfig(input_shape=(1, 1, D), likelihood="gaussian_fixed", hidden=(D,), activation="linear",
                      latent_dim=Z, fixed_sigma=SIGMA, top_latent_dim=Z, top_hidden=(Z,), **components)
    torch.manual_seed(0)
    model = VAE(cfg)
    model.decoder = LinearGaussianDecoder(W, b, SIGMA)
    noise = SIGMA**2 * torch.eye(D)
    if cfg.stochastic_layers == 2:
        # p(z2) = N(0, I), p(z1|z2) = N(C z2 + d, diag(v)): z1 ~ N(d, P), P = C C^T + diag(v)
        C, d, v = torch.randn(Z, Z, generator=g) * 0.8, torch.randn(Z, generator=g) * 0.5, torch.tensor([0.3, 0.6])
        cond = model.prior.z1_given_z2
        _set_affine(cond.trunk[0], cond.mu, C, d)
        _set_constant(cond.log_var, torch.log(v))
        P = C @ C.T + torch.diag(v)
        # q(z2|z1): the exact p(z2|z1), its variance inflated 1.5x
        S2 = torch.linalg.inv(torch.eye(Z) + C.T @ torch.diag(1 / v) @ C)
        A2 = S2 @ C.T @ torch.diag(1 / v)
        _set_affine(model.top_encoder.trunk[0], model.top_encoder.mu, A2, -A2 @ d)
        _set_constant(model.top_encoder.log_var, torch.log(1.5 * torch.diagonal(S2)))
        prior_mean, prior_cov = d, P
    else:
        prior_mean, prior_cov = torch.zeros(Z), torch.eye(Z)
    # q(z1|x): the exact posterior's mean under the Gaussian prior N(prior_mean, prior_cov), 1.5x its variance
    Pinv = torch.linalg.inv(prior_cov)
    S = torch.linalg.inv(Pinv + W.T @ W / SIGMA**2)
    A = S @ W.T / SIGMA**2
    enc = model.encoder
    _set_affine(enc.trunk[0], enc.heads["mu"], A, S @ Pinv @ prior_mean - A @ b)
    _set_constant(enc.heads["log_var"], torch.log(1.5 * torch.diagonal(S)))
    if cfg.flow == "planar":
        _mild_planar_(model.posterior.flow)
    elif cfg.flow == "iaf":
        _randomise_(model.posterior.flow, 0.2, seed=1)
    if cfg.prior == "mog":
        with torch.no_grad():
            model.prior.means.mul_(0.3)
            model.prior.log_var.fill_(math.log(0.8))
    if cfg.prior in ("mog", "vamp"):
        with torch.no_grad():
            comps = model.prior.components()
        # p(x) = 1/K sum_k N(x; W mu_k + b, W Sigma_k W^T + sigma^2 I)
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(torch.ones(len(comps.mu))),
            torch.distributions.MultivariateNormal(comps.mu @ W.T + b,
                                                   W @ torch.diag_embed(torch.exp(comps.log_var)) @ W.T + noise))
        return model.eval(), mix
    return model.eval(), torch.distributions.MultivariateNormal(W @ prior_mean + b, W @ prior_cov @ W.T + noise)


ZOO_QS = [dict(flow="planar", flow_steps=3), dict(flow="iaf", flow_steps=2), dict(stochastic_layers=2),
          dict(stochastic_layers=2, flow="iaf", flow_steps=2), dict(prior="mog", prior_components=3),
          dict(prior="vamp", prior_components=3)]


@pytest.mark.parametrize("components", ZOO_QS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_importance_sampling_with_each_new_q_matches_the_closed_form(components):
    model, marginal = linear_gaussian(**components)
    x = marginal.sample(torch.Size([20]))
    exact = marginal.log_prob(x).double()
    with torch.no_grad():
        est = log_likelihood(model, x.reshape(20, 1, 1, D), k=5000, batch_size=7, chunk=1000)
        elbo1 = log_likelihood(model, x.reshape(20, 1, 1, D), k=1)
    assert (est - exact).abs().max().item() < 0.05
    assert (exact - elbo1).mean().item() > 0.05  # the one-sample bound is measurably below: the test has teeth


# --- components compose: every combination trains, saves and loads back -----------------------------

COMBOS = list(itertools.product(["none", "planar", "iaf"], ["standard", "vamp", "mog"], [1, 2], ["mlp", "conv"]))
# (objective, conditional) cycled so that each pairs with every flow, prior, layer count and architecture
OBJECTIVE_CONDITIONAL = list(itertools.product(["elbo", "iwae"], [False, True]))


def _combo_id(c) -> str:
    return f"{c[0]}-{c[1]}-{c[2]}l-{c[3]}"


def tiny_config(flow="none", prior="standard", layers=1, arch="mlp", **model) -> RunConfig:
    from aevb.runconfig import default_config

    cfg = default_config("digits")
    m = ModelConfig(input_shape=(1, 8, 8), architecture=arch, hidden=(12,), latent_dim=3, conv_channels=(4,),
                    flow=flow, flow_steps=2, prior=prior, prior_components=4, stochastic_layers=layers,
                    top_latent_dim=2, top_hidden=(6,), **model)
    return RunConfig(model=m, data=cfg.data, train=cfg.train)


@pytest.fixture(scope="module")
def digits():
    from aevb.data import load_dataset
    from aevb.config import DataConfig

    return load_dataset(DataConfig(dataset="digits", subset=60))


@pytest.mark.parametrize("i,combo", list(enumerate(COMBOS)), ids=[_combo_id(c) for c in COMBOS])
def test_every_combination_trains_and_loads_back_with_identical_outputs(i, combo, digits, tmp_path):
    from dataclasses import replace

    from aevb.train import Trainer

    flow, prior, layers, arch = combo
    objective, conditional = OBJECTIVE_CONDITIONAL[(i + i // 4) % 4]
    cfg = tiny_config(flow, prior, layers, arch, num_classes=10 if conditional else 0)
    cfg = replace(cfg, data=replace(cfg.data, subset=60),
                  train=replace(cfg.train, epochs=1, batch_size=30, objective=objective, iwae_k=3, device="cpu",
                                precision="bf16" if i % 3 == 0 else "fp32", eval_batch_size=100))
    trainer = Trainer(cfg, tmp_path / "run", dataset=digits, progress=False)
    lines = trainer.run()
    assert len(lines) == 1 and math.isfinite(lines[0]["valid_elbo"])
    model = trainer.model.eval()
    run = aevb.load(tmp_path / "run")
    loaded = run.model
    assert run.config.model == cfg.model
    x = digits.test.x[:5]
    y = digits.test.y[:5] if conditional else None
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    with torch.no_grad():
        z = model.sample_codes(4, generator=g())
        assert z.shape == (4, 3) and torch.equal(z, loaded.sample_codes(4, generator=g()))
        y4 = torch.arange(4) % 10 if conditional else None
        assert torch.equal(loaded.embed(x, y), model.embed(x, y))
        assert torch.equal(loaded.decode(z, y4).mean, model.decode(z, y4).mean)
        zq, lq = model.encode(x, y).rsample_with_log_prob(3, generator=g())
        zq2, lq2 = loaded.encode(x, y).rsample_with_log_prob(3, generator=g())
        assert torch.equal(zq, zq2) and torch.equal(lq, lq2)
        assert torch.equal(loaded.prior.log_prob(zq), model.prior.log_prob(zq))
        e1 = elbo(model, x, generator=g(), y=y)["elbo"]
        assert torch.equal(e1, elbo(loaded, x, generator=g(), y=y)["elbo"])
        ll = log_likelihood(loaded, x, k=20, y=y)
        assert torch.isfinite(ll).all() and (ll >= e1.double() - 5).all()


def test_a_resumed_zoo_model_continues_bit_for_bit(digits, tmp_path):
    """A flow + VampPrior + two-layer model stopped after 2 steps and resumed ends where an uninterrupted
    run does (weights, optimizer, the noise generator)."""
    from dataclasses import replace

    from aevb.train import Trainer

    cfg = tiny_config("iaf", "vamp", 2)
    cfg = replace(cfg, train=replace(cfg.train, epochs=2, batch_size=20, device="cpu"))
    straight = Trainer(cfg, tmp_path / "a", dataset=digits, progress=False)
    straight.run()
    stopped = Trainer(cfg, tmp_path / "b", dataset=digits, progress=False)
    stopped.run(stop_after_steps=2)
    resumed = Trainer(cfg, tmp_path / "b", dataset=digits, progress=False)
    resumed.restore()
    resumed.run()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


# --- what each component changes, and what is refused -------------------------------------------------


@pytest.mark.parametrize("setting", [dict(prior="vamp"), dict(flow="planar"), dict(stochastic_layers=2)])
def test_a_family_without_the_component_refuses_it_in_one_line(setting):
    name, value = next(iter(setting.items()))
    with pytest.raises(ConfigError, match=rf"the ae model cannot have .*\({name}={value!r}\)"):
        build_model(ModelConfig(input_shape=(1, 8, 8), hidden=(8,), latent_dim=2, family="ae", **setting))


@pytest.mark.parametrize("kwargs,match", [
    (dict(prior="flat"), "prior must be one of standard, vamp, mog"),
    (dict(flow="radial"), "flow must be one of none, planar, iaf"),
    (dict(flow_steps=0), "flow_steps must be a positive integer"),
    (dict(prior_components=0), "prior_components must be a positive integer"),
    (dict(stochastic_layers=3), "stochastic_layers must be 1 or 2"),
    (dict(top_hidden=(0,)), "top_hidden sizes must be positive"),
])
def test_zoo_settings_are_validated_by_name(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


def test_zoo_settings_round_trip_and_old_configs_load_as_the_plain_vae():
    cfg = tiny_config("iaf", "vamp", 2)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    old = RunConfig().to_dict()
    for key in ("prior", "prior_components", "flow", "flow_steps", "stochastic_layers", "top_latent_dim", "top_hidden"):
        del old["model"][key]  # a config.json written before the zoo
    model = build_model(RunConfig.from_dict(old).model)
    assert type(model.prior) is StandardNormal and type(model.encode(torch.rand(2, 1, 28, 28))) is DiagonalGaussian


def test_two_layers_the_decoder_reads_z1_and_the_code_is_z1():
    torch.manual_seed(0)
    model = build_model(tiny_config(layers=2).model).eval()
    x = torch.rand(4, 1, 8, 8)
    q = model.encode(x)
    z, log_q = q.rsample_with_log_prob(5)
    assert z.shape == (5, 4, 3 + 2) and log_q.shape == (5, 4)
    assert torch.allclose(q.log_prob(z), log_q, atol=1e-5)
    assert torch.equal(model.decode(z).mean, model.decode(z[..., :3]).mean)  # the whole latent or z1 alone
    assert torch.equal(model.embed(x), q.bottom.mean) and model.capabilities.latent_shape == (3,)
    joint = model.prior.sample(6, generator=torch.Generator().manual_seed(0))
    assert joint.shape == (6, 5) and torch.isfinite(model.prior.log_prob(joint)).all()
    codes = model.sample_codes(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(codes, joint[:, :3])
    assert model.sample(6).shape == (6, 1, 8, 8)


def test_the_vamp_prior_holds_its_pseudo_inputs_not_a_second_encoder():
    model = build_model(tiny_config(prior="vamp").model)
    keys = list(model.state_dict())
    assert "prior.pseudo_inputs" in keys and not any(k.startswith("prior.") and "encoder" in k for k in keys)
    assert sum(p.numel() for p in model.prior.parameters()) == 4 * 64  # K pseudo-inputs of 8x8
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})


def test_a_learned_prior_is_what_sample_and_the_manifold_draw_from(tmp_path):
    from aevb.viz import plot_manifold

    torch.manual_seed(0)
    model = build_model(tiny_config(prior="mog").model).eval()
    with torch.no_grad():
        model.prior.means.add_(5.0)  # far from N(0, I)
    codes = model.sample_codes(2000, generator=torch.Generator().manual_seed(0))
    assert codes.mean().item() > 3.5
    grid, how = model.code_quantiles(torch.tensor([0.05, 0.5, 0.95]))
    assert how.startswith("quantiles of") and (grid[1] > 3).all()
    assert plot_manifold(model, tmp_path / "m.png", n=5).stat().st_size > 1000
    plain = build_model(tiny_config().model)
    grid, how = plain.code_quantiles(torch.tensor([0.05, 0.5, 0.95]))
    assert how == "Gaussian quantiles" and torch.allclose(grid[:, 0], torch.tensor([-1.6449, 0.0, 1.6449]), atol=1e-4)


@pytest.fixture(scope="module")
def zoo_run(digits, tmp_path_factory):
    """A planar-flow, VampPrior, two-layer model trained one epoch on digits."""
    from dataclasses import replace

    from aevb.train import Trainer

    out = tmp_path_factory.mktemp("zoo") / "run"
    cfg = tiny_config("planar", "vamp", 2)
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, batch_size=30, device="cpu"))
    Trainer(cfg, out, dataset=digits, progress=False).run()
    return aevb.load(out)


def test_the_explorer_serves_a_two_layer_flow_model_with_a_learned_prior(zoo_run, digits):
    from aevb.serve.app import Explorer

    ex = Explorer(zoo_run)
    info = ex.info()
    assert info["latent_dim"] == 3 and info["sliders"] == 3  # the sliders set z1, the code the decoder reads
    z = ex.sample(seed=1)["z"]
    assert len(z) == 3
    assert ex.decode_png(torch.tensor(z))[:8] == b"\x89PNG\r\n\x1a\n"
    enc = ex.encode(digits.test.x[:1])
    assert len(enc["mu"]) == 3 and enc["std"] == [0.0, 0.0, 0.0]  # a flow posterior has no closed-form std


def test_every_figure_and_the_report_draw_for_a_zoo_model(zoo_run, digits, tmp_path):
    from aevb.report import figures

    drawn = figures(zoo_run)
    assert all(isinstance(fig, bytes) for fig in drawn.values()), {k: v for k, v in drawn.items() if isinstance(v, str)}


def test_wake_sleep_trains_a_flow_posterior(digits, tmp_path):
    """The sleep phase needs log q(z|x) at dreamt z: the flow's inverse gives it, with gradients."""
    from dataclasses import replace

    from aevb.train import Trainer

    cfg = tiny_config("planar", "standard", 1)
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, batch_size=30, device="cpu", algorithm="wake-sleep"))
    trainer = Trainer(cfg, tmp_path / "ws", dataset=digits, progress=False)
    lines = trainer.run()
    assert math.isfinite(lines[0]["train_sleep_log_q"])
    assert trainer.model.posterior.flow.amortize.weight.grad is not None


# --- aevb reproduce zoo --------------------------------------------------------------------------------


def test_the_zoo_table_names_a_source_protocol_and_recipe_for_every_row():
    from aevb.reproduce import zoo

    assert set(zoo.ROW_NAMES) >= {"vae-1l", "iwae-1l", "vae-2l", "iwae-2l", "planar-10", "planar-80", "iaf", "mog",
                                  "vamp", "vamp-2l", "vae-static", "iwae-static", "vamp-static"}
    for row in zoo.ROWS:
        assert row.protocol in ("dynamic", "static") and row.recipe in zoo.RECIPES and row.source and row.checked
        assert row.published is None or 80 < row.published < 95
        build_model(zoo.row_config(row, n_train=1000).model)  # every row's model builds
    assert zoo.get_row("iaf").published is None  # no MLP figure in the paper: none invented
    assert zoo.RECIPES["iwae"].passes == 3280


def test_a_budget_cuts_the_schedule_short_and_keeps_its_start():
    from aevb.reproduce.zoo import RECIPES, stages_within

    iwae = RECIPES["iwae"]
    assert stages_within(iwae, None)[-1] == (3280, pytest.approx(1e-4))
    assert [end for end, _ in stages_within(iwae, 10)] == [1, 4, 10]
    assert stages_within(iwae, 10)[:2] == stages_within(iwae, None)[:2]
    assert stages_within(RECIPES["tomczak"], 3) == [(3, 5e-4)]


@pytest.mark.slow
def test_every_zoo_row_runs_end_to_end_on_a_subset(data_dir, tmp_path):
    from aevb.reproduce import zoo

    paths = zoo.run(tmp_path / "zoo", budget=1, k=5, n_test=20, subset=100, device="cpu", data_dir=str(data_dir),
                    log=lambda line: None)
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows] == list(zoo.ROW_NAMES)
    for r in rows:
        assert {"row", "model", "protocol", "test_nll", "stderr", "k", "n_test", "passes", "wall_seconds", "published",
                "source"} <= set(r)
        assert math.isfinite(float(r["test_nll"])) and float(r["test_nll"]) > 0 and float(r["stderr"]) >= 0
        assert (r["k"], r["n_test"], r["passes"]) == ("5", "20", "1")
        assert r["dataset"] == {"dynamic": "mnist", "static": "binarized_mnist"}[r["protocol"]]
    assert rows[0]["published"] == "86.76" and next(r for r in rows if r["row"] == "iaf")["published"] == ""
    md = paths["md"].read_text()
    assert md.count("\n") == len(rows) + 2 and "| vamp | VAE + VampPrior" in md


@pytest.mark.slow
def test_a_zoo_row_resumed_from_its_run_directory_matches_one_run_straight_through(data_dir, tmp_path):
    from aevb.reproduce import zoo

    common = dict(rows=("vae-1l",), k=5, n_test=10, subset=60, device="cpu", data_dir=str(data_dir), log=lambda s: None)
    zoo.run(tmp_path / "a", budget=4, **common)
    zoo.run(tmp_path / "b", budget=2, **common)  # stopped inside the second stage (passes 1 to 4)
    paths = zoo.run(tmp_path / "b", budget=4, **common)  # the same command again, a larger budget: continues
    a = aevb.load(tmp_path / "a" / "runs" / "vae-1l").model.state_dict()
    b = aevb.load(tmp_path / "b" / "runs" / "vae-1l").model.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    with open(paths["csv"], newline="") as f:
        assert next(csv.DictReader(f))["passes"] == "4"


@pytest.mark.slow
def test_two_processes_train_a_zoo_model_to_the_weights_of_one(tmp_path):
    from aevb.run import load

    from .conftest import run_cli
    from .test_distributed import COMMON, torchrun

    zoo_flags = ["--prior", "vamp", "--prior-components", "8", "--flow", "iaf", "--flow-steps", "2",
                 "--stochastic-layers", "2", "--top-latent-dim", "2", "--top-hidden", "8", "--epochs", "2"]
    run_cli(*COMMON, *zoo_flags, "--out", str(tmp_path / "one"))
    proc = torchrun(2, *COMMON, *zoo_flags, "--out", str(tmp_path / "two"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    a, b = load(tmp_path / "one").model.state_dict(), load(tmp_path / "two").model.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key


# --- the laptop column: a CPU-time budget and the curve -------------------------------------------------


def _binary_images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.2).float()


@pytest.fixture
def tiny_mnist():
    """200 training and 40 test images of random binary pixels, MNIST's shape (no data files needed)."""
    from aevb.data import Dataset
    from aevb.data.dataset import Split

    return Dataset("mnist", Split(_binary_images(200, 0)), None, Split(_binary_images(40, 1)), binary=True)


def test_the_next_stop_is_the_next_curve_mark_or_the_budget():
    from aevb.reproduce.zoo import _next_stop

    assert _next_stop(0.0, 10.0, 4.0) == 4.0
    assert _next_stop(4.0, 10.0, 4.0) == 8.0  # a point exactly at a mark: the next one
    assert _next_stop(8.5, 10.0, 4.0) == 10.0
    assert _next_stop(3.0, None, 4.0) == 4.0 and _next_stop(3.0, 10.0, None) == 10.0
    assert _next_stop(3.0, None, None) is None


def test_stop_when_pauses_the_trainer_at_that_step_and_it_resumes_bit_for_bit(digits, tmp_path):
    from dataclasses import replace

    from aevb.train import Trainer

    cfg = tiny_config()
    cfg = replace(cfg, train=replace(cfg.train, epochs=2, batch_size=20, device="cpu"))
    straight = Trainer(cfg, tmp_path / "a", dataset=digits, progress=False)
    straight.run()
    paused = Trainer(cfg, tmp_path / "b", dataset=digits, progress=False)
    paused.run(stop_when=lambda: paused.global_step >= 4)
    assert (paused.global_step, paused.epoch) == (4, 1)  # 3 steps a pass: paused inside the second
    resumed = Trainer(cfg, tmp_path / "b", dataset=digits, progress=False)
    resumed.restore()
    assert resumed.global_step == 4
    resumed.run()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name


CURVE_FIELDS = {"train_cpu_seconds", "cpu_hours", "step", "passes", "test_nll", "stderr", "k", "n_test",
                "train_wall_seconds", "eval_cpu_seconds", "eval_wall_seconds"}


def _check_marks(points, start: float, every: float, limit: float, slack: float = 0.5) -> None:
    """Each curve point lies just past the next multiple of ``every`` after the one before it (the first: after
    ``start``), or past ``limit`` for the last one; ``slack``: one step, a checkpoint and a first call's set-up."""
    from aevb.reproduce.zoo import _next_stop

    assert points and points[-1]["train_cpu_seconds"] >= limit
    before = start
    for p in points:
        mark = _next_stop(before, limit, every)
        assert mark <= p["train_cpu_seconds"] < mark + slack, (before, mark, p)
        before = p["train_cpu_seconds"]


def test_a_cpu_budget_stops_a_row_records_its_curve_and_a_larger_one_continues_it(tiny_mnist, tmp_path):
    from aevb.reproduce import zoo

    row, run_dir = zoo.get_row("vae-1l"), tmp_path / "runs" / "vae-1l"
    x = tiny_mnist.test.x

    def curve(trainer, cpu_seconds):
        zoo.record_curve(run_dir, trainer.model, x, cpu_seconds, trainer.global_step, trainer.steps_per_epoch, k=3)

    def train(hours):
        return zoo.train_row(row, run_dir, tiny_mnist, device="cpu", log=lambda s: None, cpu_hours=hours,
                             curve=curve, curve_every=0.4)

    budget = 0.0003  # 1.08 CPU seconds: points past 0.4, 0.8 (unless the first steps pass it) and 1.08
    passes = train(budget)
    spent, steps = zoo.train_cpu(run_dir), zoo.trained_steps(run_dir)
    assert 1.08 <= spent < 1.08 + 0.5 and 0 < passes < zoo.RECIPES["iwae"].passes
    points = zoo.read_curve(run_dir)
    _check_marks(points, 0.0, every=0.4, limit=1.08)
    assert all(set(p) == CURVE_FIELDS for p in points) and points[-1]["step"] == steps
    assert all(p["k"] == 3 and p["n_test"] == 40 and 0 < p["test_nll"] < 800 and p["stderr"] > 0 for p in points)
    assert all(a["step"] < b["step"] for a, b in zip(points, points[1:]))
    assert math.isclose(points[-1]["passes"], steps / 10, abs_tol=1e-4)  # 200 images, M = 20: 10 steps a pass
    weights = aevb.load(run_dir).model.state_dict()  # the model file holds the weights it stopped with
    state, _, _ = __import__("aevb.checkpoint").checkpoint.load_train_state(run_dir)
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in weights.items())
    train(budget)  # spent already: nothing more, no new point
    assert (zoo.trained_steps(run_dir), zoo.read_curve(run_dir)) == (steps, points)
    train(2 * budget)
    assert zoo.trained_steps(run_dir) > steps and 2.16 <= zoo.train_cpu(run_dir) < 2.16 + 0.5
    more = zoo.read_curve(run_dir)
    assert more[: len(points)] == points
    _check_marks(more[len(points):], spent, every=0.4, limit=2.16)

    score = zoo.score_row(row, run_dir, x, k=5, device="cpu", log=lambda s: None)
    assert score["steps"] == zoo.trained_steps(run_dir) and score["latent_dim"] == 50
    assert len(score["kl_per_dim"]) == 50 and 0 <= score["active_units"] <= 50
    assert math.isclose(sum(score["kl_per_dim"]), score["test_kl"], rel_tol=1e-6)  # the analytic KL, split by unit
    (line,) = zoo.collect_lines(tmp_path)  # the table from the run directories
    assert line["row"] == "vae-1l" and line["train_cpu_hours"] == round(zoo.train_cpu(run_dir) / 3600, 4)
    assert f"| {line['active_units']} of 50 |" in zoo.markdown([line])
