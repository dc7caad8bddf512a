"""Likelihoods p(x|z) and the posterior q(z|x), as small distribution objects.

Every ``log_prob`` sums over the event dimensions (the last ``event_ndim`` axes) and
returns nats; leading axes (samples, batch) are kept. Log-densities are computed in
float32 or wider even when the parameters come out of a bf16 autocast region.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def _wide(t: Tensor) -> Tensor:
    """Promote half precision to float32 for log-density arithmetic."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def standard_normal(shape, generator=None, device=None, dtype=None) -> Tensor:
    """eps ~ N(0, I) from a torch.Generator, or from a noise source with a ``randn(shape, device,
    dtype)`` method (the data-parallel trainer's per-rank view of a shared generator)."""
    if generator is not None and hasattr(generator, "randn"):
        return generator.randn(shape, device, dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _sum_event(t: Tensor, event_ndim: int) -> Tensor:
    return t.sum(dim=tuple(range(-event_ndim, 0))) if event_ndim else t


class DiagonalGaussian:
    """N(mu, diag(exp(log_var))): the encoder's q(z|x) (paper section 3, appendix C.2)."""

    event_ndim = 1

    def __init__(self, mu: Tensor, log_var: Tensor):
        self.mu = mu
        self.log_var = log_var

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.log_var)

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): the reparameterization (paper eq. 10).

        With ``n`` the result has shape (n, *mu.shape); without, mu.shape.
        """
        shape = self.mu.shape if n is None else (n, *self.mu.shape)
        eps = standard_normal(shape, generator, self.mu.device, self.mu.dtype)
        return self.mu + self.std * eps

    def log_prob(self, z: Tensor) -> Tensor:
        return self.log_prob_per_dim(z).sum(-1)

    def kl_per_dim(self) -> Tensor:
        """KL(q_j || N(0, 1)) for each latent dimension j (shape of mu)."""
        mu, log_var = _wide(self.mu), _wide(self.log_var)
        return -0.5 * (1 + log_var - mu**2 - torch.exp(log_var))

    def kl_to_standard_normal(self) -> Tensor:
        """KL(q || N(0, I)) in closed form (paper appendix B):
        -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)."""
        return self.kl_per_dim().sum(-1)

    def log_prob_per_dim(self, z: Tensor) -> Tensor:
        mu, log_var, z = _wide(self.mu), _wide(self.log_var), _wide(z)
        return -0.5 * (LOG_2PI + log_var + (z - mu) ** 2 * torch.exp(-log_var))


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last axis."""
    z = _wide(z)
    return -0.5 * (LOG_2PI * z.shape[-1] + (z**2).sum(-1))


class Bernoulli:
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logit_d)), for binary (or [0, 1]) data.

    log p = x * logit - softplus(logit), computed through ``binary_cross_entropy_with_logits``,
    which is stable for large |logit|.
    """

    def __init__(self, logits: Tensor, event_ndim: int = 1):
        self.logits = logits
        self.event_ndim = event_ndim

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def log_prob(self, x: Tensor) -> Tensor:
        logits = _wide(self.logits)
        x = _wide(x).expand_as(logits)
        return -_sum_event(F.binary_cross_entropy_with_logits(logits, x, reduction="none"), self.event_ndim)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.mean, generator=generator)


class Gaussian:
    """p(x|z) = N(x; mean, diag(exp(log_var))), the paper's decoder for real-valued data
    (appendix C.2: sigmoid mean, linear log-variance, learned per pixel and per z).

    With a fixed ``log_var`` this is the MSE loss of the tutorials: -log p(x|z) =
    ||x - mean||^2 / (2 sigma^2) + D/2 * log(2 pi sigma^2), i.e. MSE up to the scale
    1/(2 sigma^2) and an additive constant.
    """

    def __init__(self, mean: Tensor, log_var: Tensor, event_ndim: int = 1):
        self._mean = mean
        self.log_var = log_var
        self.event_ndim = event_ndim

    @property
    def mean(self) -> Tensor:
        return self._mean

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.log_var)

    def log_prob(self, x: Tensor) -> Tensor:
        mean, log_var, x = _wide(self._mean), _wide(self.log_var), _wide(x)
        return _sum_event(-0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var)), self.event_ndim)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        eps = standard_normal(self._mean.shape, generator, self._mean.device, self._mean.dtype)
        return self._mean + self.std * eps
