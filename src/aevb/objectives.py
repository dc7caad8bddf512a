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

Two arguments come from the trainer rather than the configuration, to an objective that names them:
``dataset_size`` (N, the size of the training split, which beta-TCVAE's estimates of log q(z) weigh the
minibatch by) and ``step`` (the optimizer steps taken, which the capacity-annealed VAE's C follows).
The disentangling objectives (beta-TCVAE, DIP-VAE I and II, the capacity-annealed VAE, FactorVAE's VAE
loss) are described with their settings in docs/disentangling-models.md.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .distributions import DiagonalGaussian, analytic_kl_per_dim

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
    reconstruction, kl_term, kl_dims, _ = bound_parts(model, q, x, y, samples, kl, generator)
    loss = -reconstruction.mean() + beta * kl_loss(kl_term, kl_dims, free_bits)
    return reduce_terms({"loss": loss, "elbo": reconstruction - kl_term, "reconstruction": reconstruction,
                         "kl": kl_term}, reduction)


def bound_parts(model, q, x: Tensor, y: Tensor | None, samples: int, kl: str,
                generator) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """The ELBO's parts under the posterior ``q`` of the batch x: the L-sample average of log p(x|z) (B,),
    the KL (B,) and its split over the dimensions (B, Z) or None (``kl_terms``), and the samples z (L, B, Z)."""
    z, log_q = q.rsample_with_log_prob(samples, generator=generator)  # (L, B, Z), (L, B)
    reconstruction = model.decode(z, y).log_prob(as_images(model, x)).mean(0)  # (B,)
    kl_term, kl_dims = kl_terms(q, model.prior, z, log_q, kl)  # (B,), (B, Z) or None
    return reconstruction, kl_term, kl_dims, z


def kl_loss(kl_term: Tensor, kl_dims: Tensor | None, free_bits: float = 0.0) -> Tensor:
    """The KL part of the loss: the batch mean of ``kl_term`` (B,), or with ``free_bits`` lambda > 0 the
    sum over dimensions of max(lambda, the dimension's batch-mean KL) (``kl_dims`` (B, Z))."""
    if free_bits <= 0:
        return kl_term.mean()
    if kl_dims is None:
        raise ValueError("free bits need a KL per latent dimension; this posterior and prior do not factorise")
    return torch.clamp(kl_dims.mean(0), min=free_bits).sum()


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


# --- disentangling objectives (docs/disentangling-models.md) ------------------------------------------


def diagonal_gaussian(q, objective: str) -> DiagonalGaussian:
    """``q`` itself when it is a diagonal Gaussian q(z|x) = N(mu, diag(sigma^2)); the objectives that read
    mu and sigma (or evaluate q(z_i|x_j) for every pair) refuse any other posterior."""
    if not isinstance(q, DiagonalGaussian):
        raise ValueError(f"the {objective} objective needs a diagonal Gaussian q(z|x); this model's posterior is a "
                         f"{type(q).__name__} (train it without a flow and with one stochastic layer)")
    return q


def pairwise_log_q(q: DiagonalGaussian, z: Tensor) -> Tensor:
    """log q(z_ij | x_k) for every sample i, posterior k of the batch and dimension j: (B, B, Z), float32 or
    wider; ``z`` (B, Z) holds one sample per example."""
    mu, log_var = q.mu.float(), q.log_var.float()
    return DiagonalGaussian(mu[None], log_var[None]).log_prob_per_dim(z[:, None])  # (B, 1, Z) vs (1, B, Z)


def minibatch_log_weights(batch: int, dataset_size: int, estimator: str, device=None) -> Tensor:
    """log w_ik (B, B): the weight of q(z_i | x_k) in the estimate q(z_i) ~= sum_k w_ik q(z_i | x_k) from a
    minibatch of B examples drawn from N (Chen et al. 2018, appendix C).

    ``"mws"`` (minibatch-weighted sampling): w_ik = 1/B. Chen et al. write the normaliser as 1/(N B), which
    moves every estimate of log q by the constant -log N (and the total correlation by (Z - 1) log N); it
    changes no gradient, and 1/B makes the estimates those of the quantities themselves.
    ``"mss"`` (minibatch-stratified sampling): w_ii = 1/N for the sample's own posterior, (N - B + 1) / (N (B - 1))
    for one other example (the next one, cyclically) and 1/(B - 1) for the B - 2 others; the weights sum to 1.
    """
    if estimator == "mws":
        return torch.full((batch, batch), -math.log(batch), device=device)
    if estimator != "mss":
        raise ValueError(f"the estimator of log q(z) must be 'mws' or 'mss'; got {estimator!r}")
    if batch < 2 or dataset_size < batch:
        raise ValueError(f"minibatch-stratified sampling needs 2 <= batch size <= data set size; got a batch of "
                         f"{batch} from {dataset_size} examples")
    n, m = dataset_size, batch
    w = torch.full((m, m), 1.0 / (m - 1), dtype=torch.float64)
    i = torch.arange(m)
    w[i, (i + 1) % m] = (n - m + 1) / (n * (m - 1))
    w[i, i] = 1.0 / n
    return w.log().float().to(device)


def aggregate_log_densities(q: DiagonalGaussian, z: Tensor, dataset_size: int,
                            estimator: str = "mss") -> tuple[Tensor, Tensor]:
    """Minibatch estimates at the samples z (B, Z) of log q(z) and of log prod_j q(z_j), the aggregate
    posterior q(z) = (1/N) sum_n q(z|x_n) and its marginals: two tensors (B,)."""
    log_q = pairwise_log_q(q, z)  # (B, B, Z)
    log_w = minibatch_log_weights(len(z), dataset_size, estimator, z.device)  # (B, B)
    log_qz = torch.logsumexp(log_w + log_q.sum(-1), dim=1)  # (B,)
    log_marginals = torch.logsumexp(log_w[:, :, None] + log_q, dim=1)  # (B, Z)
    return log_qz, log_marginals.sum(-1)


def tcvae(model, x: Tensor, dataset_size: int, estimator: str = "mss", alpha: float = 1.0, beta: float = 1.0,
          gamma: float = 1.0, generator: torch.Generator | None = None, reduction: str = "mean",
          y: Tensor | None = None, x_in: Tensor | None = None, **_: object) -> Terms:
    """beta-TCVAE (Chen et al. 2018, eq. 4): the KL term of the ELBO split, at one sample z ~ q(z|x), into

        mutual_information   log q(z|x) - log q(z)              the index-code mutual information
        total_correlation    log q(z) - log prod_j q(z_j)       KL(q(z) || prod_j q(z_j))
        dimension_kl         log prod_j q(z_j) - log p(z)       sum_j KL(q(z_j) || p(z_j))

    with log q(z) and the marginals estimated on the minibatch (``aggregate_log_densities``, N =
    ``dataset_size``). The loss is -log p(x|z) + alpha * MI + beta * TC + gamma * dim-KL; at
    alpha = beta = gamma = 1 it is the Monte Carlo -ELBO exactly (the three terms telescope). ``elbo`` and
    ``kl`` are the usual bound and KL (closed form where there is one).
    """
    q = diagonal_gaussian(model.encode(encoder_input(model, x, x_in), y), "tcvae")
    reconstruction, kl_term, _, z = bound_parts(model, q, x, y, 1, "analytic", generator)
    z = z[0]  # (B, Z)
    log_qz_x = q.log_prob(z)
    log_qz, log_prod = aggregate_log_densities(q, z, dataset_size, estimator)
    mi, tc, dim_kl = log_qz_x - log_qz, log_qz - log_prod, log_prod - model.prior.log_prob(z)
    loss = -reconstruction.mean() + alpha * mi.mean() + beta * tc.mean() + gamma * dim_kl.mean()
    return reduce_terms({"loss": loss, "elbo": reconstruction - kl_term, "reconstruction": reconstruction,
                         "kl": kl_term, "mutual_information": mi, "total_correlation": tc, "dimension_kl": dim_kl},
                        reduction)


def dip_covariance(q: DiagonalGaussian, variant: str) -> Tensor:
    """The covariance DIP-VAE drives to the identity (Z, Z), over the batch (divided by B), float32 or wider:
    ``"i"`` Cov[mu(x)] (Kumar et al. 2018, eq. 6); ``"ii"`` Cov_q(z)[z] = E[diag sigma^2(x)] + Cov[mu(x)] (eq. 7)."""
    mu = q.mu.float()
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / len(mu)  # (Z, Z)
    if variant == "ii":
        cov = cov + torch.diag(q.log_var.float().exp().mean(0))
    elif variant != "i":
        raise ValueError(f"the DIP-VAE variant must be 'i' or 'ii'; got {variant!r}")
    return cov


def covariance_penalties(cov: Tensor) -> tuple[Tensor, Tensor]:
    """(sum over i != j of C_ij^2, sum over i of (C_ii - 1)^2): how far C (Z, Z) is from the identity."""
    diag = torch.diagonal(cov)
    return (cov**2).sum() - (diag**2).sum(), ((diag - 1) ** 2).sum()


def dip_vae(model, x: Tensor, variant: str, lambda_od: float = 10.0, lambda_d: float | None = None,
            samples: int = 1, kl: str = "analytic", beta: float = 1.0, free_bits: float = 0.0,
            generator: torch.Generator | None = None, reduction: str = "mean", y: Tensor | None = None,
            x_in: Tensor | None = None, **_: object) -> Terms:
    """DIP-VAE (Kumar et al. 2018): the (beta-weighted) -ELBO plus lambda_od * sum_{i!=j} C_ij^2 + lambda_d *
    sum_i (C_ii - 1)^2 for the batch covariance C of ``dip_covariance``. ``lambda_d`` None: the paper's
    10 * lambda_od for DIP-VAE-I, lambda_od for DIP-VAE-II. The two sums are logged as ``dip_off_diagonal``
    and ``dip_diagonal`` (each the batch's value, repeated for every example)."""
    if lambda_d is None:
        lambda_d = 10.0 * lambda_od if variant == "i" else lambda_od
    q = diagonal_gaussian(model.encode(encoder_input(model, x, x_in), y), f"dipvae-{variant}")
    reconstruction, kl_term, kl_dims, _ = bound_parts(model, q, x, y, samples, kl, generator)
    off, diag = covariance_penalties(dip_covariance(q, variant))
    loss = -reconstruction.mean() + beta * kl_loss(kl_term, kl_dims, free_bits) + lambda_od * off + lambda_d * diag
    batch = reconstruction.shape
    return reduce_terms({"loss": loss, "elbo": reconstruction - kl_term, "reconstruction": reconstruction,
                         "kl": kl_term, "dip_off_diagonal": off.expand(batch), "dip_diagonal": diag.expand(batch)},
                        reduction)


def dip_vae_i(model, x: Tensor, **kw) -> Terms:
    """DIP-VAE-I: ``dip_vae`` penalising Cov[mu(x)]."""
    return dip_vae(model, x, "i", **kw)


def dip_vae_ii(model, x: Tensor, **kw) -> Terms:
    """DIP-VAE-II: ``dip_vae`` penalising Cov_q(z)[z]."""
    return dip_vae(model, x, "ii", **kw)


def capacity_vae(model, x: Tensor, step: int | Tensor = 0, capacity_max: float = 25.0, capacity_steps: int = 100_000,
                 gamma: float = 1000.0, samples: int = 1, kl: str = "analytic",
                 generator: torch.Generator | None = None, reduction: str = "mean", y: Tensor | None = None,
                 x_in: Tensor | None = None, **_: object) -> Terms:
    """The capacity-annealed VAE (Burgess et al. 2018, eq. 8): -log p(x|z) + gamma * |KL - C| with KL the
    batch mean and C = ``aevb.schedules.capacity(step, ...)`` rising linearly from 0 to ``capacity_max`` nats
    over ``capacity_steps`` optimizer steps (the trainer passes ``step``). C is logged as ``capacity``."""
    from .schedules import capacity

    q = model.encode(encoder_input(model, x, x_in), y)
    reconstruction, kl_term, _, _ = bound_parts(model, q, x, y, samples, kl, generator)
    c = capacity(step, capacity_max, capacity_steps)
    loss = -reconstruction.mean() + gamma * (kl_term.mean() - c).abs()
    c_each = torch.as_tensor(c, dtype=kl_term.dtype, device=kl_term.device).expand(kl_term.shape)  # (B,)
    return reduce_terms({"loss": loss, "elbo": reconstruction - kl_term, "reconstruction": reconstruction,
                         "kl": kl_term, "capacity": c_each}, reduction)


def factor_vae(model, x: Tensor, gamma: float = 35.0, kl: str = "analytic", beta: float = 1.0,
               generator: torch.Generator | None = None, reduction: str = "mean", y: Tensor | None = None,
               x_in: Tensor | None = None, **_: object) -> Terms:
    """FactorVAE's VAE loss (Kim & Mnih 2018, eq. 2): the (beta-weighted) -ELBO plus gamma times the
    discriminator's estimate of the total correlation, E[log D(z) / (1 - D(z))] at z ~ q(z|x), which the model
    gives as ``model.log_density_ratio(z)`` (B,) with the discriminator's own parameters held fixed (the
    family trains them, ``aevb.models.factorvae``). Logged as ``total_correlation``."""
    q = model.encode(encoder_input(model, x, x_in), y)
    reconstruction, kl_term, _, z = bound_parts(model, q, x, y, 1, kl, generator)
    tc = model.log_density_ratio(z[0])  # (B,)
    loss = -reconstruction.mean() + beta * kl_term.mean() + gamma * tc.mean()
    return reduce_terms({"loss": loss, "elbo": reconstruction - kl_term, "reconstruction": reconstruction,
                         "kl": kl_term, "total_correlation": tc}, reduction)


# The objectives by the names TrainConfig.objective and Capabilities.objectives use.
OBJECTIVES = {"elbo": elbo, "iwae": iwae_bound, "reconstruction": ae_loss, "tcvae": tcvae, "dipvae-i": dip_vae_i,
              "dipvae-ii": dip_vae_ii, "capacity": capacity_vae, "factorvae": factor_vae}
