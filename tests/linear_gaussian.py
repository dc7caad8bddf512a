"""The linear-Gaussian model x = W z + b + sigma eps, z ~ N(0, I), whose posterior and marginal are in closed
form: the model behind the importance-sampling and sampler tests.

The exact posterior is N(A (x - b), S) with S = (I + W^T W / sigma^2)^-1 and A = S W^T / sigma^2; the marginal
is N(b, W W^T + sigma^2 I).
"""

from __future__ import annotations

import torch


def posterior_maps(W: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """S (Z, Z), the posterior covariance, and A (Z, D), the map from x - b to the posterior mean."""
    S = torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / sigma**2)
    return S, S @ W.T / sigma**2


def set_exact_posterior_encoder(model, W: torch.Tensor, b: torch.Tensor, sigma: float,
                                inflate: float = 1.0) -> torch.Tensor:
    """Give ``model`` (a VAE with one linear hidden layer as wide as x) the exact posterior mean and the
    diagonal of S times ``inflate`` as its variance (1: exact where S is diagonal; > 1: a good but imperfect
    q). Returns S."""
    S, A = posterior_maps(W, sigma)
    enc = model.encoder
    with torch.no_grad():
        enc.trunk[0].weight.copy_(torch.eye(W.shape[0]))
        enc.trunk[0].bias.zero_()
        enc.heads["mu"].weight.copy_(A)
        enc.heads["mu"].bias.copy_(-A @ b)
        enc.heads["log_var"].weight.zero_()
        enc.heads["log_var"].bias.copy_(torch.log(inflate * torch.diagonal(S)))
    return S


def marginal(W: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.distributions.MultivariateNormal:
    """p(x) = N(b, W W^T + sigma^2 I)."""
    return torch.distributions.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(W.shape[0]))
