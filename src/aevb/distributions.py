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


LOG_SCALE_MIN = -8.0
LOG_SCALE_MAX = 5.0


def clamp_log_scale(log_scale: Tensor) -> Tensor:
    """The one clamp of a discretized logistic's log-scale (every component of every 8-bit likelihood goes
    through here; decoders pass theirs unclamped). s >= 3.4e-4: a twelfth of a bin width, which puts 99.4% of
    an interior pixel's mass in its bin; s <= 148 is flatter than any use of [0, 1] needs, and keeps bin
    widths / s far from float32 underflow."""
    return log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)


BIN = 1.0 / 255.0


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of 8-bit values x = k/255 under logistic(mean, exp(log_scale)) integrated over each value's
    1/255-wide bin, elementwise (broadcast), in float32 or wider; the first and last bins stretched to -inf
    and +inf, as PixelCNN++ does, so the 256 probabilities sum to 1. ``log_scale`` is taken as it is
    (clamped by the caller, through ``clamp_log_scale``)."""
    mean, log_scale, x = _wide(mean), _wide(log_scale), _wide(x)
    inv_s = torch.exp(-log_scale)
    centered = x - mean
    plus = (centered + 0.5 * BIN) * inv_s
    minus = (centered - 0.5 * BIN) * inv_s
    log_cdf_plus = F.logsigmoid(plus)  # log P(X <= upper edge): the first bin
    log_sf_minus = F.logsigmoid(-minus)  # log P(X > lower edge): the last bin
    # A middle bin: log(sigmoid(plus) - sigmoid(minus)), written so that neither
    # subtraction cancels: sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(b - a)).
    log_mid = F.logsigmoid(plus) + F.logsigmoid(-minus) + _log1mexp(plus - minus)
    return torch.where(x < 0.5 * BIN, log_cdf_plus, torch.where(x > 1.0 - 0.5 * BIN, log_sf_minus, log_mid))


def _logistic_bins(mean: Tensor, log_scale: Tensor, u: Tensor) -> Tensor:
    """A logistic(mean, exp(log_scale)) draw from uniforms u, rounded to the nearest of the 256 values and
    clamped to [0, 1]: exactly the bins ``discretized_logistic_log_prob`` scores (edges to +-inf)."""
    u = u.clamp(1e-6, 1 - 1e-6)
    x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
    return (x.clamp(0.0, 1.0) * 255.0).round() / 255.0


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

    BIN = BIN
    LOG_SCALE_MIN = LOG_SCALE_MIN  # the clamp of ``clamp_log_scale``
    LOG_SCALE_MAX = LOG_SCALE_MAX

    discrete = True  # log_prob is a log-probability of the 256 levels (bits/dim apply)

    def __init__(self, mean: Tensor, log_scale: Tensor, event_ndim: int = 1):
        self._mean = mean
        self.log_scale = clamp_log_scale(log_scale)
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
        return discretized_logistic_log_prob(x, self._mean, self.log_scale)

    def log_prob(self, x: Tensor) -> Tensor:
        lp = self.log_prob_per_dim(x.expand_as(self._mean) if x.dim() < self._mean.dim() else x)
        return _sum_event(lp, self.event_ndim)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Logistic noise, rounded to the nearest bin and clamped to [0, 1]."""
        mean, log_scale = _wide(self._mean), _wide(self.log_scale)
        u = uniform(mean.shape, generator, mean.device, mean.dtype, batch_axis=-(self.event_ndim + 1))
        return _logistic_bins(mean, log_scale, u)


def mixture_params_per_channel(components: int, channels: int) -> int:
    """P, the decoder's parameter planes per image channel for ``DiscretizedLogisticMixture.from_params``:
    K logits, K means, K log-scales and, for 3 channels, K planes of the 3 colour coefficients."""
    return 3 * components + (components if channels == 3 else 0)


class DiscretizedLogisticMixture:
    """p(x|z) for 8-bit images (C, H, W) scaled to [0, 1]: at each pixel a mixture of K discretized logistics
    (Salimans et al. 2017, PixelCNN++; NVAE's decoder), the mixture weights shared by the pixel's channels:

        P(x_pixel) = sum_k pi_k prod_c P_DL(x_c; mu_kc, s_kc)

    with each channel's P_DL the ``DiscretizedLogistic`` bin probability (edge bins to +-inf, the log-scale
    clamped by ``clamp_log_scale``). For 3 channels the means are autoregressive in the channels, as in
    PixelCNN++: mu_k,G = m_k,G + a_k x_R and mu_k,B = m_k,B + b_k x_R + c_k x_G, with (a, b, c) = tanh of
    the coefficients; for 1 channel it is the mixture alone. With K = 1 (and, for 3 channels, zero
    coefficients) it is ``DiscretizedLogistic`` exactly.

    ``logits`` (..., K, H, W); ``means``, ``log_scales`` (..., K, C, H, W); ``coeffs`` (..., K, 3, H, W) for
    3 channels, else None. ``log_prob`` is a log-probability of the pixel values (bits/dim apply), computed
    in float32 or wider.
    """

    discrete = True  # log_prob is a log-probability of the 256 levels (bits/dim apply)
    event_ndim = 3

    def __init__(self, logits: Tensor, means: Tensor, log_scales: Tensor, coeffs: Tensor | None = None):
        channels = means.shape[-3]
        if (coeffs is None) != (channels != 3):
            raise ValueError(f"the colour coefficients are for 3 channels (and needed there); got {channels} "
                             f"channels and coeffs {'None' if coeffs is None else tuple(coeffs.shape)}")
        self.logits = logits
        self.means = means
        self.log_scales = clamp_log_scale(log_scales)
        self.coeffs = None if coeffs is None else torch.tanh(_wide(coeffs))

    @classmethod
    def from_params(cls, params: Tensor, components: int, mean_fn=None) -> "DiscretizedLogisticMixture":
        """From a decoder's planes (..., P, C, H, W), P = ``mixture_params_per_channel(K, C)``: the logits
        (summed over the channels: one weight per pixel), the means (through ``mean_fn``, e.g. a sigmoid),
        the log-scales and, for 3 channels, the coefficients (a, b, c as the 3 "channels" of their planes)."""
        k = components
        channels = params.shape[-3]
        logits = params[..., :k, :, :, :].sum(-3)  # (..., K, H, W)
        means = params[..., k : 2 * k, :, :, :]
        means = means if mean_fn is None else mean_fn(means)
        log_scales = params[..., 2 * k : 3 * k, :, :, :]
        coeffs = params[..., 3 * k : 4 * k, :, :, :] if channels == 3 else None
        return cls(logits, means, log_scales, coeffs)

    @property
    def components(self) -> int:
        return self.logits.shape[-3]

    def at_clamp(self) -> Tensor:
        """Where a component's log-scale sits at its clamp (bool, (..., K, C, H, W))."""
        return (self.log_scales <= LOG_SCALE_MIN) | (self.log_scales >= LOG_SCALE_MAX)

    def _channel_means(self, x: Tensor) -> Tensor:
        """The components' means given the pixel values x (..., C, H, W) of the channels before: (..., K, C, H, W)."""
        means = _wide(self.means)
        if self.coeffs is None:
            return means
        x = _wide(x).unsqueeze(-4)  # (..., 1, 3, H, W)
        a, b, c = self.coeffs.unbind(-3)  # (..., K, H, W) each
        r = means[..., 0, :, :]
        g = means[..., 1, :, :] + a * x[..., 0, :, :]
        bl = means[..., 2, :, :] + b * x[..., 0, :, :] + c * x[..., 1, :, :]
        return torch.stack(torch.broadcast_tensors(r, g, bl), -3)

    def log_prob_per_pixel(self, x: Tensor) -> Tensor:
        """log P(x) per pixel (..., H, W): the log of the mixture over the components of the channels' product."""
        lp = discretized_logistic_log_prob(_wide(x).unsqueeze(-4), self._channel_means(x), self.log_scales)
        log_mix = torch.log_softmax(_wide(self.logits), -3) + lp.sum(-3)  # (..., K, H, W)
        return torch.logsumexp(log_mix, -3)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.log_prob_per_pixel(x).sum((-2, -1))

    @property
    def mean(self) -> Tensor:
        """sum_k pi_k of each component's location clamped to [0, 1], the colour coefficients applied to the
        component's own red and green locations (..., C, H, W): close to the mixture's mean when the scales
        are small."""
        weights = torch.softmax(_wide(self.logits), -3).unsqueeze(-3)  # (..., K, 1, H, W)
        means = _wide(self.means).clamp(0.0, 1.0)
        if self.coeffs is not None:
            a, b, c = self.coeffs.unbind(-3)
            r = means[..., 0, :, :]
            g = (means[..., 1, :, :] + a * r).clamp(0.0, 1.0)
            means = torch.stack([r, g, (means[..., 2, :, :] + b * r + c * g).clamp(0.0, 1.0)], -3)
        return (weights * means).sum(-4)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x|z) on the 256 values: a component per pixel by the Gumbel-max trick, then each channel's
        logistic draw rounded to its bin, red, green, blue in turn (green's and blue's means use the values
        drawn before, as ``log_prob`` uses the data's)."""
        logits = _wide(self.logits)
        g = uniform(logits.shape, generator, logits.device, logits.dtype, batch_axis=-4).clamp(1e-6, 1 - 1e-6)
        pick = (logits - torch.log(-torch.log(g))).argmax(-3)  # (..., H, W)
        onehot = F.one_hot(pick, self.components).movedim(-1, -3).to(logits.dtype)  # (..., K, H, W)

        def chosen(t: Tensor) -> Tensor:  # (..., K, C', H, W) -> (..., C', H, W), the picked component's
            return (t * onehot.unsqueeze(-3)).sum(-4)

        means, log_scales = chosen(_wide(self.means)), chosen(_wide(self.log_scales))
        u = uniform(means.shape, generator, means.device, means.dtype, batch_axis=-4)
        if self.coeffs is None:
            return _logistic_bins(means, log_scales, u)
        a, b, c = chosen(self.coeffs).unbind(-3)
        r = _logistic_bins(means[..., 0, :, :], log_scales[..., 0, :, :], u[..., 0, :, :])
        gr = _logistic_bins(means[..., 1, :, :] + a * r, log_scales[..., 1, :, :], u[..., 1, :, :])
        bl = _logistic_bins(means[..., 2, :, :] + b * r + c * gr, log_scales[..., 2, :, :], u[..., 2, :, :])
        return torch.stack([r, gr, bl], -3)


def _log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(-a)) for a > 0, accurate for both small and large a (Maechler 2012)."""
    a = a.clamp(min=1e-12)
    return torch.where(a < math.log(2), torch.log(-torch.expm1(-a)), torch.log1p(-torch.exp(-a)))
