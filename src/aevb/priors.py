"""Learned priors p(z): mixtures of K diagonal Gaussians with equal weights, 1/K sum_k N(z; mu_k, diag sigma_k^2).

- ``MixtureOfGaussians``: the means and log-variances are parameters of the prior (Tomczak & Welling 2018's
  "MoG" baseline).
- ``VampPrior`` (Tomczak & Welling 2018, eq. 9): the components are the model's own posterior at K learned
  pseudo-inputs u_k, p(z) = 1/K sum_k q(z|u_k). The prior holds the pseudo-inputs; the encoder stays the
  model's (the prior calls back into the model, so the state holds the encoder once).

No closed-form KL exists against a mixture: ``aevb.objectives`` uses the Monte Carlo estimate
log q(z|x) - log p(z), and importance sampling the prior's ``log_prob``. ``log_prob`` expands
(z - mu_k)^2 / sigma_k^2 into two matrix products, so no (..., K, Z) tensor is formed: the cost is
that of a (N, Z) x (Z, K) product. Log-densities are computed in float32 or wider, outside autocast.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from .distributions import LOG_2PI, DiagonalGaussian, _wide, standard_normal

PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD = -0.05, 0.01  # Tomczak & Welling's initialisation (before the sigmoid)


def mixture_log_prob(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """log (1/K) sum_k N(z; mu_k, diag exp(log_var_k)) for z (..., Z) and components mu, log_var (K, Z):
    shape (...,)."""
    with torch.autocast(z.device.type, enabled=False):
        z = _wide(z)
        mu, log_var = _wide(mu).to(z.dtype), _wide(log_var).to(z.dtype)
        k, d = mu.shape
        flat = z.reshape(-1, d)  # (N, Z)
        precision = torch.exp(-log_var)  # (K, Z)
        # sum_j (z_j - mu_kj)^2 / var_kj = z^2 . prec_k - 2 z . (mu_k prec_k) + mu_k^2 . prec_k
        quad = (flat * flat) @ precision.T - 2 * flat @ (mu * precision).T + (mu * mu * precision).sum(-1)  # (N, K)
        log_n = -0.5 * (quad.clamp_min(0) + log_var.sum(-1) + d * LOG_2PI)  # (N, K)
        return (torch.logsumexp(log_n, -1) - math.log(k)).view(z.shape[:-1])


def uniform_indices(n: int, k: int, generator, device) -> Tensor:
    """n indices drawn uniformly from 0..k-1, through the normal noise source (``standard_normal``) so that
    any generator the models use works (the batch on axis -2, as a sharded one wants): Phi(eps) is uniform."""
    eps = standard_normal((n, 1), generator, device, torch.float64, batch_axis=-2)[:, 0]
    u = 0.5 * (1 + torch.erf(eps / math.sqrt(2)))
    return (u * k).long().clamp_(0, k - 1)


def sample_mixture(components: DiagonalGaussian, n: int, generator, device, dtype) -> Tensor:
    """n draws (n, Z) from the equal-weight mixture of ``components`` (batch (K,)), on ``device``."""
    mu, log_var = components.mu, components.log_var
    device = mu.device if device is None else torch.device(device)
    idx = uniform_indices(n, mu.shape[0], generator, device)
    mu, std = mu.to(device)[idx], torch.exp(0.5 * log_var.to(device))[idx]
    eps = standard_normal(mu.shape, generator, device, dtype or torch.float32, batch_axis=-2)
    return (mu + std * eps).to(dtype or torch.float32)


class MixtureOfGaussians(nn.Module):
    """p(z) = 1/K sum_k N(z; mu_k, diag exp(log_var_k)), the K means (drawn from N(0, I)) and log-variances
    (starting at 0) learned."""

    event_ndim = 1

    def __init__(self, latent_dim: int, components: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.log_var = nn.Parameter(torch.zeros(components, latent_dim))

    def components(self) -> DiagonalGaussian:
        return DiagonalGaussian(self.means, self.log_var)

    def log_prob(self, z: Tensor) -> Tensor:
        return mixture_log_prob(z, self.means, self.log_var)

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """n draws, shape (n, latent_dim)."""
        return sample_mixture(self.components(), n, generator, device, dtype)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, components={self.means.shape[0]}"


class VampPrior(nn.Module):
    """p(z) = 1/K sum_k q(z|u_k) at K learned pseudo-inputs u_k (C, H, W).

    ``posterior_at(u, c)`` is the model's Gaussian posterior at images u (K, C, H, W) and label weights c
    (K, classes) or None: a callable, not a module, so the encoder is not stored twice. With ``bounded``
    (images in [0, 1]) u = sigmoid(a) of a parameter a, as Tomczak & Welling do; otherwise u = a. A
    conditional model's pseudo-inputs carry learned label weights softmax(l_k) (the prior itself does
    not depend on the label).
    """

    event_ndim = 1

    def __init__(self, components: int, input_shape: tuple[int, int, int], latent_dim: int,
                 posterior_at: Callable[[Tensor, Tensor | None], DiagonalGaussian], bounded: bool = True,
                 num_classes: int = 0):
        super().__init__()
        self.latent_dim, self.bounded = latent_dim, bounded
        self.pseudo_inputs = nn.Parameter(torch.randn(components, *input_shape) * PSEUDO_INPUT_STD + PSEUDO_INPUT_MEAN)
        self.label_logits = nn.Parameter(torch.zeros(components, num_classes)) if num_classes else None
        self.posterior_at = posterior_at

    def inputs(self) -> tuple[Tensor, Tensor | None]:
        """The pseudo-inputs u (K, C, H, W) and their label weights (K, classes) or None."""
        u = torch.sigmoid(self.pseudo_inputs) if self.bounded else self.pseudo_inputs
        return u, None if self.label_logits is None else torch.softmax(self.label_logits, -1)

    def components(self) -> DiagonalGaussian:
        """q(z|u_k) for the K pseudo-inputs: batch (K,)."""
        return self.posterior_at(*self.inputs())

    def log_prob(self, z: Tensor) -> Tensor:
        q = self.components()
        return mixture_log_prob(z, q.mu, q.log_var)

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """n draws, shape (n, latent_dim): a component uniformly, then z from it."""
        return sample_mixture(self.components(), n, generator, device, dtype)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, components={self.pseudo_inputs.shape[0]}, bounded={self.bounded}"
