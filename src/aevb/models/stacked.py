"""Two stochastic layers (Burda, Grosse & Salakhutdinov 2016, section 5): the pieces the ``vae`` family
adds with ``stochastic_layers=2``.

    inference   x -> hidden -> z1 (latent_dim) -> top_hidden -> z2 (top_latent_dim)     q(z1|x) q(z2|z1)
    generation  z2 ~ p(z2) -> top_hidden -> z1 -> hidden -> x                          p(z2) p(z1|z2) p(x|z1)

with tanh (the model's activation) between layers and diagonal Gaussians at z1 and z2. The latent a sample
of q or of the prior is, everywhere the objectives see one, is z = [z1, z2] (..., B, latent_dim +
top_latent_dim); the decoder reads z1 = z[..., :latent_dim]. The model's code (``embed``, ``latent_shape``,
the explorer's sliders, the manifold) is z1, the layer the decoder reads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributions import DiagonalGaussian, standard_normal
from ..nets import mlp


class GaussianLayer(nn.Module):
    """v (..., n_in) -> hidden -> N(mu, diag exp(log_var)) over n_out dimensions, the log-variance clamped
    to [log_var_min, log_var_max]: q(z2|z1) and p(z1|z2)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int, activation: str,
                 log_var_min: float = -10.0, log_var_max: float = 10.0):
        super().__init__()
        sizes = [n_in, *hidden]
        self.trunk = mlp(sizes, activation)
        self.mu = nn.Linear(sizes[-1], n_out)
        self.log_var = nn.Linear(sizes[-1], n_out)
        self.log_var_min, self.log_var_max = log_var_min, log_var_max

    def forward(self, v: Tensor) -> DiagonalGaussian:
        h = self.trunk(v)
        return DiagonalGaussian(self.mu(h), self.log_var(h).clamp(self.log_var_min, self.log_var_max))


class StackedPosterior:
    """q(z1, z2 | x) = q(z1|x) q(z2|z1). ``bottom`` is the posterior object over z1 (a Gaussian, or a flow
    posterior); ``top`` maps z1 (..., B, Z1) to q(z2|z1)."""

    event_ndim = 1

    def __init__(self, bottom, top: GaussianLayer):
        self.bottom, self.top = bottom, top

    @property
    def mean(self) -> Tensor:
        """The code of z1 (B, Z1): the bottom posterior's mean."""
        return self.bottom.mean

    @property
    def std(self) -> Tensor:
        """The standard deviation of q(z1|x) (B, Z1), for a Gaussian bottom layer."""
        return self.bottom.std

    def rsample_with_log_prob(self, n: int | None = None,
                              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """z = [z1, z2] (n, B, Z1 + Z2) and log q(z1|x) + log q(z2|z1) (n, B); z1 first, then z2 from its noise."""
        z1, log_q1 = self.bottom.rsample_with_log_prob(n, generator)
        q2 = self.top(z1)
        z2 = q2.rsample(None, generator)  # q2 is already shaped like z1's samples
        return torch.cat([z1, z2.to(z1.dtype)], -1), log_q1 + q2.log_prob(z2)

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        return self.rsample_with_log_prob(n, generator)[0]

    def log_prob(self, z: Tensor) -> Tensor:
        z1_dim = self.bottom.mean.shape[-1]
        z1, z2 = z[..., :z1_dim], z[..., z1_dim:]
        return self.bottom.log_prob(z1) + self.top(z1).log_prob(z2)


class StackedPrior(nn.Module):
    """p(z1, z2) = p(z2) p(z1|z2) over z = [z1, z2]; ``top`` is the prior p(z2) (N(0, I) or a learned one)."""

    event_ndim = 1

    def __init__(self, top: nn.Module, z1_given_z2: GaussianLayer, z1_dim: int):
        super().__init__()
        self.top = top
        self.z1_given_z2 = z1_given_z2
        self.z1_dim = z1_dim

    def log_prob(self, z: Tensor) -> Tensor:
        z1, z2 = z[..., : self.z1_dim], z[..., self.z1_dim :]
        return self.top.log_prob(z2) + self.z1_given_z2(z2).log_prob(z1)

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """n ancestral draws [z1, z2] (n, Z1 + Z2): z2 ~ p(z2), then z1 ~ p(z1|z2); on ``device``."""
        own = next(self.z1_given_z2.parameters()).device
        device = own if device is None else torch.device(device)
        z2 = self.top.sample(n, generator=generator, device=device, dtype=dtype)
        p1 = self.z1_given_z2(z2.to(own))
        eps = standard_normal(p1.mu.shape, generator, device, z2.dtype)
        z1 = p1.mu.to(device, z2.dtype) + p1.std.to(device, z2.dtype) * eps
        return torch.cat([z1, z2], -1)
