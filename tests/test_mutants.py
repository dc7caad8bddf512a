"""Tests that kill mutants the other tests let survive (docs/reliability.md, "Mutation testing").

Each asserts a closed form, a known number or the exact arguments of a draw, for one function of the
numerics (objectives, distributions, flows, priors, importance), small enough to run in
milliseconds: mutmut runs them once per mutant of the functions they reach.

``FixedNoise`` is a noise source (``distributions.noise``'s protocol, like the data-parallel
trainer's ``ShardedNoise``): it returns a constant and records every draw's kind, shape, batch axis,
device and dtype, so a test sees exactly what a sampler asked for.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch

from aevb.checkpoint import CheckpointError

from aevb.distributions import (LOG_2PI, Bernoulli, DiagonalGaussian, DiscretizedLogistic, Gaussian,
                                StandardNormal, analytic_kl_per_dim, noise, register_kl, standard_normal,
                                standard_normal_log_prob, uniform)

CPU = torch.device("cpu")


class FixedNoise:
    """A noise source returning ``value`` everywhere; ``calls`` lists (kind, shape, batch_axis, device, dtype)."""

    def __init__(self, value: float):
        self.value = value
        self.calls: list[tuple] = []

    def draw(self, kind, shape, batch_axis, device, dtype):
        self.calls.append((kind, tuple(shape), batch_axis, device, dtype))
        return torch.full(tuple(shape), self.value, device=device, dtype=dtype)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- distributions: noise ---------------------------------------------------------------------------

def test_noise_helpers_pass_every_argument_to_the_source():
    src = FixedNoise(0.25)
    u = uniform((2, 3), src, CPU, torch.float64, batch_axis=0)
    e = standard_normal((4, 2), src, CPU, torch.float64, batch_axis=1)
    assert src.calls == [("uniform", (2, 3), 0, CPU, torch.float64), ("normal", (4, 2), 1, CPU, torch.float64)]
    assert u.dtype == e.dtype == torch.float64 and float(u[0, 0]) == 0.25
    with pytest.raises(ValueError, match=r"^a sharded noise source needs the batch axis of the draw \(batch_axis\)$"):
        uniform((2,), FixedNoise(0.0))


def test_noise_helpers_draw_from_the_given_generator():
    assert torch.equal(uniform((3, 2), seeded(1)), torch.rand((3, 2), generator=seeded(1)))
    assert torch.equal(standard_normal((3, 2), seeded(1)), torch.randn((3, 2), generator=seeded(1)))
    assert uniform((2,), seeded(), dtype=torch.float64).dtype == torch.float64
    assert standard_normal((2,), seeded(), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"^noise kind must be 'normal' or 'uniform'; got 'gamma'$"):
        noise("gamma", (2,))


# --- distributions: Gaussians -----------------------------------------------------------------------

def test_diagonal_gaussian_log_prob_and_kl_match_torch():
    mu = torch.tensor([[0.3, -1.2, 2.0]])
    log_var = torch.tensor([[0.5, -0.7, 1.1]])
    q = DiagonalGaussian(mu, log_var)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * log_var))
    z = torch.tensor([[[1.0, 0.0, -0.5]]])
    assert torch.allclose(q.log_prob_per_dim(z), ref.log_prob(z), atol=1e-6)
    assert torch.allclose(q.log_prob(z), ref.log_prob(z).sum(-1), atol=1e-6)
    std_normal = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    kl = torch.distributions.kl_divergence(ref, std_normal)
    assert torch.allclose(q.kl_per_dim(), kl, atol=1e-6)
    assert torch.allclose(standard_normal_log_prob(z), std_normal.log_prob(z).sum(-1), atol=1e-6)
    assert torch.allclose(StandardNormal(3).log_prob_per_dim(z), std_normal.log_prob(z), atol=1e-6)
    assert LOG_2PI == pytest.approx(math.log(2 * math.pi))


def test_half_precision_parameters_give_float32_log_densities():
    from aevb.distributions import _wide

    for dtype in (torch.float16, torch.bfloat16):
        assert _wide(torch.zeros(2, dtype=dtype)).dtype == torch.float32
    assert _wide(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64
    q = DiagonalGaussian(torch.zeros(1, 2, dtype=torch.bfloat16), torch.zeros(1, 2, dtype=torch.bfloat16))
    lp = q.log_prob(torch.full((1, 2), 0.1))
    assert lp.dtype == torch.float32 and float(lp) == pytest.approx(-LOG_2PI - 0.01, abs=1e-6)


def test_diagonal_gaussian_rsample_is_mu_plus_sigma_eps_with_the_batch_on_axis_minus_2():
    q = DiagonalGaussian(torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.log(torch.tensor([[4.0, 1.0]],
                                                                                              dtype=torch.float64)))
    src = FixedNoise(0.5)
    z = q.rsample(3, src)
    assert z.dtype == torch.float64 and z.tolist() == [[[2.0, -0.5]]] * 3
    assert src.calls == [("normal", (3, 1, 2), -2, CPU, torch.float64)]
    meta = DiagonalGaussian(torch.zeros(2, 2, device="meta"), torch.zeros(2, 2, device="meta"))
    assert meta.rsample(3, seeded()).device.type == "meta"


def test_diagonal_gaussian_kl_sums_over_the_latent_axis():
    # (2, 3) parameters: summing over axis 0 instead of -1 would give 3 numbers, not 2
    mu = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    q = DiagonalGaussian(mu, torch.zeros(2, 3))
    expected = torch.tensor([2.5, 0.5])  # KL(N(mu, 1) || N(0, 1)) = mu^2 / 2 per dimension
    assert torch.allclose(q.kl_to_standard_normal(), expected)
    assert torch.allclose(q.kl(StandardNormal(3)), expected)
    q3 = DiagonalGaussian(mu.expand(4, 2, 3), torch.zeros(4, 2, 3))  # a leading sample axis, as importance uses
    assert torch.allclose(q3.kl_to_standard_normal(), expected.expand(4, 2))
    assert torch.allclose(q3.kl(StandardNormal(3)), expected.expand(4, 2))
    with pytest.raises(NotImplementedError, match="no closed-form KL between DiagonalGaussian and Gaussian"):
        q.kl(Gaussian(mu, torch.zeros(2, 3)))


def test_register_kl_registers_the_function_for_the_exact_pair():
    class Q:
        pass

    class P:
        pass

    fn = register_kl(Q, P)(lambda q, p: torch.ones(2) * p.scale)
    p = P()
    p.scale = 3.0
    assert torch.equal(analytic_kl_per_dim(Q(), p), torch.full((2,), 3.0))  # q and p both reach the function
    assert fn(None, p).shape == (2,)
    assert analytic_kl_per_dim(P(), Q()) is None


# --- distributions: samplers ------------------------------------------------------------------------

def test_bernoulli_sample_thresholds_the_uniform_draw_strictly():
    logits = torch.tensor([[[0.0, 50.0, -50.0]]], dtype=torch.float64)  # p = 1/2, ~1, ~0; (1, 1, 3)
    src = FixedNoise(0.5)
    x = Bernoulli(logits).sample(src)
    assert x.tolist() == [[[0.0, 1.0, 0.0]]] and x.dtype == torch.float64  # u = 1/2 is not < p = 1/2
    assert src.calls == [("uniform", (1, 1, 3), -2, CPU, torch.float64)]
    Bernoulli(torch.zeros(2, 1, 3, 4), event_ndim=3).sample(src)
    assert src.calls[-1][2] == -4


def test_bernoulli_sample_uses_the_generator():
    logits = torch.zeros(64)
    assert torch.equal(Bernoulli(logits).sample(seeded(3)), Bernoulli(logits).sample(seeded(3)))
    assert torch.equal(Bernoulli(logits).sample(seeded(3)), (torch.rand(64, generator=seeded(3)) < 0.5).float())


def test_gaussian_sample_is_mean_plus_sigma_eps():
    mean = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    log_var = torch.log(torch.tensor([[4.0, 0.25]], dtype=torch.float64))
    src = FixedNoise(1.0)
    x = Gaussian(mean, log_var).sample(src)
    assert torch.allclose(x, torch.tensor([[2.5, -0.5]], dtype=torch.float64)) and x.dtype == torch.float64
    assert src.calls == [("normal", (1, 2), -2, CPU, torch.float64)]
    Gaussian(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), event_ndim=3).sample(src)
    assert src.calls[-1][2] == -4
    expected = mean + 2 * torch.randn(1, 2, generator=seeded(5), dtype=torch.float64)
    assert torch.allclose(Gaussian(mean, torch.full_like(mean, math.log(4.0))).sample(seeded(5)), expected)


def test_gaussian_std_and_clamp():
    g = Gaussian(torch.zeros(3), torch.tensor([-2.0, 0.0, 2.0]), log_var_bounds=(-2.0, 2.0))
    assert torch.allclose(g.std, torch.exp(torch.tensor([-1.0, 0.0, 1.0])))
    assert g.at_clamp().tolist() == [True, False, True]
    assert Gaussian(torch.zeros(3), torch.zeros(3)).at_clamp() is None


def logistic_quantile(mean: float, scale: float, u: float) -> float:
    """The 8-bit value DiscretizedLogistic.sample gives for uniform draw u."""
    x = mean + scale * (math.log(u) - math.log1p(-u))
    return round(min(max(x, 0.0), 1.0) * 255.0) / 255.0


@pytest.mark.parametrize("u, clamped", [(0.0, 1e-6), (1.0, 1 - 1e-6), (0.9, 0.9)])
def test_discretized_logistic_sample_is_the_rounded_logistic_quantile(u, clamped):
    mean = torch.tensor([[0.5]], dtype=torch.float64)
    log_scale = torch.full_like(mean, math.log(0.01))
    src = FixedNoise(u)
    x = DiscretizedLogistic(mean, log_scale).sample(src)
    assert float(x) == pytest.approx(logistic_quantile(0.5, 0.01, clamped)) and x.dtype == torch.float64
    assert src.calls == [("uniform", (1, 1), -2, CPU, torch.float64)]
    DiscretizedLogistic(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), event_ndim=3).sample(src)
    assert src.calls[-1][2] == -4


def test_discretized_logistic_sample_uses_the_generator():
    d = DiscretizedLogistic(torch.full((50,), 0.5), torch.full((50,), math.log(0.1)))
    u = torch.rand(50, generator=seeded(2)).clamp(1e-6, 1 - 1e-6)
    expected = ((0.5 + 0.1 * (u.log() - (-u).log1p())).clamp(0, 1) * 255).round() / 255
    assert torch.allclose(d.sample(seeded(2)), expected)


# --- importance: the fast path's pieces ---------------------------------------------------------------

def small_vae(seed: int = 0, dtype=torch.float32, **kw):
    from aevb.config import ModelConfig
    from aevb.models import VAE

    torch.manual_seed(seed)
    return VAE(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), activation="tanh", latent_dim=2, **kw)).to(dtype).eval()


def test_use_onednn_follows_gemm_device_and_dtype():
    from aevb.importance import use_onednn
    from aevb.nets import onednn_linear_works

    works = onednn_linear_works()
    f32, f64 = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    assert use_onednn("auto", f32) is works and use_onednn("onednn", f32) is works
    assert use_onednn("torch", f32) is False and use_onednn("auto", f64) is False
    assert use_onednn("auto", torch.zeros(1, device="meta")) is False
    with pytest.raises(RuntimeError, match=r"^oneDNN's linear is not usable here \(needs float32 on a CPU build"):
        use_onednn("onednn", f64)
    with pytest.raises(ValueError, match=r"^gemm must be 'auto', 'onednn' or 'torch'; got 'blas'$"):
        use_onednn("blas", f32)


def test_log_cosh_sum_is_exact_for_many_pixels():
    from aevb.importance import LOG_GROUP, log_cosh_sum

    # zero logits: log(2 cosh 0) = log 2 per pixel. 160 groups of sigmoid(0) = 1/2 multiplied across
    # groups instead of within one would underflow float32 (2^-160)
    d = LOG_GROUP * 160 + 3
    assert torch.allclose(log_cosh_sum(torch.zeros(2, d)), torch.full((2,), d * math.log(2)), rtol=1e-6)
    logits = torch.tensor([[3.0, -1.0, 0.5] * 7])  # 21 pixels: one group and a remainder
    expected = torch.log(2 * torch.cosh(logits / 2)).sum(-1)
    assert torch.allclose(log_cosh_sum(logits.clone()), expected, atol=1e-5)


def record_calls(monkeypatch, module, name):
    """Replace module.name by a wrapper that records each call's arguments; returns the list."""
    calls, fn = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return fn(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("onednn", [False, True])
def test_bernoulli_mlp_log_weights_passes_the_gemm_choice_to_every_layer(monkeypatch, onednn):
    from aevb import importance
    from aevb.nets import onednn_linear_works

    if onednn and not onednn_linear_works():
        pytest.skip("oneDNN's fused linear is not usable here")
    model = small_vae()
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5), generator=seeded(0))
    mu, log_var = torch.randn(3, 2, generator=seeded(1)), torch.randn(3, 2, generator=seeded(2))
    eps = torch.randn(3, 5, 2, generator=seeded(3))
    prep = importance.bernoulli_prep(model.decoder, x, mu, log_var)
    layers = record_calls(monkeypatch, importance, "dense_layer")
    lw = (importance.bernoulli_mlp_log_weights(model.decoder, prep, eps, onednn) if onednn
          else importance.bernoulli_mlp_log_weights(model.decoder, prep, eps))
    assert [call[0][3] for call in layers] == [onednn, onednn]  # the hidden layer, then the logits
    expected = importance.generic_log_weights(model, x, mu, log_var, eps)
    assert torch.allclose(lw, expected.double(), atol=1e-4)


def test_bernoulli_prep_centres_x_in_the_decoders_dtype():
    from aevb.importance import bernoulli_prep

    model = small_vae(dtype=torch.float64)
    x = torch.ones(2, 1, 4, 4)  # float32 images, float64 decoder
    prep = bernoulli_prep(model.decoder, x, torch.zeros(2, 2, dtype=torch.float64),
                          torch.zeros(2, 2, dtype=torch.float64))
    w, b = model.decoder.mean.weight, model.decoder.mean.bias
    assert torch.allclose(prep.u, 0.5 * w.sum(0).expand(2, -1)) and torch.allclose(prep.c, 0.5 * b.sum().expand(2))


def test_draw_noise_draws_the_chunk_on_the_parameters_device_and_dtype():
    from aevb.importance import draw_noise

    # (images, samples, Z) in one call
    eps = draw_noise(seeded(4), 3, 4, 2, torch.zeros(1, dtype=torch.float64))
    assert torch.equal(eps, torch.randn(3, 4, 2, generator=seeded(4), dtype=torch.float64))
    eps = draw_noise(seeded(4), 3, 4, 2, torch.zeros(1, device="meta"))
    assert eps.device.type == "meta" and eps.dtype == torch.float32


def test_image_log_weights_chunks_cut_k_samples_and_take_the_fast_path(monkeypatch):
    from aevb import importance

    model = small_vae()
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5), generator=seeded(0))
    mu, log_var = torch.randn(3, 2, generator=seeded(1)), torch.zeros(3, 2)
    plan = importance.ChunkPlan(images=2, samples=2, row_bytes=1)
    fast = record_calls(monkeypatch, importance, "bernoulli_mlp_log_weights")
    chunks = list(importance._image_log_weights_chunks(model, x, mu, log_var, 5, plan, seeded(5), True, True, None))
    assert [(sl.start, sl.stop, tuple(lw.shape)) for sl, lw in chunks] == [
        (0, 2, (2, 2)), (0, 2, (2, 2)), (0, 2, (2, 1)), (2, 3, (1, 2)), (2, 3, (1, 2)), (2, 3, (1, 1))]
    assert len(fast) == 6 and all(call[0][3] is True for call in fast)
    # the same noise through the model's own log_prob gives the same log-weights
    slow = list(importance._image_log_weights_chunks(model, x, mu, log_var, 5, plan, seeded(5), False, False, None))
    assert len(fast) == 6
    for (_, lw), (_, ref) in zip(chunks, slow):
        assert torch.allclose(lw, ref.double(), atol=1e-4)


# --- flows --------------------------------------------------------------------------------------------

def planar_step(u: float, w: float, b: float, dtype=torch.float64):
    """A one-dimensional, one-step planar flow whose (u, w, b) do not depend on the context."""
    from aevb.flows import PlanarFlow

    flow = PlanarFlow(1, 1, 1).to(dtype)
    with torch.no_grad():
        flow.amortize.weight.zero_()
        flow.amortize.bias.copy_(torch.tensor([u, w, b], dtype=dtype))
    return flow


def test_planar_inverse_clamps_the_log_determinant_as_forward_does():
    # w.u = -16.1: u' = -1 + 1e-7, so at z = 0 (tanh = 0) 1 + w.u' tanh' = 1e-7, below the clamp 1e-6
    flow = planar_step(-16.1, 1.0, 0.0)
    h = torch.zeros(1, 1, dtype=torch.float64)
    with torch.no_grad():
        y, ld_forward = flow(torch.zeros(1, 1, dtype=torch.float64), h)
        z, ld_inverse = flow.inverse(y, h)
    assert float(ld_forward) == pytest.approx(math.log(1e-6), rel=1e-6)
    assert float(ld_inverse) == pytest.approx(math.log(1e-6), rel=1e-6)
    assert abs(float(z)) < 1e-12


@pytest.mark.parametrize("name", ["planar", "iaf"])
def test_flow_inverse_keeps_the_dtype_and_device(name):
    from aevb.flows import build_flow

    torch.manual_seed(0)
    flow = build_flow(name, 3, 2, 8)
    y, h = torch.randn(4, 2, 3), torch.randn(2, 3)
    z, logdet = flow.inverse(y, h)
    assert z.dtype == logdet.dtype == torch.float32 and z.shape == (4, 2, 3) and logdet.shape == (4, 2)
    y_again, ld_forward = flow(z, h)
    assert torch.allclose(y_again, y, atol=1e-4) and torch.allclose(ld_forward, logdet, atol=1e-4)
    meta = build_flow(name, 3, 2, 8).to("meta")
    z, logdet = meta.inverse(y.to("meta"), h.to("meta"))
    assert z.device.type == logdet.device.type == "meta"
    # no steps: the identity, with a log-determinant of 0 in the latent's dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a planar flow's empty (0-step) parameter layer
        identity = build_flow(name, 3, 0, 8).double()
    z, logdet = identity.inverse(y.double(), h.double())
    assert torch.equal(z, y.double()) and logdet.dtype == torch.float64 and not logdet.any()
    z, logdet = identity(y.double(), h.double())  # the forward pass too (a planar flow of 0 steps crashed)
    assert torch.equal(z, y.double()) and logdet.shape == (4, 2) and not logdet.any()


def test_flow_posterior_rsample_draws_n_samples_from_the_generator():
    from aevb.flows import FlowPosterior, build_flow

    torch.manual_seed(0)
    flow = build_flow("planar", 2, 2, 4)
    q = FlowPosterior(DiagonalGaussian(torch.zeros(3, 2), torch.zeros(3, 2)), flow, torch.randn(3, 2))
    z = q.rsample(5, seeded(7))
    assert z.shape == (5, 3, 2)
    assert torch.equal(z, q.rsample_with_log_prob(5, seeded(7))[0])
    assert torch.equal(z, flow(torch.randn(5, 3, 2, generator=seeded(7)), q.context)[0])


def test_iaf_step_is_autoregressive_in_its_order_and_uses_context_and_bias():
    from aevb.flows import IAF_GATE_BIAS, IAFStep
    import torch.nn.functional as F

    torch.manual_seed(0)
    step = IAFStep(4, 8, 3, reverse=False)
    with torch.no_grad():
        for p in step.parameters():
            p.normal_(0, 0.5)  # the output layer starts at zero: make the step non-trivial
    z, h = torch.randn(1, 4), torch.randn(1, 3)
    jac = torch.autograd.functional.jacobian(lambda v: step(v, h)[0], z)[0, :, 0, :]  # (4, 4): dy_i / dz_j
    strictly_upper = torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)
    assert not jac[strictly_upper].any()  # y_i reads only the z_j before it
    strictly_lower = torch.tril(torch.ones(4, 4, dtype=torch.bool), -1)
    assert (jac[strictly_lower].abs() > 1e-6).all()  # ... and all of them
    # m, log g = MADE(z) with the context added to the first layer (paper: IAF's h input)
    a = F.elu(F.linear(z, step.inp.weight * step.inp.mask, step.inp.bias) + h @ step.context.weight.T)
    m, s = F.linear(a, step.out.weight * step.out.mask, step.out.bias).chunk(2, -1)
    log_g = F.logsigmoid(s + IAF_GATE_BIAS) - math.log(torch.sigmoid(torch.tensor(IAF_GATE_BIAS)))
    g = torch.exp(log_g)
    y, logdet = step(z, h)
    assert torch.allclose(y, g * z + (1 - g) * m, atol=1e-6) and torch.allclose(logdet, log_g.sum(-1), atol=1e-6)
    assert "inp.mask" not in step.state_dict() and "out.mask" not in step.state_dict()  # rebuilt from the sizes


def test_masked_linear_applies_mask_and_bias():
    from aevb.flows import MaskedLinear

    layer = MaskedLinear(2, 2, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    assert layer(torch.tensor([[1.0, 1.0]])).tolist() == [[1.5, 6.5]]
    assert list(layer.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("name", ["planar", "iaf"])
def test_flow_forward_is_not_the_identity_and_keeps_dtype_and_device(name):
    from aevb.flows import build_flow

    torch.manual_seed(1)
    flow = build_flow(name, 3, 2, 8)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.3)
    z, h = torch.randn(4, 2, 3), torch.randn(2, 3)
    y, logdet = flow(z, h)
    assert (y - z).abs().max() > 1e-2 and logdet.abs().max() > 1e-3
    z_back, logdet_back = flow.inverse(y, h)
    assert torch.allclose(z_back, z, atol=1e-4) and torch.allclose(logdet_back, logdet, atol=1e-4)
    y, logdet = build_flow(name, 3, 2, 8).to("meta")(z.to("meta"), h.to("meta"))
    assert y.device.type == logdet.device.type == "meta"
    if name == "iaf":  # no steps: the identity, with a log-determinant of 0 in the latent's dtype
        y, logdet = build_flow(name, 3, 0, 8).double()(z.double(), h.double())
        assert torch.equal(y, z.double()) and logdet.dtype == torch.float64 and not logdet.any()


def test_planar_step_parameters_make_every_step_invertible():
    from aevb.flows import PlanarFlow

    torch.manual_seed(2)
    flow = PlanarFlow(3, 2, 4)
    with torch.no_grad():
        flow.amortize.weight.mul_(0.1)  # |w| < 1, so that the 1e-12 floor of |w|^2 is not reached
        flow.amortize.bias.mul_(0.1)
    h = torch.randn(5, 4)
    u_hat, w, b = flow.step_parameters(h)
    assert u_hat.shape == w.shape == (5, 2, 3) and b.shape == (5, 2)
    p = flow.amortize(h).view(5, 2, 7)
    u = p[..., :3]
    wu = (w * u).sum(-1)
    # appendix A.1: w.u' = -1 + softplus(w.u), for each image and step
    assert torch.allclose((w * u_hat).sum(-1), -1 + torch.nn.functional.softplus(wu), atol=1e-5)
    # u' - u is parallel to w
    along = ((u_hat - u) * w).sum(-1, keepdim=True) / (w * w).sum(-1, keepdim=True)
    assert torch.allclose(u_hat - u, along * w, atol=1e-5)


# --- priors -------------------------------------------------------------------------------------------

def test_standard_normal_sample_asks_for_n_rows_on_device_and_dtype():
    src = FixedNoise(0.5)
    z = StandardNormal(3).sample(2, src)
    assert z.dtype == torch.float32 and float(z[0, 0]) == 0.5
    StandardNormal(3).sample(2, src, device="cpu", dtype=torch.float64)
    assert src.calls == [("normal", (2, 3), 0, None, torch.float32), ("normal", (2, 3), 0, "cpu", torch.float64)]


def test_mixture_log_prob_matches_the_mixture_density_in_float64():
    from aevb.priors import mixture_log_prob

    mu = torch.tensor([[0.0, 1.0], [2.0, -1.0], [0.5, 0.5]])  # float32 components, float64 z
    log_var = torch.tensor([[0.0, 0.5], [-0.5, 0.2], [1.0, -1.0]])
    z = torch.tensor([[[0.3, -0.2]], [[1.5, 2.0]]], dtype=torch.float64)  # (2, 1, 2)
    comps = torch.distributions.Normal(mu.double(), torch.exp(0.5 * log_var.double()))
    expected = torch.logsumexp(comps.log_prob(z[..., None, :]).sum(-1), -1) - math.log(3)  # (2, 1)
    got = mixture_log_prob(z, mu, log_var)
    assert got.shape == (2, 1) and got.dtype == torch.float64
    assert torch.allclose(got, expected, atol=1e-10)


def test_uniform_indices_are_phi_of_one_normal_draw_per_row():
    from aevb.priors import uniform_indices

    src = FixedNoise(1.5)  # Phi(1.5) = 0.9332
    idx = uniform_indices(4, 10, src, CPU)
    assert idx.tolist() == [9, 9, 9, 9] and src.calls == [("normal", (4, 1), -2, CPU, torch.float64)]
    assert uniform_indices(2, 10, FixedNoise(-1.5), CPU).tolist() == [0, 0]
    assert uniform_indices(2, 10, FixedNoise(0.0), CPU).tolist() == [5, 5]
    assert uniform_indices(3, 7, FixedNoise(40.0), CPU).tolist() == [6, 6, 6]  # Phi = 1 exactly: the last index
    assert uniform_indices(3, 7, seeded(), torch.device("meta")).device.type == "meta"


def test_sample_mixture_draws_mu_plus_sigma_eps_of_the_chosen_component():
    from aevb.priors import sample_mixture

    comps = DiagonalGaussian(torch.tensor([[0.0, 0.0], [10.0, -10.0]], dtype=torch.float64),
                             torch.log(torch.tensor([[1.0, 1.0], [4.0, 0.25]], dtype=torch.float64)))
    src = FixedNoise(1.0)
    z = sample_mixture(comps, 3, src, None, None)  # eps = 1, index Phi(1) * 2 -> 1
    assert z.dtype == torch.float32 and z.tolist() == [[12.0, -9.5]] * 3
    # both draws name the batch axis, as a sharded noise source needs (it raised before)
    assert src.calls == [("normal", (3, 1), -2, CPU, torch.float64), ("normal", (3, 2), -2, CPU, torch.float32)]
    src = FixedNoise(1.0)
    z = sample_mixture(comps, 3, src, "cpu", torch.float64)
    assert z.dtype == torch.float64 and z.tolist() == [[12.0, -9.5]] * 3 and src.calls[-1][4] == torch.float64
    meta = DiagonalGaussian(comps.mu.to("meta"), comps.log_var.to("meta"))
    assert sample_mixture(meta, 3, seeded(), None, None).device.type == "meta"
    assert sample_mixture(comps, 3, seeded(), "meta", None).device.type == "meta"


def test_learned_priors_sample_where_and_as_asked_and_describe_themselves():
    from aevb.priors import MixtureOfGaussians

    torch.manual_seed(0)
    mog = MixtureOfGaussians(2, 3)
    model = small_vae(prior="vamp", prior_components=5)
    for prior in (mog, model.prior):
        assert prior.sample(4, seeded(), "meta", torch.float64).device.type == "meta"
        z = prior.sample(4, seeded(), dtype=torch.float64)
        assert z.shape == (4, 2) and z.dtype == torch.float64
    assert repr(mog) == "MixtureOfGaussians(latent_dim=2, components=3)"
    assert model.prior.extra_repr() == "latent_dim=2, components=5, bounded=True"


def test_vamp_prior_defaults_and_pseudo_inputs():
    from aevb.priors import PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD, VampPrior

    torch.manual_seed(0)
    prior = VampPrior(400, (1, 4, 4), 2, posterior_at=lambda u, c: None)
    assert prior.bounded is True and prior.label_logits is None
    a = prior.pseudo_inputs.detach()
    assert abs(float(a.mean()) - PSEUDO_INPUT_MEAN) < 1e-3 and abs(float(a.std()) - PSEUDO_INPUT_STD) < 1e-3
    u, labels = prior.inputs()
    assert torch.allclose(u, torch.sigmoid(a)) and labels is None
    raw = VampPrior(3, (1, 2, 2), 2, posterior_at=lambda u, c: None, bounded=False, num_classes=4)
    u, labels = raw.inputs()
    assert torch.equal(u, raw.pseudo_inputs) and torch.allclose(labels, torch.full((3, 4), 0.25))


# --- importance: planning -----------------------------------------------------------------------------

def test_plan_chunks_exact_plans_and_errors():
    from aevb.importance import ChunkPlan, plan_chunks

    plan = plan_chunks(10, 10, 3, 100)  # 33 rows: 3 whole images of 10 samples
    assert plan == ChunkPlan(images=3, samples=10, row_bytes=3) and type(plan.images) is int
    assert plan_chunks(10, 5, 3, 45) == ChunkPlan(images=1, samples=10, row_bytes=3)  # 15 rows: one image
    assert plan_chunks(10, 10, 3, 100, max_samples=50) == plan  # a cap above k changes nothing
    assert plan_chunks(10, 1, 1, 10**6) == ChunkPlan(images=1, samples=10, row_bytes=1)
    assert plan_chunks(5000, 2, 1, 1100) == ChunkPlan(images=1, samples=1000, row_bytes=1)
    for k, n, row_bytes in [(0, 1, 1), (1, 0, 1), (1, 1, 0)]:
        with pytest.raises(ValueError, match=rf"^need k, n_images, row_bytes >= 1; got {k}, {n}, {row_bytes}$"):
            plan_chunks(k, n, row_bytes)


def test_decoder_row_bytes_counts_layers_temporaries_and_noise():
    from aevb.importance import decoder_row_bytes

    # float64 (the layers run as modules): outputs 8 + 8 + 16 values, 3 temporaries of 16, noise 2 x 2
    assert decoder_row_bytes(small_vae(dtype=torch.float64)) == 8 * (8 + 8 + 16) + 3 * 16 * 8 + 2 * 2 * 8
    # float16: the temporaries are counted at 4 bytes or more a value
    assert decoder_row_bytes(small_vae(dtype=torch.float16)) == 2 * (8 + 8 + 16) + 3 * 16 * 4 + 2 * 2 * 2
    conditional = small_vae(dtype=torch.float64, num_classes=3)
    assert decoder_row_bytes(conditional) == 672
    assert decoder_row_bytes(conditional.to("meta")) == 672  # the probe runs where the model is


# --- objectives and the discretized logistic ----------------------------------------------------------

def test_ae_loss_encodes_x_in_and_scores_x():
    from aevb.config import ModelConfig
    from aevb.models import build_model
    from aevb.objectives import ae_loss

    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=2, family="ae")).eval()
    x = torch.bernoulli(torch.full((3, 16), 0.5), generator=seeded(0))
    x_in = 1 - x
    terms = ae_loss(model, x, x_in=x_in, reduction="none")
    expected = model.decode(model.embed(x_in.view(3, 1, 4, 4), None), None).log_prob(x.view(3, 1, 4, 4))
    assert set(terms) == {"loss", "reconstruction"}
    assert torch.allclose(terms["reconstruction"], expected) and torch.allclose(terms["loss"], -expected.mean())
    assert not torch.allclose(ae_loss(model, x, reduction="none")["reconstruction"], expected)


def test_discretized_logistic_clamps_the_log_scale_and_broadcasts_x():
    d = DiscretizedLogistic(torch.full((3,), 0.5), torch.tensor([-20.0, 0.0, 20.0]))
    assert d.log_scale.tolist() == [DiscretizedLogistic.LOG_SCALE_MIN, 0.0, DiscretizedLogistic.LOG_SCALE_MAX]
    assert d.at_clamp().tolist() == [True, False, True]
    x = torch.tensor([[0.0, 0.5, 1.0], [128 / 255, 1.0, 0.0]])  # two images scored against one mean
    lp = d.log_prob(x)
    assert lp.shape == (2,)
    assert torch.allclose(lp, torch.stack([d.log_prob(x[0]), d.log_prob(x[1])]))


def test_objectives_name_a_bad_setting_in_one_line():
    from aevb.objectives import elbo, kl_terms, reduce_terms

    with pytest.raises(ValueError, match=r"^kl must be 'analytic' or 'mc'; got 'exact'$"):
        kl_terms(None, None, None, None, kl="exact")
    with pytest.raises(ValueError, match=r"^kl must be 'analytic' or 'mc'; got 'exact'$"):
        elbo(None, None, kl="exact")
    with pytest.raises(ValueError, match=r"^reduction must be 'mean' or 'none'; got 'sum'$"):
        reduce_terms({"loss": torch.zeros(())}, "sum")


# --- the training step (aevb.train: guarded_step and what it calls) --------------------------------------

def _step_setup(w=(1.0, 2.0)):
    """A two-weight 'model' w and a third parameter the loss never reads; SGD without momentum."""
    w = torch.nn.Parameter(torch.tensor(w))
    unused = torch.nn.Parameter(torch.zeros(2))
    return w, unused, torch.optim.SGD([w, unused], lr=0.5)


def _loss_of(w, a=(3.0, 4.0), record=None):
    """step_fn with loss a . w, so the gradient is a (norm 5 for (3, 4)); ``record`` keeps its arguments."""
    a = torch.tensor(a)

    def step_fn(x, noise, beta=1.0, y=None, **kw):
        if record is not None:
            record.append({"x": x, "noise": noise, "beta": beta, "y": y, **kw})
        return {"loss": (a * w).sum() * x.sum(), "term": (a * w).sum().detach()}
    return step_fn


def test_guarded_step_applies_sgd_and_passes_the_objective_its_arguments():
    from aevb.config import TrainConfig
    from aevb.train import Guard, guarded_step

    w, unused, opt = _step_setup()
    guard, calls = Guard.on(CPU), []
    x, y, x_in, noise = torch.ones(1), torch.tensor([2]), torch.zeros(1), object()
    terms, bad = guarded_step(_loss_of(w, record=calls), opt, [w, unused], x, y, noise, 0.25, TrainConfig(), guard,
                              x_in=x_in, objective_kw={"step": 7})
    assert not bool(bad) and bad.dtype == torch.bool
    assert torch.equal(w.detach(), torch.tensor([1.0 - 0.5 * 3, 2.0 - 0.5 * 4]))  # w - lr * a
    assert unused.grad is None and torch.equal(unused.detach(), torch.zeros(2))  # grads set to None, not zeroed
    assert terms["term"].item() == 11.0
    (call,) = calls
    assert call["x"] is x and call["y"] is y and call["noise"] is noise and call["beta"] == 0.25
    assert call["x_in"] is x_in and call["step"] == 7
    assert (int(guard.skipped), int(guard.consecutive), float(guard.bad_norm)) == (0, 0, 0.0)
    # a second step uses this step's gradient only (zero_grad before backward), not the sum of both
    calls.clear()
    guarded_step(_loss_of(w, record=calls), opt, [w, unused], x, None, noise, 1.0, TrainConfig(), guard)
    assert torch.equal(w.detach(), torch.tensor([1.0 - 2 * 0.5 * 3, 2.0 - 2 * 0.5 * 4]))
    assert "x_in" not in calls[0] and "step" not in calls[0]


def test_guarded_step_skips_above_the_norm_limit_and_counts_in_the_guard():
    from aevb.config import TrainConfig
    from aevb.train import Guard, guarded_step

    w, unused, opt = _step_setup()
    guard, x = Guard.on(CPU), torch.ones(1)
    _, bad = guarded_step(_loss_of(w), opt, [w, unused], x, None, None, 1.0, TrainConfig(skip_grad_norm=5.0), guard)
    assert not bool(bad)  # a norm of exactly 5 is not above the limit 5
    start = w.detach().clone()
    for k in (1, 2):
        _, bad = guarded_step(_loss_of(w), opt, [w, unused], x, None, None, 1.0, TrainConfig(skip_grad_norm=4.9), guard)
        assert bool(bad) and torch.equal(w.detach(), start)  # skipped: the weights stay
        assert (int(guard.skipped), int(guard.consecutive)) == (k, k)
        assert guard.bad_norm.item() == pytest.approx(5.0, rel=1e-6)
    _, bad = guarded_step(_loss_of(w, a=(0.6, 0.8)), opt, [w, unused], x, None, None, 1.0,
                          TrainConfig(skip_grad_norm=4.9), guard)
    assert not bool(bad) and (int(guard.skipped), int(guard.consecutive)) == (2, 0)  # the run of skips ends
    assert guard.bad_norm.item() == pytest.approx(5.0, rel=1e-6)  # the last skipped step's norm is kept
    _, bad = guarded_step(_loss_of(w, a=(float("nan"), 1.0)), opt, [w, unused], x, None, None, 1.0, TrainConfig(),
                          guard)
    assert bool(bad) and math.isnan(guard.bad_norm.item()) and int(guard.consecutive) == 1


def test_guarded_step_clips_the_gradient_to_the_norm_given():
    from aevb.config import TrainConfig
    from aevb.train import Guard, guarded_step

    w, unused, opt = _step_setup()
    guard = Guard.on(CPU)
    _, bad = guarded_step(_loss_of(w), opt, [w, unused], torch.ones(1), None, None, 1.0,
                          TrainConfig(clip_grad_norm=1.0), guard)
    assert not bool(bad)
    assert torch.allclose(w.detach(), torch.tensor([1.0 - 0.5 * 0.6, 2.0 - 0.5 * 0.8]), atol=1e-6)  # w - lr a / |a|
    _, bad = guarded_step(_loss_of(w), opt, [w, unused], torch.ones(1), None, None, 1.0,
                          TrainConfig(clip_grad_norm=1.0, skip_grad_norm=4.0), guard)
    assert bool(bad) and guard.bad_norm.item() == pytest.approx(5.0)  # the norm before clipping decides


def test_guarded_step_on_a_fused_optimizer_skips_on_the_device():
    """device_guard: the fused kernel reads the decision as found_inf; a skipped step leaves the weights,
    the moments and the step count, a good one is the unfused optimizer's step."""
    from aevb.config import TrainConfig
    from aevb.train import Guard, guarded_step

    w, unused, _ = _step_setup()
    fused = torch.optim.Adam([w, unused], lr=0.1, fused=True)
    w2 = torch.nn.Parameter(w.detach().clone())
    plain = torch.optim.Adam([w2], lr=0.1)
    guard, x, t = Guard.on(CPU), torch.ones(1), TrainConfig(skip_grad_norm=4.9)
    _, bad = guarded_step(_loss_of(w), fused, [w, unused], x, None, None, 1.0, t, guard, device_guard=True)
    assert bool(bad) and torch.equal(w.detach(), torch.tensor([1.0, 2.0]))
    assert fused.state[w]["step"].item() == 0 and torch.equal(fused.state[w]["exp_avg"], torch.zeros(2))
    assert not hasattr(fused, "found_inf") and not hasattr(fused, "grad_scale")  # removed after the step
    _, bad = guarded_step(_loss_of(w, a=(0.6, 0.8)), fused, [w, unused], x, None, None, 1.0, t, guard,
                          device_guard=True)
    guarded_step(_loss_of(w2, a=(0.6, 0.8)), plain, [w2], x, None, None, 1.0, t, Guard.on(CPU))
    assert not bool(bad) and fused.state[w]["step"].item() == 1
    assert torch.allclose(w.detach(), w2.detach(), atol=1e-7) and not torch.equal(w.detach(), torch.tensor([1.0, 2.0]))


def test_guarded_step_runs_the_objective_under_the_autocast_dtype_given():
    from aevb.config import TrainConfig
    from aevb.train import Guard, guarded_step

    lin = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    seen = []

    def step_fn(x, noise, beta=1.0, y=None):
        out = lin(x)
        seen.append(out.dtype)
        return {"loss": out.float().sum()}
    for dtype, expected in ((torch.bfloat16, torch.bfloat16), (None, torch.float32)):
        guarded_step(step_fn, opt, list(lin.parameters()), torch.ones(3, 2), None, None, 1.0, TrainConfig(),
                     Guard.on(CPU), autocast_dtype=dtype)
        assert seen.pop() == expected


def test_the_gradient_scaler_scales_the_loss_and_steps_with_the_unscaled_gradient():
    from aevb.config import TrainConfig
    from aevb.train import Guard, guarded_step

    w, unused, opt = _step_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _, bad = guarded_step(_loss_of(w), opt, [w, unused], torch.ones(1), None, None, 1.0,
                          TrainConfig(skip_grad_norm=6.0), Guard.on(CPU), scaler=scaler)
    assert not bool(bad)  # the norm compared is the unscaled 5, not 5 * 1024
    assert torch.equal(w.detach(), torch.tensor([1.0 - 0.5 * 3, 2.0 - 0.5 * 4]))


def test_guard_counters_start_at_zero_on_the_device_as_int64_and_float():
    from aevb.train import Guard

    g = Guard.on(CPU)
    for counter in (g.skipped, g.consecutive):
        assert counter.shape == () and counter.dtype == torch.int64 and counter.item() == 0
    assert g.bad_norm.shape == () and g.bad_norm.dtype == torch.float32 and g.bad_norm.item() == 0.0
    assert g.skipped is not g.consecutive
    g.record(torch.tensor(True), torch.tensor(7.0, dtype=torch.float64))
    assert g.bad_norm.dtype == torch.float32 and g.bad_norm.item() == 7.0 and g.skipped.item() == 1
    g.record(torch.tensor(False), torch.tensor(3.0))
    assert (g.skipped.item(), g.consecutive.item(), g.bad_norm.item()) == (1, 0, 7.0)


def test_make_objective_binds_the_settings_of_the_objective_named():
    from functools import partial

    from aevb.config import ConfigError
    from aevb.models import build_model
    from aevb.objectives import OBJECTIVES
    from aevb.runconfig import apply_overrides, default_config
    from aevb.train import make_objective

    cfg = apply_overrides(default_config("digits"), {"hidden": (8,), "latent_dim": 2})
    f = make_objective(apply_overrides(cfg, {"objective": "iwae", "iwae_k": 7}))
    assert isinstance(f, partial) and f.func is OBJECTIVES["iwae"] and f.keywords == {"k": 7}
    f = make_objective(apply_overrides(cfg, {"samples": 3, "estimator": "mc", "free_bits": 0.5}))
    assert f.func is OBJECTIVES["elbo"] and f.keywords == {"samples": 3, "kl": "mc", "free_bits": 0.5}
    ae = apply_overrides(cfg, {"family": "ae", "likelihood": "gaussian_fixed"})
    caps = build_model(ae.model).capabilities
    assert make_objective(ae) is OBJECTIVES[caps.default_objective]  # no settings: the function itself
    assert make_objective(ae, caps) is OBJECTIVES[caps.default_objective]
    with pytest.raises(ConfigError, match=r"^objective 'iwae' does not apply to the ae model, which trains on "):
        make_objective(apply_overrides(ae, {"objective": "iwae"}))
    from aevb.wake_sleep import wake_sleep_step_loss
    assert make_objective(apply_overrides(cfg, {"algorithm": "wake-sleep"})) is wake_sleep_step_loss
    with pytest.raises(ConfigError, match=r"^the wake-sleep algorithm needs a recognition model q\(z\|x\) and a "
                                          r"prior; the ae model has no posterior or no prior \(use the vae family\)$"):
        make_objective(apply_overrides(ae, {"algorithm": "wake-sleep"}))
    from aevb.models import Capabilities
    ws = apply_overrides(cfg, {"algorithm": "wake-sleep"})
    for has_prior, has_posterior in ((True, False), (False, True)):  # one of the two is not enough
        caps = Capabilities(has_prior=has_prior, has_posterior=has_posterior, conditional=False,
                            objectives=("elbo",), latent_shape=(2,))
        with pytest.raises(ConfigError, match="needs a recognition model"):
            make_objective(ws, caps)


def test_takes_argument_sees_unbound_parameters_only():
    from functools import partial

    from aevb.train import takes_argument

    def f(model, x, step=0):
        return step
    assert takes_argument(f, "step") and not takes_argument(f, "dataset_size")
    assert takes_argument(partial(f, step=3), "x")  # x is still free
    assert takes_argument(partial(f, None, None), "step")
    assert not takes_argument(math.hypot, "step") and not takes_argument(torch.add, "step")  # no signature


def test_make_optimizer_builds_the_named_optimizer_with_its_settings():
    from aevb.runconfig import apply_overrides, default_config
    from aevb.train import make_optimizer

    cfg = default_config("digits")
    for name, cls in (("adam", torch.optim.Adam), ("adagrad", torch.optim.Adagrad), ("sgd", torch.optim.SGD)):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = make_optimizer(apply_overrides(cfg, {"optimizer": name, "lr": 0.25, "weight_decay": 0.125}), iter([p]))
        assert type(opt) is cls and opt.param_groups[0]["params"] == [p]  # a generator of parameters is fine
        group = opt.param_groups[0]
        assert (group["lr"], group["weight_decay"]) == (0.25, 0.125)
        assert group.get("momentum", 0.9 if name == "sgd" else None) == (0.9 if name == "sgd" else None)
        assert group["fused"] is True  # CPU float32 has fused kernels for all three
    half = torch.nn.Parameter(torch.zeros(3, dtype=torch.float16))
    try:
        torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1, dtype=torch.float16))], fused=True).step()
        fused_half = True
    except (RuntimeError, TypeError, ValueError):
        fused_half = False
    opt = make_optimizer(apply_overrides(cfg, {"optimizer": "adagrad"}), [half])
    assert bool(opt.param_groups[0]["fused"]) is fused_half


def test_fused_steps_tries_one_step_per_device_and_dtype():
    from aevb.train import _fused_steps

    made = []

    class Recorder(torch.optim.SGD):
        def __init__(self, params, fails_on=None, **kw):
            params = list(params)
            made.append((params, kw))
            self.fails_on = fails_on
            super().__init__(params, **{k: v for k, v in kw.items() if k != "fused"})

        def step(self, closure=None):
            p = self.param_groups[0]["params"][0]
            if p.dtype == torch.float64:
                raise RuntimeError("no fused kernel for float64")

    ps = [torch.zeros(2), torch.zeros(3), torch.zeros(1, dtype=torch.bfloat16)]
    assert _fused_steps(Recorder, ps, momentum=0.5)
    assert len(made) == 2  # one probe per (device, dtype), not per parameter
    for (probe,), kw in made:
        assert probe.shape == (1,) and probe.requires_grad and torch.equal(probe.grad, torch.zeros(1))
        assert probe.grad.dtype == probe.dtype and kw == {"lr": 0.0, "fused": True, "momentum": 0.5}
    assert {probe.dtype for (probe,), _ in made} == {torch.float32, torch.bfloat16}
    assert not _fused_steps(Recorder, [torch.zeros(2), torch.zeros(2, dtype=torch.float64)])

    class NoFused(torch.optim.SGD):
        def __init__(self, params, fused=None, **kw):
            raise TypeError("fused is not an argument here")
    assert not _fused_steps(NoFused, [torch.zeros(1)])

    class BadValue(torch.optim.SGD):
        def __init__(self, params, fused=None, **kw):
            raise ValueError("fused needs CUDA")
    assert not _fused_steps(BadValue, [torch.zeros(1)])


def test_binarize_draw_is_uniform_below_the_pixel_and_keeps_nan():
    from aevb.train import binarize_draw

    x = torch.tensor([[0.0, 0.25, 0.5, 1.0], [0.9, float("nan"), 0.1, 0.75]], dtype=torch.float64)
    out = binarize_draw(x, seeded(3))
    u = torch.rand(x.shape, generator=seeded(3), dtype=torch.float64)
    expected = (u < x).double()
    expected[1, 1] = float("nan")
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert torch.equal(out.nan_to_num(-1.0), expected.nan_to_num(-1.0))
    assert set(out[~out.isnan()].tolist()) <= {0.0, 1.0} and out[0, 0] == 0.0 and out[0, 3] == 1.0


def test_objective_module_calls_the_objective_with_the_model_and_its_generator():
    from aevb.train import ObjectiveModule

    model, g, seen = torch.nn.Linear(1, 1), seeded(0), []
    module = ObjectiveModule(model, lambda m, x, generator, **kw: seen.append((m, x, generator, kw)) or {"loss": x})
    x = torch.ones(2)
    assert module(x, g, beta=0.5)["loss"] is x
    assert seen == [(model, x, g, {"beta": 0.5})]


def _tiny_trainer(tmp_path, **settings):
    """A Trainer on 100 random 4x4 binary images (nothing is read from disk)."""
    from aevb.data import Dataset, Split
    from aevb.runconfig import apply_overrides, default_config
    from aevb.train import Trainer

    cfg = default_config("digits")
    cfg = apply_overrides(cfg, {"hidden": (8,), "latent_dim": 2, "batch_size": 10, "input_shape": (1, 4, 4),
                                "binarize": "none", **settings})
    x = torch.bernoulli(torch.full((100, 1, 4, 4), 0.5), generator=seeded(0))
    data = Dataset(name="tiny", train=Split(x[:80]), valid=Split(x[80:]), test=None, binary=True)
    return Trainer(cfg, tmp_path, dataset=data, progress=False)


def test_trainer_step_passes_the_kl_weight_of_the_step_and_the_family_terms(tmp_path, monkeypatch):
    trainer = _tiny_trainer(tmp_path, kl_schedule="linear", warmup_steps=8, beta=2.0)
    seen = []
    step_fn = trainer.step_fn

    def recording(x, noise, beta=1.0, y=None, **kw):
        seen.append((beta, kw, noise))
        return step_fn(x, noise, beta=beta, y=y)  # the elbo takes no step: it is only recorded
    trainer.step_fn = recording
    trainer.fast_step = None  # the autograd path's call (the hand-written step is checked in test_fastpath)
    trainer.objective_takes_step = True
    monkeypatch.setattr(trainer.model, "after_step", lambda x, y, g, bad: {"family": torch.ones(()) + bad})
    trainer.global_step = 2
    x = trainer.data.train.x[:10]
    terms, bad = trainer.step(x)
    (beta, kw, noise), = seen
    assert beta == 2.0 * 2 / 8 and kw == {"step": 2} and noise is trainer.noise
    assert not bool(bad) and terms["family"].item() == 1.0 and {"loss", "elbo", "family"} <= set(terms)


def test_check_guard_stops_at_max_skips_and_says_why(tmp_path):
    from aevb.train import TrainingDiverged

    trainer = _tiny_trainer(tmp_path, max_skips=3, skip_grad_norm=10.0)
    trainer.guard.consecutive.fill_(2)
    trainer.check_guard()  # two in a row: below the limit
    trainer.guard.consecutive.fill_(3)
    trainer.guard.bad_norm.fill_(1234.5)
    trainer.global_step = 41
    with pytest.raises(TrainingDiverged, match=r"^training stopped at step 41: the last 3 steps were skipped \(limit "
                                               r"3\) because the loss or gradient norm was 1.23e\+03 > 10; no "
                                               r"checkpoint was written yet\. Lower the learning rate, clip the "
                                               r"gradient norm, or check the data for NaN/Inf$"):
        trainer.check_guard()
    trainer.save_state()
    trainer.guard.bad_norm.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"was not finite \(NaN or Inf\); the last good checkpoint "
                                               r".*train_state\.safetensors is intact\. Lower"):
        trainer.check_guard()


# --- checkpoints (aevb.checkpoint: the weights, the optimizer and the training state) ----------------------

def test_atomic_write_replaces_the_file_with_ordinary_permissions_and_leaves_no_temporary(tmp_path):
    from aevb.checkpoint import atomic_write

    path = tmp_path / "new" / "deeper" / "f.bin"  # missing folders are made
    old = os.umask(0o027)
    try:
        atomic_write(path, b"first")
        atomic_write(path, b"second")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"second" and os.stat(path).st_mode & 0o777 == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def test_atomic_write_names_the_path_in_an_os_error_and_passes_other_errors_through(tmp_path, monkeypatch):
    from aevb.checkpoint import atomic_write

    path = tmp_path / "f.bin"

    def full(*args):
        raise OSError(28, "No space left on device", "/tmp/f.bin.xyz.tmp")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as e:
        atomic_write(path, b"data")
    assert type(e.value) is OSError and (e.value.errno, e.value.strerror, e.value.filename) == (
        28, "No space left on device", str(path))
    assert list(tmp_path.iterdir()) == []

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, b"data")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileExistsError) as e:  # a parent that is a file: the error names the path
        (tmp_path / "file").write_bytes(b"")
        atomic_write(tmp_path / "file" / "f.bin", b"x")
    assert e.value.filename == str(tmp_path / "file" / "f.bin")


def test_unwrap_finds_the_module_inside_ddp_and_compile_wrappers():
    from aevb.checkpoint import unwrap

    inner = torch.nn.Linear(1, 1)

    class Wrap(torch.nn.Module):
        def __init__(self, attr, m):
            super().__init__()
            setattr(self, attr, m)
    assert unwrap(inner) is inner
    assert unwrap(Wrap("module", Wrap("_orig_mod", Wrap("module", inner)))) is inner


def _adam_after_steps(n_params: int = 2, steps: int = 2):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
    return model, opt


def test_optimizer_state_round_trips_through_flat_tensors_and_json():
    from aevb.checkpoint import optimizer_from_flat, optimizer_to_flat

    model, opt = _adam_after_steps()
    opt.state[opt.param_groups[0]["params"][0]]["count"] = 3  # a non-tensor entry goes to the JSON
    opt.state[opt.param_groups[0]["params"][1]]["ema.fast"] = torch.full((2,), 7.0)  # a name with a dot
    tensors, meta = optimizer_to_flat(opt)
    assert sorted(tensors) == sorted([f"optim.{i}.{k}" for i in range(4) for k in ("step", "exp_avg", "exp_avg_sq")]
                                     + ["optim.1.ema.fast"])
    assert meta["scalars"] == {"0": {"count": 3}}
    assert json.loads(json.dumps(meta))["param_groups"][0]["betas"] == [0.8, 0.9]
    meta = json.loads(json.dumps(meta))  # as saved
    fresh = torch.optim.Adam(model.parameters(), lr=0.5)
    optimizer_from_flat(fresh, tensors, meta)
    assert fresh.param_groups[0]["lr"] == 0.01 and tuple(fresh.param_groups[0]["betas"]) == (0.8, 0.9)
    for p in model.parameters():
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(fresh.state[p][k], opt.state[p][k])
    assert fresh.state[opt.param_groups[0]["params"][0]]["count"] == 3
    assert torch.equal(fresh.state[opt.param_groups[0]["params"][1]]["ema.fast"], torch.full((2,), 7.0))
    optimizer_from_flat(fresh, {"other.0.step": torch.ones(())}, {**meta, "scalars": {}})  # only optim.* keys
    assert len(fresh.state) == 0


def test_training_state_round_trips_everything_it_keeps(tmp_path):
    from aevb.checkpoint import TRAIN_STATE, load_train_state, restore_train_state, save_train_state

    model, opt = _adam_after_steps()
    aux_model, aux = _adam_after_steps(steps=1)
    noise = torch.Generator().manual_seed(5)
    torch.rand(3, generator=noise)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    save_train_state(tmp_path, _wrapped(model), opt,
                     {"sums.elbo": torch.tensor(-12.5)}, {"global_step": 9, "epoch": 1}, generator=noise,
                     scaler=scaler, schedule={"kind": "step", "last": 3}, auxiliary={"disc": aux})
    tensors, progress, opt_meta = load_train_state(tmp_path)
    assert progress == {"global_step": 9, "epoch": 1} and "param_groups" in opt_meta
    assert {k.split(".")[0] for k in tensors} == {"model", "optim", "sums", "rng", "aux"}
    assert "model.0.weight" in tensors  # the unwrapped model's names
    model2, opt2 = _adam_after_steps(steps=0)
    with torch.no_grad():
        for p in model2.parameters():
            p.zero_()
    _, aux2 = _adam_after_steps(steps=0)
    scaler2 = torch.amp.GradScaler("cpu")
    g = torch.Generator()
    state = restore_train_state(tmp_path, model2, opt2, g, CPU, scaler=scaler2, auxiliary={"disc": aux2})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    p0, q0 = opt.param_groups[0]["params"][0], opt2.param_groups[0]["params"][0]
    assert torch.equal(opt2.state[q0]["exp_avg"], opt.state[p0]["exp_avg"])
    a0, b0 = aux.param_groups[0]["params"][0], aux2.param_groups[0]["params"][0]
    assert torch.equal(aux2.state[b0]["exp_avg"], aux.state[a0]["exp_avg"])
    assert torch.equal(g.get_state(), noise.get_state()) and not state.noise_reseeded
    assert scaler2.get_scale() == 256.0
    assert state.progress == {"global_step": 9, "epoch": 1} and state.schedule == {"kind": "step", "last": 3}
    assert set(state.sums) == {"elbo"} and state.sums["elbo"].item() == -12.5
    with pytest.raises(CheckpointError, match=r"train_state\.safetensors: the training state has no state for the "
                                              r"model's optimizer 'critic'; it was saved by another model$"):
        restore_train_state(tmp_path, model2, opt2, g, CPU, auxiliary={"critic": aux2})
    save_train_state(tmp_path, model, opt, {}, {"global_step": 9}, generator=noise)
    state = restore_train_state(tmp_path, model2, opt2, g, CPU, scaler=scaler2)
    assert state.schedule is None and state.sums == {} and scaler2.get_scale() == 256.0  # no scaler saved: kept
    assert (tmp_path / TRAIN_STATE).is_file()


def _wrapped(model):
    class DDPLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = model
    return DDPLike()


def test_a_noise_state_from_another_kind_of_device_is_reseeded_from_the_step(tmp_path):
    from safetensors.torch import load_file, save_file

    from aevb.checkpoint import TRAIN_STATE, reseed_noise, restore_train_state, save_train_state

    g = torch.Generator().manual_seed(11)
    reseed_noise(g, 4)
    assert g.initial_seed() == (11 * 1_000_003 + 4) % 2**63
    big = torch.Generator().manual_seed(2**62)
    reseed_noise(big, 7)
    assert big.initial_seed() == (2**62 * 1_000_003 + 7) % 2**63
    model, opt = _adam_after_steps(steps=1)
    save_train_state(tmp_path, model, opt, {}, {"global_step": 30}, generator=torch.Generator().manual_seed(3))
    path = tmp_path / TRAIN_STATE
    tensors = load_file(path)
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["rng_device"] == "cpu"
    save_file(tensors, path, {**meta, "rng_device": "cuda"})
    g = torch.Generator().manual_seed(3)
    with pytest.warns(UserWarning, match=r"the noise generator was saved on cuda and this run is on cpu; it "
                                         r"continues with noise re-seeded from the step"):
        state = restore_train_state(tmp_path, model, opt, g, CPU)
    assert state.noise_reseeded and g.initial_seed() == (3 * 1_000_003 + 30) % 2**63
    del meta["rng_device"]  # a file from before device tags: told apart by the state's size
    save_file({**tensors, "rng.noise": tensors["rng.noise"][:100]}, path, meta)
    g = torch.Generator().manual_seed(3)
    with pytest.warns(UserWarning, match="saved on another device"):
        assert restore_train_state(tmp_path, model, opt, g, CPU).noise_reseeded
    save_file(tensors, path, meta)
    g = torch.Generator()
    assert not restore_train_state(tmp_path, model, opt, g, CPU).noise_reseeded
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(3).get_state())


def test_training_state_files_missing_or_corrupt_say_so(tmp_path):
    from safetensors.torch import save_file

    from aevb.checkpoint import TRAIN_STATE, load_train_state, read_train_state_bytes

    with pytest.raises(CheckpointError, match=r"train_state\.safetensors is missing: the run cannot be resumed \(it "
                                              r"finished without training state, or never reached its first "
                                              r"checkpoint\)$"):
        read_train_state_bytes(tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / TRAIN_STATE, {"progress": "{not json"})
    with pytest.raises(CheckpointError, match=r"train_state\.safetensors: training-state metadata is missing or "
                                              r"corrupt \("):
        load_train_state(tmp_path)
    save_file({"x": torch.zeros(1)}, tmp_path / TRAIN_STATE, {"progress": "{}"})
    with pytest.raises(CheckpointError, match=r"metadata is missing or corrupt \('optimizer'\)$"):
        load_train_state(tmp_path)
    data = (tmp_path / TRAIN_STATE).read_bytes()
    assert read_train_state_bytes(tmp_path) == data


def _tiny_run_config():
    from aevb.config import ModelConfig, RunConfig

    return RunConfig(model=ModelConfig(input_shape=(1, 2, 2), hidden=(3,), latent_dim=2))


def test_the_weights_and_the_best_weights_load_back_as_saved(tmp_path):
    from aevb.checkpoint import BEST, CONFIG, WEIGHTS, load_model, read_best, save_best, save_model
    from aevb.models import build_model

    cfg = _tiny_run_config()
    torch.manual_seed(0)
    last, best = build_model(cfg.model), build_model(cfg.model)
    assert read_best(tmp_path) is None
    save_model(tmp_path, _wrapped(last), cfg)  # the plain module's names, not module.*
    save_best(tmp_path, _wrapped(best), {"epoch": 3, "key": "valid_elbo", "value": -1.5})
    assert read_best(tmp_path) == {"epoch": 3, "key": "valid_elbo", "value": -1.5}
    for which, expected in (("last", last), ("best", best)):
        model, config = load_model(tmp_path, which=which)
        assert config == cfg and not model.training
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), expected.state_dict().values()))
    assert read_safetensors_meta(tmp_path / WEIGHTS) == {"format": "pt"}
    assert read_safetensors_meta(tmp_path / BEST) == {"format": "pt", "best": json.dumps(
        {"epoch": 3, "key": "valid_elbo", "value": -1.5})}
    with pytest.raises(CheckpointError, match=r"^which must be one of last, best; got 'first'$"):
        load_model(tmp_path, which="first")
    (tmp_path / BEST).unlink()
    with pytest.raises(CheckpointError, match=r"has no best\.safetensors: no epoch has finished yet, or the run was "
                                              r"trained by an aevb that kept no best checkpoint; load the last "
                                              r"weights instead$"):
        load_model(tmp_path, which="best")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, tmp_path / BEST, {"best": "{cut"})
    with pytest.raises(CheckpointError, match=r"best\.safetensors: the best epoch's metadata is missing or corrupt"):
        read_best(tmp_path)
    save_file({"w": torch.zeros(1)}, tmp_path / BEST)
    with pytest.raises(CheckpointError, match=r"the best epoch's metadata is missing or corrupt \('best'\)$"):
        read_best(tmp_path)
    assert (tmp_path / CONFIG).is_file()


def read_safetensors_meta(path):
    from aevb.checkpoint import read_safetensors

    return read_safetensors(path)[1]


def test_safetensors_bytes_parse_with_or_without_metadata(tmp_path):
    from safetensors.torch import save

    from aevb.checkpoint import _parse_safetensors

    tensors, meta = _parse_safetensors(save({"a": torch.arange(3.0)}), tmp_path / "f")
    assert meta == {} and torch.equal(tensors["a"], torch.arange(3.0))
    tensors, meta = _parse_safetensors(save({"a": torch.ones(1)}, {"k": "v"}), tmp_path / "f")
    assert meta == {"k": "v"}
    with pytest.raises(CheckpointError, match=r"^\S+/f is empty \(0 bytes\)"):
        _parse_safetensors(b"", tmp_path / "f")
    good = save({"a": torch.ones(4)})
    with pytest.raises(CheckpointError, match=r"/f is truncated"):
        _parse_safetensors(good[:-3], tmp_path / "f")


def test_save_model_keeps_an_existing_config_when_the_weights_fail(tmp_path, monkeypatch):
    from aevb import checkpoint
    from aevb.checkpoint import CONFIG, WEIGHTS, save_model
    from aevb.models import build_model

    cfg = _tiny_run_config()
    model = build_model(cfg.model)
    save_model(tmp_path, model, cfg)
    real = checkpoint.atomic_write

    def fail_on_weights(path, data):
        if path.name == WEIGHTS:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)
    monkeypatch.setattr(checkpoint, "atomic_write", fail_on_weights)
    with pytest.raises(OSError):
        save_model(tmp_path, model, cfg)
    assert (tmp_path / CONFIG).is_file()  # the run existed: its config stays
    with pytest.raises(OSError):
        save_model(tmp_path / "new", model, cfg)
    assert not (tmp_path / "new" / CONFIG).exists()  # a new run: no lone config


# --- the metrics (aevb.evaluate) --------------------------------------------------------------------------

def _small_vae(likelihood="bernoulli", **kw):
    from aevb.config import ModelConfig
    from aevb.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(input_shape=(1, 2, 5), likelihood=likelihood, hidden=(8,), latent_dim=2, **kw))


def _binary_images(n=40, seed=0):
    return torch.bernoulli(torch.full((n, 1, 2, 5), 0.5), generator=seeded(seed))


def test_mean_and_stderr_in_float64_and_nan_for_one_value():
    from aevb.evaluate import _mean_and_stderr

    mean, se = _mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2, rel=1e-12)
    mean, _ = _mean_and_stderr(torch.tensor([2.0**24, 1.0, 1.0]))  # float32 would round 2^24 + 1 away
    assert mean == (2**24 + 2) / 3
    mean, se = _mean_and_stderr(torch.tensor([-3.0]))
    assert mean == -3.0 and math.isnan(se)
    assert _mean_and_stderr(torch.tensor([1.0, 3.0])) == (2.0, pytest.approx(1.0))  # two values: std sqrt(2), / sqrt(2)


def test_bits_per_dim_and_labelled_batches():
    from aevb.evaluate import _labelled_batches, bits_per_dim

    assert bits_per_dim(-100.0, 10) == pytest.approx(100 / (10 * math.log(2)), rel=1e-15)
    x, y = torch.arange(5.0), torch.arange(10, 15)
    assert [(b.tolist(), c) for b, c in _labelled_batches(x, None, 2)] == [([0, 1], None), ([2, 3], None), ([4], None)]
    assert [(b.tolist(), c.tolist()) for b, c in _labelled_batches(x, y, 3)] == [([0, 1, 2], [10, 11, 12]),
                                                                                 ([3, 4], [13, 14])]


def test_evaluate_elbo_is_the_mean_over_every_batch_of_the_seeded_bound():
    from aevb.evaluate import evaluate_elbo
    from aevb.objectives import elbo

    model, x = _small_vae(), _binary_images()
    g, sums = torch.Generator().manual_seed(4), {}
    for start in range(0, 40, 16):
        for k, v in elbo(model, x[start:start + 16], samples=2, kl="mc", generator=g, reduction="none").items():
            sums[k] = sums.get(k, 0.0) + v.double().sum().item()
    res = evaluate_elbo(model, x, batch_size=16, samples=2, kl="mc", seed=4)
    assert set(res) == {"elbo", "reconstruction", "kl"}
    for k in res:
        assert res[k] == pytest.approx(sums[k] / 40, rel=1e-12)
    assert evaluate_elbo(model, x, batch_size=16, samples=2, kl="mc", seed=5)["elbo"] != res["elbo"]
    ae = _small_vae("gaussian_fixed", family="ae")
    from aevb.objectives import OBJECTIVES
    expected = OBJECTIVES[ae.capabilities.default_objective](ae, x, reduction="none")
    res = evaluate_elbo(ae, x, batch_size=16)
    assert set(res) == set(expected) - {"loss"}
    assert res["reconstruction"] == pytest.approx(expected["reconstruction"].double().mean().item(), rel=1e-9)


def test_log_likelihood_is_the_seeded_importance_estimate_and_draws_a_bar_only_when_asked(capsys):
    from aevb.evaluate import log_likelihood
    from aevb.importance import importance_log_likelihood

    model, x = _small_vae(), _binary_images(6)
    expected = importance_log_likelihood(model, x, 5, torch.Generator().manual_seed(3), batch_size=4, max_samples=2,
                                         fast=False)
    ll = log_likelihood(model, x, k=5, batch_size=4, chunk=2, seed=3, fast=False)
    assert ll.dtype == torch.float64 and torch.allclose(ll, expected, rtol=0, atol=1e-12)
    assert capsys.readouterr().err == ""
    log_likelihood(model, x, k=5, progress=True)
    assert "log p(x), k=5" in capsys.readouterr().err


def test_latent_statistics_variance_of_means_and_mean_kl_per_dimension():
    from aevb.distributions import analytic_kl_per_dim
    from aevb.evaluate import embed, latent_statistics

    model, x = _small_vae(), _binary_images()
    with torch.no_grad():
        model.encoder.heads["mu"].weight[1].zero_()  # dimension 1 ignores x
        q = model.encode(x, None)
        mu = q.mean.double()
        kl = analytic_kl_per_dim(q, model.prior).double().mean(0)
    stats = latent_statistics(model, x, batch_size=16)
    var = mu.var(0, unbiased=True)
    assert torch.allclose(torch.tensor(stats["active_unit_variances"], dtype=torch.float64), var, rtol=1e-9)
    assert stats["active_units"] == int((var > 0.01).sum()) == 1
    assert latent_statistics(model, x, threshold=float(var[0]) * 1.01)["active_units"] == 0
    assert stats["kl_per_dim"] == pytest.approx(kl.tolist(), rel=1e-6)
    one = latent_statistics(model, x[:1])
    assert one["active_unit_variances"] == [0.0, 0.0] and one["active_units"] == 0
    assert torch.equal(embed(model, x, batch_size=16), model.embed(x, None))


def test_decoder_statistics_counts_clamped_pixels_over_all_batches():
    from aevb.evaluate import decoder_statistics

    model = _small_vae("gaussian")
    with torch.no_grad():
        model.decoder.log_var.weight.zero_()
        model.decoder.log_var.bias.copy_(torch.tensor([-30.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
    x = torch.rand(7, 1, 2, 5, generator=seeded(0))
    assert decoder_statistics(model, x, batch_size=3) == {"discrete_likelihood": False,
                                                           "decoder_scale_at_clamp": pytest.approx(0.1)}
    assert decoder_statistics(_small_vae(), _binary_images(7), batch_size=3) == {"discrete_likelihood": True}


def test_evaluate_puts_the_metrics_together_as_documented():
    from aevb.evaluate import evaluate, evaluate_elbo, latent_statistics, log_likelihood

    model, x = _small_vae(), _binary_images()
    model.train()
    res = evaluate(model, x, k=3, batch_size=7, seed=2)
    assert not model.training
    ll = log_likelihood(model, x, k=3, batch_size=7, seed=2)
    elbo = evaluate_elbo(model, x, batch_size=500, seed=2)  # one batch of all 40
    stats = latent_statistics(model, x)
    expected = {"n": 40, "k": 3, "data_dim": 10, "conditional": False, **elbo, "discrete_likelihood": True,
                "elbo_bits_per_dim": -elbo["elbo"] / (10 * math.log(2)), "log_likelihood": ll.mean().item(),
                "log_likelihood_stderr": (ll.std().item() / math.sqrt(40)),
                "bits_per_dim": -ll.mean().item() / (10 * math.log(2)), "active_units": stats["active_units"],
                "latent_dim": 2, "kl_dim_0": stats["kl_per_dim"][0], "kl_dim_1": stats["kl_per_dim"][1]}
    assert res.keys() == expected.keys()
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, rel=1e-9), key
    assert evaluate_elbo(model, x, batch_size=7, seed=2)["elbo"] != res["elbo"]  # the batch size matters
    res = evaluate(model, x, k=0, seed=2)
    assert "log_likelihood" not in res and "bits_per_dim" not in res and res["active_units"] == stats["active_units"]
    res = evaluate(_small_vae("gaussian"), torch.rand(8, 1, 2, 5), k=2)
    assert "bits_per_dim" not in res and "elbo_bits_per_dim" not in res and "log_likelihood" in res
    ae = evaluate(_small_vae("gaussian_fixed", family="ae"), torch.rand(8, 1, 2, 5), k=2)
    assert set(ae) == {"n", "k", "data_dim", "conditional", "reconstruction", "discrete_likelihood"}


def test_evaluate_with_labels_adds_the_probes_of_the_codes():
    from aevb.evaluate import embed, evaluate, probe_accuracy

    model = _small_vae()
    x, y = _binary_images(30), torch.arange(30) % 2
    xtr, ytr = _binary_images(50, seed=1), torch.arange(50) % 2
    res = evaluate(model, x, k=0, y=y, probe_train=(xtr, ytr), probe_max_train=20, seed=1)
    keep = torch.randperm(50, generator=torch.Generator().manual_seed(1))[:20]
    probes = probe_accuracy(embed(model, xtr[keep]), ytr[keep], embed(model, x), y, seed=1, max_train=20)
    assert probes["probe_train_size"] == 20
    for key, value in probes.items():
        assert res[key] == value
    assert "probe_logreg_accuracy" not in evaluate(model, x, k=0, y=y)
    assert "probe_logreg_accuracy" not in evaluate(model, x, k=0, probe_train=(xtr, ytr))
    assert "probe_logreg_accuracy" not in evaluate(model, x, k=0, y=y, probe_train=(xtr, None))
    assert evaluate(model, x, k=0, y=y, probe_train=(xtr, ytr), probe_max_train=0)["probe_train_size"] == 50


def test_evaluate_gives_a_conditional_model_its_labels_everywhere():
    """Every term of a conditional model is computed given y: each number equals the one computed with y,
    and differs from the one computed with other labels."""
    from aevb.conditional import LabelError
    from aevb.distributions import analytic_kl_per_dim
    from aevb.evaluate import decoder_statistics, embed, evaluate, evaluate_elbo, latent_statistics, log_likelihood
    from aevb.objectives import elbo

    model, x = _small_vae("gaussian", num_classes=3), torch.rand(40, 1, 2, 5, generator=seeded(1))
    y, other = torch.arange(40) % 3, (torch.arange(40) + 1) % 3
    with torch.no_grad():
        model.decoder.log_var.weight.zero_()
        model.decoder.log_var.bias.copy_(torch.tensor([-30.0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
    terms = elbo(model, x, generator=torch.Generator().manual_seed(2), reduction="none", y=y)
    res = evaluate(model, x, k=3, batch_size=7, seed=2, y=y)
    assert res["conditional"] is True and res["elbo"] == pytest.approx(terms["elbo"].double().mean().item(), rel=1e-9)
    assert res["log_likelihood"] == pytest.approx(log_likelihood(model, x, k=3, batch_size=7, seed=2, y=y).mean().item(),
                                                  rel=1e-12)
    assert res["decoder_scale_at_clamp"] == pytest.approx(0.1)
    with torch.no_grad():
        q = model.encode(x, y)
        kl = analytic_kl_per_dim(q, model.prior).double().mean(0)
    assert [res["kl_dim_0"], res["kl_dim_1"]] == pytest.approx(kl.tolist(), rel=1e-6)
    stats = latent_statistics(model, x, y=y)
    assert stats["active_unit_variances"] == pytest.approx(q.mean.double().var(0).tolist(), rel=1e-9)
    assert stats["kl_per_dim"] != latent_statistics(model, x, y=other)["kl_per_dim"]
    assert evaluate_elbo(model, x, seed=2, y=y)["elbo"] != evaluate_elbo(model, x, seed=2, y=other)["elbo"]
    assert torch.equal(embed(model, x, batch_size=16, y=y), model.embed(x, y))
    assert decoder_statistics(model, x, batch_size=16, y=y)["decoder_scale_at_clamp"] == pytest.approx(0.1)
    with pytest.raises(LabelError, match=r"^labels of the evaluated images must lie in 0\.\.2 \(the model's 3 "
                                         r"classes\); found 3$"):
        evaluate(model, x, k=0, y=y + 1)
    plain = _small_vae("gaussian")
    assert evaluate(plain, x, k=0, y=y)["conditional"] is False  # labels of an unconditional model: for the probes
    assert evaluate(_small_vae(), _binary_images(2))["k"] == 5000  # the default k


def test_evaluate_passes_its_batch_sizes_chunk_k_and_progress_on(capsys):
    """The ELBO and the decoder's statistics run in batches of max(batch_size, 500), log p(x) in batch_size
    with the chunk given: with a seed, each changes the draws, so each number is the one of those settings."""
    from aevb.evaluate import evaluate, evaluate_elbo, log_likelihood

    model, many = _small_vae(), _binary_images(600)
    res = evaluate(model, many, k=0, batch_size=7, seed=1)
    assert res["elbo"] == evaluate_elbo(model, many, batch_size=500, seed=1)["elbo"]
    assert res["elbo"] != evaluate_elbo(model, many, batch_size=501, seed=1)["elbo"]
    assert evaluate(model, many, k=0, batch_size=600, seed=1)["elbo"] == evaluate_elbo(model, many, batch_size=600,
                                                                                      seed=1)["elbo"]
    x = _binary_images(40)
    res = evaluate(model, x, k=6, batch_size=7, chunk=2, seed=1)
    assert res["log_likelihood"] == log_likelihood(model, x, k=6, batch_size=7, chunk=2, seed=1).mean().item()
    assert capsys.readouterr().err == ""
    evaluate(model, x[:2], k=1, progress=True)
    assert "log p(x), k=1" in capsys.readouterr().err  # k=1 is an estimate too (the ELBO's one sample)


def test_atomic_write_goes_through_a_temporary_beside_the_file_that_remove_temporaries_finds(tmp_path, monkeypatch):
    """The temporary is NAME.<random>.tmp in the same folder (a rename within one file system, and the
    name remove_temporaries deletes after a crash)."""
    from aevb.checkpoint import atomic_write, remove_temporaries

    seen, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: seen.append(Path(src)) or replace(src, dst))
    atomic_write(tmp_path / "model.safetensors", b"x")
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith("model.safetensors.") and tmp.suffix == ".tmp"
    assert len(tmp.name) > len("model.safetensors..tmp")
    tmp.write_bytes(b"left by a crash")
    remove_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_gaussian_posterior_clamps_the_log_variance_to_its_bounds():
    from aevb.distributions import GaussianPosterior

    out = {"mu": torch.zeros(4), "log_var": torch.tensor([-30.0, -3.0, 4.0, 30.0])}
    assert GaussianPosterior()(out).log_var.tolist() == [-10.0, -3.0, 4.0, 10.0]  # the defaults, [-10, 10]
    q = GaussianPosterior(log_var_min=-2.0, log_var_max=3.0)(out)
    assert q.log_var.tolist() == [-2.0, -2.0, 3.0, 3.0] and torch.equal(q.mu, torch.zeros(4))


def test_the_defaults_of_load_model_evaluate_elbo_and_log_likelihood(tmp_path):
    from aevb.checkpoint import load_model, save_model
    from aevb.evaluate import evaluate_elbo, log_likelihood

    from aevb.config import RunConfig

    model, x = _small_vae(), _binary_images(6)
    save_model(tmp_path, model, RunConfig(model=model.config))
    assert load_model(tmp_path)[1] == RunConfig(model=model.config)  # which="last" by default
    assert evaluate_elbo(model, x) == evaluate_elbo(model, x, seed=0)
    assert torch.equal(log_likelihood(model, x, k=5), log_likelihood(model, x, k=5, seed=0, fast=True))
    assert not torch.equal(log_likelihood(model, x, k=5), log_likelihood(model, x, k=5, fast=False))  # 1e-6 apart


def test_restore_train_state_reads_the_bytes_it_is_given(tmp_path):
    from aevb.checkpoint import read_train_state_bytes, restore_train_state, save_train_state

    model, opt = _adam_after_steps(steps=1)
    save_train_state(tmp_path, model, opt, {}, {"global_step": 1}, generator=torch.Generator())
    first = read_train_state_bytes(tmp_path)  # as rank 0 reads it and sends it to the others
    save_train_state(tmp_path, model, opt, {}, {"global_step": 2}, generator=torch.Generator())
    assert restore_train_state(tmp_path, model, opt, torch.Generator(), CPU, data=first).progress == {"global_step": 1}
    assert restore_train_state(tmp_path, model, opt, torch.Generator(), CPU).progress == {"global_step": 2}


def test_evaluate_fits_the_probes_on_at_most_10000_training_images_by_default():
    from aevb.evaluate import evaluate

    model = _small_vae()
    big = torch.bernoulli(torch.full((10001, 1, 2, 5), 0.5), generator=seeded(2))
    res = evaluate(model, big[:4], k=0, y=torch.tensor([0, 1, 0, 1]), probe_train=(big, torch.arange(10001) % 2))
    assert res["probe_train_size"] == 10000


def test_evaluate_gives_a_hierarchy_its_per_layer_statistics_at_the_seed():
    from aevb.evaluate import evaluate
    from aevb.hierarchy import layer_statistics
    from aevb.models import build_model
    from aevb.models.hvae import HVAEConfig

    torch.manual_seed(0)
    model = build_model(HVAEConfig(input_shape=(1, 2, 5), hidden=(8,), latent_layers=2, latent_sizes=(2, 2),
                                   activation="tanh", ema_decay=0.0))
    x = _binary_images(12)
    res = evaluate(model, x, k=0, seed=3)
    expected = layer_statistics(model, x, seed=3)
    assert expected["kl_per_layer"] != layer_statistics(model, x, seed=4)["kl_per_layer"]  # the seed matters
    for key, value in expected.items():
        assert res[key] == value, key
