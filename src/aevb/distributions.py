"""Likelihoods p(x|z), posteriors q(z|x) and priors p(z), as small distribution objects.

Every ``log_prob`` sums over the event dimensions (the last ``event_ndim`` axes) and
returns nats; leading axes (samples, batch) are kept. Log-densities are computed in
float32 or wider even when the parameters come out of a bf16 autocast region.

The latent-variable pieces a model is built from (``aevb.models``):

- a **posterior** q(z|x): ``rsample(n, generator)`` draws z by reparameterization,
  ``rsample_with_log_prob`` returns (z, log q(z|x)) together (what a flow posterior computes
  anyway), ``log_prob``, ``mean``; a factorised one also has ``log_prob_per_dim``;
- a **prior** p(z): ``log_prob``, ``sample(n, generator)``; an ``nn.Module``, so that a learned
  prior's parameters live in the model's state (``StandardNormal`` has none);
- ``analytic_kl_per_dim(q, p)``: KL(q || p) per latent dimension where a closed form is
  registered for the pair (``register_kl``), else None; objectives then use the Monte Carlo
  estimate log q(z|x) - log p(z).

Samplers draw their noise through ``noise`` (``standard_normal``, ``uniform``), naming the batch
axis: the ``generator`` they are given may be the data-parallel trainer's per-rank view of one
shared generator, which ``torch.randn`` does not accept. Posteriors and priors of your own should
do the same to train on several processes.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


def _wide(t: Tensor) -> Tensor:
    """Promote half precision to float32 for log-density arithmetic."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def noise(kind: str, shape, generator=None, *, batch_axis: int | None = None, device=None,
          dtype=torch.float32) -> Tensor:
    """Standard noise of ``shape``: ``kind="normal"`` eps ~ N(0, I), ``"uniform"`` u ~ U[0, 1); float32
    unless ``dtype`` says otherwise (eps and z stay float32 or wider, even under autocast).

    Every random draw of a training step goes through here. ``generator`` is a torch.Generator (or
    None), or a noise source with ``draw(kind, shape, batch_axis, device, dtype)``: the data-parallel
    trainer's per-rank view of one shared generator (``aevb.distributed.ShardedNoise``), which draws
    the whole global batch and returns this rank's rows along ``batch_axis``. A noise source needs
    the batch axis; a generator ignores it."""
    if kind not in ("normal", "uniform"):
        raise ValueError(f"noise kind must be 'normal' or 'uniform'; got {kind!r}")
    if generator is not None and hasattr(generator, "draw"):
        if batch_axis is None:
            raise ValueError("a sharded noise source needs the batch axis of the draw (batch_axis)")
        return generator.draw(kind, tuple(shape), batch_axis, device, dtype)
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(tuple(shape), generator=generator, device=device, dtype=dtype)


def standard_normal(shape, generator=None, device=None, dtype=torch.float32, *,
                    batch_axis: int | None = None) -> Tensor:
    """eps ~ N(0, I) of ``shape`` (``noise("normal", ...)``)."""
    return noise("normal", shape, generator, batch_axis=batch_axis, device=device, dtype=dtype)


def uniform(shape, generator=None, device=None, dtype=torch.float32, *, batch_axis: int | None = None) -> Tensor:
    """u ~ U[0, 1) of ``shape`` (``noise("uniform", ...)``)."""
    return noise("uniform", shape, generator, batch_axis=batch_axis, device=device, dtype=dtype)


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
        """sigma, in float32 or wider."""
        return torch.exp(0.5 * _wide(self.log_var))

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): the reparameterization (paper eq. 10), eps and z in
        float32 or wider whatever mu's dtype (a bf16 z would not be the point log q is scored at).

        With ``n`` the result has shape (n, *mu.shape); without, mu.shape. The batch is mu's axis -2.
        """
        mu = _wide(self.mu)
        shape = mu.shape if n is None else (n, *mu.shape)
        eps = standard_normal(shape, generator, mu.device, mu.dtype, batch_axis=-2)  # (..., B, Z)
        return mu + self.std * eps

    def rsample_with_log_prob(self, n: int | None = None,
                              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(z, log q(z|x)) for z drawn as ``rsample`` draws it."""
        z = self.rsample(n, generator)
        return z, self.log_prob(z)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.log_prob_per_dim(z).sum(-1)

    def kl(self, other: "StandardNormal") -> Tensor:
        """KL(self || other) in closed form, summed over the latent dimensions."""
        per_dim = analytic_kl_per_dim(self, other)
        if per_dim is None:
            raise NotImplementedError(f"no closed-form KL between {type(self).__name__} and {type(other).__name__}")
        return per_dim.sum(-1)

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


class GaussianPosterior(nn.Module):
    """The posterior family of the paper's encoder: q(z|x) = N(mu(x), diag(exp(log_var(x)))) from
    the encoder's ``mu`` and ``log_var`` heads, the log-variance clamped to [log_var_min, log_var_max]
    (the one clamp of q's variance). No parameters: the heads belong to the encoder."""

    heads = ("mu", "log_var")

    def __init__(self, log_var_min: float = -10.0, log_var_max: float = 10.0):
        super().__init__()
        self.log_var_min = log_var_min
        self.log_var_max = log_var_max

    def forward(self, out: dict[str, Tensor]) -> DiagonalGaussian:
        return DiagonalGaussian(out["mu"], out["log_var"].clamp(self.log_var_min, self.log_var_max))


class StandardNormal(nn.Module):
    """The prior p(z) = N(0, I) over ``latent_dim`` dimensions (no parameters)."""

    event_ndim = 1

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob_per_dim(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI + _wide(z) ** 2)

    def log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
        """n draws, shape (n, latent_dim), float32 unless ``dtype`` says otherwise."""
        return standard_normal((n, self.latent_dim), generator, device, dtype or torch.float32, batch_axis=0)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


_ANALYTIC_KL: dict[tuple[type, type], Callable[[object, object], Tensor]] = {}


def register_kl(q_type: type, p_type: type):
    """Register a closed-form KL(q || p) per latent dimension for a (posterior, prior) pair of types."""

    def decorate(fn: Callable[[object, object], Tensor]):
        _ANALYTIC_KL[(q_type, p_type)] = fn
        return fn

    return decorate


def analytic_kl_per_dim(q, p) -> Tensor | None:
    """KL(q || p) per latent dimension (shape of a sample without the sample axis) when a closed
    form is registered for the pair's exact types, else None (use the Monte Carlo estimate)."""
    fn = _ANALYTIC_KL.get((type(q), type(p)))
    return None if fn is None else fn(q, p)


@register_kl(DiagonalGaussian, StandardNormal)
def _kl_gaussian_standard(q: DiagonalGaussian, p: StandardNormal) -> Tensor:
    return q.kl_per_dim()  # paper appendix B


class Bernoulli:
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logit_d)), for binary (or [0, 1]) data.

    log p = x * logit - softplus(logit), computed through ``binary_cross_entropy_with_logits``,
    which is stable for large |logit|.
    """

    discrete = True  # log_prob is a log-probability of the data (bits/dim apply)

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
        """x ~ p(x|z) as 0.0 / 1.0 in float32: uniform < sigmoid(logit) (the batch axis is the one
        before the event dimensions)."""
        p = torch.sigmoid(_wide(self.logits))
        u = uniform(p.shape, generator, p.device, p.dtype, batch_axis=-(self.event_ndim + 1))
        return (u < p).to(p.dtype)


class Gaussian:
    """p(x|z) = N(x; mean, diag(exp(log_var))), the paper's decoder for real-valued data
    (appendix C.2: sigmoid mean, linear log-variance, learned per pixel and per z).

    With a fixed ``log_var`` this is the MSE loss of the tutorials: -log p(x|z) =
    ||x - mean||^2 / (2 sigma^2) + D/2 * log(2 pi sigma^2), i.e. MSE up to the scale
    1/(2 sigma^2) and an additive constant.
    """

    discrete = False  # log_prob is a density: no bits/dim

    def __init__(self, mean: Tensor, log_var: Tensor, event_ndim: int = 1,
                 log_var_bounds: tuple[float, float] | None = None):
        self._mean = mean
        self.log_var = log_var
        self.event_ndim = event_ndim
        self.log_var_bounds = log_var_bounds  # the clamp a learned log_var went through, if any

    @property
    def mean(self) -> Tensor:
        return self._mean

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.log_var)

    def at_clamp(self) -> Tensor | None:
        """Where the learned log-variance sits at its clamp (bool, shape of the mean); None for a
        variance that was not clamped (fixed, or a user's likelihood)."""
        if self.log_var_bounds is None:
            return None
        lo, hi = self.log_var_bounds
        return (self.log_var <= lo) | (self.log_var >= hi)

    def log_prob(self, x: Tensor) -> Tensor:
        mean, log_var, x = _wide(self._mean), _wide(self.log_var), _wide(x)
        return _sum_event(-0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var)), self.event_ndim)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """x = mean + sigma * eps in float32 or wider (the batch axis is the one before the event dimensions)."""
        mean, std = _wide(self._mean), torch.exp(0.5 * _wide(self.log_var))
        eps = standard_normal(mean.shape, generator, mean.device, mean.dtype, batch_axis=-(self.event_ndim + 1))
        return mean + std * eps


class DiscretizedLogistic:
    """p(x|z) for 8-bit images scaled to [0, 1]: each pixel's 256 values k/255 are bins of
    width 1/255 under a logistic(mean, scale) density (Salimans et al. 2017, PixelCNN++,
    with one component), the first and last bins stretched to -inf and +inf so the 256
    probabilities sum to 1:

        P(x = k/255) = sigmoid((x + 1/510 - mean) / s) - sigmoid((x - 1/510 - mean) / s)

    ``log_prob`` is therefore a log-probability of the pixel values (not a density), and
    -log_prob / (D ln 2) is the bits per dimension reported in the literature.
    Values between bins are scored as the nearest bin's centre would be (no rounding is done;
    the edge tests use half a bin of slack).
    """

    BIN = 1.0 / 255.0
    # The one clamp of the log-scale (decoders pass theirs unclamped). s >= 3.4e-4: a twelfth of a
    # bin width, which puts 99.4% of an interior pixel's mass in its bin; s <= 148 is flatter than
    # any use of [0, 1] needs, and keeps bin widths / s far from float32 underflow.
    LOG_SCALE_MIN = -8.0
    LOG_SCALE_MAX = 5.0

    discrete = True  # log_prob is a log-probability of the 256 levels (bits/dim apply)

    def __init__(self, mean: Tensor, log_scale: Tensor, event_ndim: int = 1):
        self._mean = mean
        self.log_scale = log_scale.clamp(self.LOG_SCALE_MIN, self.LOG_SCALE_MAX)
        self.event_ndim = event_ndim

    def at_clamp(self) -> Tensor:
        """Where the log-scale sits at its clamp (bool, shape of the mean)."""
        return (self.log_scale <= self.LOG_SCALE_MIN) | (self.log_scale >= self.LOG_SCALE_MAX)

    @property
    def mean(self) -> Tensor:
        """The logistic's location clamped to [0, 1] (close to the discretized mean when s is small)."""
        return self._mean.clamp(0.0, 1.0)

    def log_prob_per_dim(self, x: Tensor) -> Tensor:
        """log P(x) per pixel, unsummed, in float32 (or wider)."""
        mean, log_scale, x = _wide(self._mean), _wide(self.log_scale), _wide(x)
        inv_s = torch.exp(-log_scale)
        centered = x - mean
        plus = (centered + 0.5 * self.BIN) * inv_s
        minus = (centered - 0.5 * self.BIN) * inv_s
        log_cdf_plus = F.logsigmoid(plus)  # log P(X <= upper edge): the first bin
        log_sf_minus = F.logsigmoid(-minus)  # log P(X > lower edge): the last bin
        # A middle bin: log(sigmoid(plus) - sigmoid(minus)), written so that neither
        # subtraction cancels: sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)).
        log_mid = F.logsigmoid(plus) + F.logsigmoid(-minus) + _log1mexp(plus - minus)
        return torch.where(x < 0.5 * self.BIN, log_cdf_plus,
                           torch.where(x > 1.0 - 0.5 * self.BIN, log_sf_minus, log_mid))

    def log_prob(self, x: Tensor) -> Tensor:
        lp = self.log_prob_per_dim(x.expand_as(self._mean) if x.dim() < self._mean.dim() else x)
        return _sum_event(lp, self.event_ndim)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Logistic noise, rounded to the nearest bin and clamped to [0, 1]."""
        mean, log_scale = _wide(self._mean), _wide(self.log_scale)
        u = uniform(mean.shape, generator, mean.device, mean.dtype, batch_axis=-(self.event_ndim + 1))
        u = u.clamp(1e-6, 1 - 1e-6)
        scale = torch.exp(log_scale)  # clamped once, in the constructor
        x = mean + scale * (torch.log(u) - torch.log1p(-u))
        return (x.clamp(0.0, 1.0) * 255.0).round() / 255.0


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(-a)) for a > 0, accurate for both small and large a (Maechler 2012)."""
    a = a.clamp(min=1e-12)
    return torch.where(a < math.log(2), torch.log(-torch.expm1(-a)), torch.log1p(-torch.exp(-a)))
