"""The oneDNN dense layers (``aevb.nets.dense``) compute what the modules compute: values and gradients
against PyTorch's own linear layers and autograd, per activation, and whole objectives with the fast
path on and off for every likelihood and estimator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aevb import nets
from aevb.config import LIKELIHOODS, ModelConfig
from aevb.models import build_model
from aevb.objectives import elbo, iwae_bound

pytestmark = pytest.mark.skipif(not nets.onednn_linear_works(), reason="oneDNN's fused linear is not usable here")

ACTIVATIONS = [nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.Identity(), None]


@pytest.fixture
def reference_path(monkeypatch):
    """A context in which ``dense`` takes the modules' own path."""

    class Off:
        def __enter__(self):
            monkeypatch.setattr(nets, "ONEDNN", False)

        def __exit__(self, *exc):
            monkeypatch.setattr(nets, "ONEDNN", True)

    return Off


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_the_modules_values_and_gradients(activation, bias, reference_path):
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(7, 5, bias=bias)
    x = torch.randn(3, 4, 7, generator=g, requires_grad=True)  # leading sample and batch axes
    w = torch.randn(3, 4, 5, generator=g)
    y = nets.dense(x, linear, activation)
    grads = torch.autograd.grad((y * w).sum(), [x, *linear.parameters()])
    with reference_path():
        y_ref = nets.dense(x, linear, activation)
        refs = torch.autograd.grad((y_ref * w).sum(), [x, *linear.parameters()])
    assert y.shape == (3, 4, 5)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dense_under_bf16_autocast_matches_the_autocast_linear(reference_path):
    g = torch.Generator().manual_seed(1)
    linear = nn.Linear(64, 32)
    x = torch.randn(16, 64, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = nets.dense(x, linear, nn.Tanh())
        with reference_path():
            y_ref = nets.dense(x, linear, nn.Tanh())
    assert y.dtype == torch.bfloat16 == y_ref.dtype
    torch.testing.assert_close(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)
    (gw,) = torch.autograd.grad(y.float().sum(), [linear.weight])
    (gw_ref,) = torch.autograd.grad(y_ref.float().sum(), [linear.weight])
    assert gw.dtype == torch.float32  # the parameter's own dtype
    torch.testing.assert_close(gw, gw_ref, atol=5e-2, rtol=2e-2)


def test_float64_and_unfused_activations_take_the_modules_path():
    linear = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(nets.dense(x, linear, nn.Tanh()), torch.tanh(linear(x)))
    soft = nn.Linear(3, 2)
    xf = torch.randn(4, 3)
    assert torch.equal(nets.dense(xf, soft, nn.Softplus()), nn.functional.softplus(soft(xf)))


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_objectives_and_their_gradients_agree_with_the_fast_path_off(likelihood, arch, reference_path):
    cfg = ModelConfig(input_shape=(1, 8, 8), architecture=arch, likelihood=likelihood, hidden=(32, 16),
                      activation="tanh", latent_dim=3, conv_channels=(4,))
    torch.manual_seed(0)
    model = build_model(cfg)
    x = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 255).round() / 255
    for objective in (lambda: elbo(model, x, samples=2, kl="analytic", generator=torch.Generator().manual_seed(3)),
                      lambda: elbo(model, x, samples=2, kl="mc", generator=torch.Generator().manual_seed(3)),
                      lambda: iwae_bound(model, x, k=4, generator=torch.Generator().manual_seed(3))):
        terms = objective()
        grads = torch.autograd.grad(terms["loss"], list(model.parameters()))
        with reference_path():
            ref = objective()
            ref_grads = torch.autograd.grad(ref["loss"], list(model.parameters()))
        torch.testing.assert_close(terms["loss"], ref["loss"], atol=1e-4, rtol=1e-5)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
