"""Objectives: pure functions of (model, batch) that return named terms in nats.

Each returns a dict. ``loss`` is the scalar to minimise (mean over the batch); the
other terms are per example (shape (B,)) with ``reduction="none"`` or batch means
with ``reduction="mean"`` (the default). Signs: ``elbo`` and ``reconstruction``
(E_q[log p(x|z)]) are log-densities, higher is better; ``kl`` is >= 0.

``x_in`` is what the encoder reads when it is not ``x`` itself: the corrupted batch of a denoising
model (``aevb.corruption``), while the likelihood scores the clean ``x``. The bound is then that of x
given the corrupted input (Im et al. 2017's denoising criterion). None: the encoder reads x.

``y`` is the batch's labels for a conditional model (``aevb.conditional``) and None
otherwise; with it every term is conditional on y: the ELBO bounds log p(x|y), the
importance-weighted bound estimates log p(x|y).

The objectives see a model only through its posterior ``model.encode`` (q(z|x), with
``rsample_with_log_prob``), its prior ``model.prior`` and its likelihood ``model.decode``: the KL is
the closed form where the (posterior, prior) pair has one (``distributions.analytic_kl_per_dim``)
and the Monte Carlo estimate otherwise, so new posteriors and priors need no change here.
``OBJECTIVES`` maps the names a ``TrainConfig.objective`` and a family's ``capabilities.objectives``
use to these functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .distributions import analytic_kl_per_dim

Terms = dict[str, Tensor]


def reduce_terms(terms: Terms, reduction: str) -> Terms:
    """``reduction="mean"``: every term but ``loss`` averaged over the batch; ``"none"``: as they are."""
    if reduction == "none":
        return terms
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
    return {k: (v if k == "loss" else v.mean()) for k, v in terms.items()}


def as_images(model, x: Tensor) -> Tensor:
    """x shaped as the model's images: (B, D) or (B, C, H, W) -> (B, C, H, W)."""
    return x.reshape(x.shape[0], *model.config.input_shape)


def kl_terms(q, prior, z: Tensor, log_q: Tensor, kl: str = "analytic") -> tuple[Tensor, Tensor | None]:
    """KL(q(z|x) || p(z)) per example (B,) and, where q and p factorise over the latent dimensions,
    per dimension (B, Z) (else None).

    ``kl="analytic"`` (SGVB estimator B) uses the closed form when the pair has one; otherwise, and
    for ``kl="mc"`` (estimator A), the average over the L samples z (L, B, Z) of log q(z|x) - log p(z)
    (``log_q`` is log q(z|x) at those samples, (L, B)).
    """
    if kl not in ("analytic", "mc"):
        raise ValueError(f"kl must be 'analytic' or 'mc'; got {kl!r}")
    dims = analytic_kl_per_dim(q, prior) if kl == "analytic" else None
    if dims is None and hasattr(q, "log_prob_per_dim") and hasattr(prior, "log_prob_per_dim"):
        dims = (q.log_prob_per_dim(z) - prior.log_prob_per_dim(z)).mean(0)  # q and p factorise over dimensions
    if dims is not None:
        return dims.sum(-1), dims
    return (log_q.float() - prior.log_prob(z)).mean(0), None


def encoder_input(model, x: Tensor, x_in: Tensor | None) -> Tensor:
    """What the encoder reads, shaped as images: ``x_in`` (a denoising model's corrupted batch) or ``x``."""
    return as_images(model, x if x_in is None else x_in)


def elbo(model, x: Tensor, samples: int = 1, kl: str = "analytic", beta: float = 1.0, free_bits: float = 0.0,
         generator: torch.Generator | None = None, reduction: str = "mean", y: Tensor | None = None,
         x_in: Tensor | None = None) -> Terms:
    """The SGVB estimate of the evidence lower bound (paper section 2.3).

    kl="analytic" is estimator B (eq. 10): KL(q(z|x) || p(z)) in closed form plus
    the L-sample average of log p(x|z). kl="mc" is estimator A (eq. 6): the whole
    bound log p(x|z) + log p(z) - log q(z|x) averaged over L samples.

    The loss may differ from -ELBO in two ways, neither of which changes the reported
    ``elbo``: ``beta`` weights the KL (beta-VAE, warm-up), and ``free_bits`` (lambda, nats
    per latent dimension; Kingma et al. 2016) replaces each dimension's batch-mean KL
    by max(lambda, KL_j), so dimensions below lambda are not pushed further to the prior.
    """
    if kl not in ("analytic", "mc"):
        raise ValueError(f"kl must be 'analytic' or 'mc'; got {kl!r}")
    q = model.encode(encoder_input(model, x, x_in), y)
    x = as_images(model, x)
    z, log_q = q.rsample_with_log_prob(samples, generator=generator)  # (L, B, Z), (L, B)
    reconstruction = model.decode(z, y).log_prob(x).mean(0)  # (B,)
    kl_term, kl_dims = kl_terms(q, model.prior, z, log_q, kl)  # (B,), (B, Z) or None
    bound = reconstruction - kl_term
    if free_bits > 0:
        if kl_dims is None:
            raise ValueError("free bits need a KL per latent dimension; this posterior and prior do not factorise")
        kl_loss = torch.clamp(kl_dims.mean(0), min=free_bits).sum()
    else:
        kl_loss = kl_term.mean()
    loss = -reconstruction.mean() + beta * kl_loss
    return reduce_terms({"loss": loss, "elbo": bound, "reconstruction": reconstruction, "kl": kl_term}, reduction)


def log_weights(model, x: Tensor, k: int, generator: torch.Generator | None = None,
                chunk: int | None = None, y: Tensor | None = None, x_in: Tensor | None = None) -> Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), z_i ~ q(z|x): shape (k, B).

    ``chunk`` bounds how many samples are decoded at once (memory ~ chunk * B * D).
    """
    q = model.encode(encoder_input(model, x, x_in), y)
    x = as_images(model, x)
    chunk = chunk or k
    parts = []
    for start in range(0, k, chunk):
        z, log_q = q.rsample_with_log_prob(min(chunk, k - start), generator=generator)  # (c, B, Z), (c, B)
        parts.append(model.decode(z, y).log_prob(x) + model.prior.log_prob(z) - log_q)
    return torch.cat(parts, 0)


def iwae_bound(model, x: Tensor, k: int, generator: torch.Generator | None = None,
               chunk: int | None = None, reduction: str = "mean", y: Tensor | None = None,
               x_in: Tensor | None = None, **_: object) -> Terms:
    """The importance-weighted bound (Burda et al. 2016): log (1/k) sum_i w_i.

    Equals the ELBO at k=1 and rises to log p(x) as k grows; it is the
    importance-sampled estimate of log p(x). The log-mean-exp is taken in float64.
    """
    lw = log_weights(model, x, k, generator=generator, chunk=chunk, y=y, x_in=x_in)
    bound = (torch.logsumexp(lw.double(), 0) - math.log(k)).to(lw.dtype)
    return reduce_terms({"loss": -bound.mean(), "iwae": bound}, reduction)


def ae_loss(model, x: Tensor, reduction: str = "mean", y: Tensor | None = None, x_in: Tensor | None = None,
            **_: object) -> Terms:
    """The deterministic autoencoder's loss: -log p(x | z = code(x)).

    With a Bernoulli decoder this is the summed binary cross-entropy; with
    ``gaussian_fixed`` it is the summed squared error / (2 sigma^2) plus a constant.
    """
    code = model.embed(encoder_input(model, x, x_in), y)
    reconstruction = model.decode(code, y).log_prob(as_images(model, x))
    return reduce_terms({"loss": -reconstruction.mean(), "reconstruction": reconstruction}, reduction)


# The objectives by the names TrainConfig.objective and Capabilities.objectives use.
OBJECTIVES = {"elbo": elbo, "iwae": iwae_bound, "reconstruction": ae_loss}
