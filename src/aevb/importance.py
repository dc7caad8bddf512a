"""Importance-sampled log p(x) in bounded memory: the engine behind ``evaluate.log_likelihood``.

    log p(x) ~= log (1/K) sum_k w_k,   w_k = p(x|z_k) p(z_k) / q(z_k|x),   z_k = mu(x) + sigma(x) * eps_k

How the work is laid out (``plan_chunks``, ``importance_log_likelihood``):

- each image is encoded once (``batch_size`` images at a time), never once per sample;
- the (image, sample) rows are decoded in chunks of ``images x samples`` rows whose working set
  (bytes per row measured by one probe pass of the decoder, ``decoder_row_bytes``) stays under
  ``max_chunk_bytes``; each image's log-sum-exp over its K samples is accumulated chunk by chunk
  in float64, so memory is bounded by max_chunk_bytes + batch_size x (the encoder's working set per
  image), whatever K and the number of images;
- a chunk's noise is drawn in one call, shape (images, samples, Z), in the same order on every path.

A Gaussian posterior with the N(0, I) prior (the ``vae`` family) takes the paths below, which draw
eps themselves; any other posterior or prior (a family's own) takes ``posterior_log_weights``: the
posterior's ``rsample_with_log_prob`` for all the batch's images at once, ``samples`` at a time, with
the prior's ``log_prob``.

An MLP decoder with a Bernoulli likelihood takes a fast path (``bernoulli_mlp_log_weights``) that
gives the same log-weights with less work per pixel than the decoder's own ``log_prob``:

    log p(x|z) = sum_d x_d l_d - softplus(l_d)                  (l = W h + b, the decoder's logits)
               = h . u + c - sum_d log(2 cosh(l_d / 2))         u = W^T (x - 1/2), c = b . (x - 1/2)
    log(2 cosh(l / 2)) = |l| / 2 - log sigmoid(|l|)

The x-dependent part is one dot product per row (u and c once per image), and the rest is a sum of
|l| and one log per ``LOG_GROUP`` pixels: sigmoid(|l|) lies in [1/2, 1], so a product of up to 64
of them cannot underflow float32. log p(z) - log q(z|x) reduces to (sum eps^2 - sum z^2 + sum
log sigma^2) / 2, the 2 pi terms cancelling. On a CPU the layers run through oneDNN's fused
linear + activation (``dense_layer``); elsewhere through addmm, with tanh as 2 sigmoid(2a) - 1
(absolute error ~1e-7). Why these choices, with the measurements: docs/performance.md, "Evaluation speed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .distributions import DiagonalGaussian, StandardNormal, standard_normal, standard_normal_log_prob
from .nets import MLPDecoder, onednn_linear_works

DEFAULT_CHUNK_BYTES = 16 * 2**20  # decoder working set of a chunk (generic-path bytes): the fastest of 4-64 MiB
LOG_GROUP = 16  # pixels whose sigmoid(|l|) are multiplied before one log is taken


@dataclass(frozen=True)
class ChunkPlan:
    """How the (image, sample) rows are cut: ``images`` x ``samples`` rows per chunk, each image's K
    samples in ``ceil(K / samples)`` chunks; ``row_bytes`` is the decoder's working set per row."""

    images: int
    samples: int
    row_bytes: int

    @property
    def rows(self) -> int:
        return self.images * self.samples

    @property
    def chunk_bytes(self) -> int:
        return self.rows * self.row_bytes


def plan_chunks(k: int, n_images: int, row_bytes: int, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                max_images: int | None = None, max_samples: int | None = None) -> ChunkPlan:
    """The largest chunk within ``max_chunk_bytes`` (never less than one row).

    With K samples at most what fits, several whole images share a chunk; otherwise one image's
    samples are split into equal chunks (the last no larger than the others).
    """
    if k < 1 or n_images < 1 or row_bytes < 1:
        raise ValueError(f"need k, n_images, row_bytes >= 1; got {k}, {n_images}, {row_bytes}")
    rows = max(1, max_chunk_bytes // row_bytes)
    samples = min(k, rows, max_samples or k)
    if samples == k:
        images = max(1, min(n_images, max_images or n_images, rows // k))
    else:
        images = 1
        samples = math.ceil(k / math.ceil(k / samples))  # equal chunks: 5000 in 5 x 1000, not 4 x 1100 + 600
    return ChunkPlan(images=images, samples=samples, row_bytes=row_bytes)


def decoder_row_bytes(model) -> int:
    """Bytes one decoded row keeps alive on the generic path: the outputs of every decoder layer for
    one z (measured by a probe pass with forward hooks), the noise and z, and three tensors the size
    of the likelihood's parameters (``log_prob``'s temporaries). The fast path keeps less. Both paths
    plan with this figure, so they cut the same chunks and draw the same noise for a seed."""
    sizes: list[int] = []

    def hook(_module, _inputs, output):
        if isinstance(output, Tensor):
            sizes.append(output.numel() * output.element_size())

    leaves = [m for m in model.decoder.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        param = next(model.parameters())
        label = torch.zeros(1, dtype=torch.long, device=param.device) if model.config.num_classes else None
        with torch.no_grad():
            lik = model.decode(torch.zeros(1, model.capabilities.latent_dim, device=param.device, dtype=param.dtype),
                               label)
    finally:
        for h in handles:
            h.remove()
    out = lik.logits if hasattr(lik, "logits") else lik.mean
    temporaries = 3 * out.numel() * max(out.element_size(), 4)
    noise = 2 * model.capabilities.latent_dim * param.element_size()
    return sum(sizes) + temporaries + noise


def gaussian_with_standard_prior(model, q) -> bool:
    """q(z|x) a diagonal Gaussian and p(z) = N(0, I): what the eps-drawing paths compute."""
    return type(q) is DiagonalGaussian and type(model.prior) is StandardNormal


def has_fast_path(model) -> bool:
    """An MLP decoder ending in Bernoulli logits, in float32 or float64."""
    dec = model.decoder
    return (isinstance(dec, MLPDecoder) and model.config.likelihood == "bernoulli" and dec.log_var is None
            and dec.mean.weight.dtype in (torch.float32, torch.float64))


def draw_noise(generator: torch.Generator, images: int, samples: int, latent_dim: int, like: Tensor) -> Tensor:
    """eps ~ N(0, I) for one chunk in one call: shape (images, samples, Z)."""
    return standard_normal((images, samples, latent_dim), generator, like.device, like.dtype)


def generic_log_weights(model, x: Tensor, mu: Tensor, log_var: Tensor, eps: Tensor, y: Tensor | None = None) -> Tensor:
    """log w = log p(x|z) + log p(z) - log q(z|x) through the model's own decoder and ``log_prob``.

    x is (b, C, H, W), mu and log_var (b, Z), eps (b, s, Z), y a conditional model's b labels; returns (b, s).
    """
    q = DiagonalGaussian(mu[:, None], log_var[:, None])  # (b, 1, Z): broadcasts over samples
    z = q.mu + q.std * eps
    log_px_z = model.decode(z.transpose(0, 1), y).log_prob(x).t()  # decode takes the batch last: (s, b, Z)
    return log_px_z + standard_normal_log_prob(z) - q.log_prob(z)


def posterior_log_weights(model, x: Tensor, q, samples: int, generator: torch.Generator,
                          y: Tensor | None = None) -> Tensor:
    """log w for ``samples`` draws from any posterior q (batch shape (b,)) and the model's own prior:
    shape (b, samples)."""
    own = getattr(model, "importance_log_weights", None)  # a family that computes them in one pass of its own
    if callable(own):
        return own(x, q, samples, generator, y)
    z, log_q = q.rsample_with_log_prob(samples, generator=generator)  # (s, b, Z), (s, b)
    return (model.decode(z, y).log_prob(x) + model.prior.log_prob(z) - log_q).t()


@dataclass
class BernoulliPrep:
    """Per-image constants of the fast path: u = W^T (x - 1/2) (b, H), c = b . (x - 1/2) (b,),
    the posterior's mu, sigma and sum of log sigma^2, and a conditional model's one-hot labels (b, K)."""

    mu: Tensor
    std: Tensor
    half_log_var_sum: Tensor
    u: Tensor
    c: Tensor
    label: Tensor | None = None

    def select(self, sl: slice) -> BernoulliPrep:
        return BernoulliPrep(self.mu[sl], self.std[sl], self.half_log_var_sum[sl], self.u[sl], self.c[sl],
                             None if self.label is None else self.label[sl])


def bernoulli_prep(decoder: MLPDecoder, x: Tensor, mu: Tensor, log_var: Tensor,
                   label: Tensor | None = None) -> BernoulliPrep:
    centred = x.flatten(1).to(decoder.mean.weight.dtype) - 0.5  # (b, D)
    return BernoulliPrep(mu=mu, std=torch.exp(0.5 * log_var), half_log_var_sum=0.5 * log_var.sum(-1),
                         u=centred @ decoder.mean.weight, c=centred @ decoder.mean.bias,
                         label=None if label is None else label.to(mu.dtype))


def _tanh_(a: Tensor) -> Tensor:
    """tanh in place as 2 sigmoid(2a) - 1 (faster than torch.tanh on CPU; docs/performance.md)."""
    return a.mul_(2).sigmoid_().mul_(2).sub_(1)


def _activation_(module: nn.Module | None, a: Tensor) -> Tensor:
    if module is None or isinstance(module, nn.Identity):
        return a
    if isinstance(module, nn.Tanh):
        return _tanh_(a)
    if isinstance(module, nn.ReLU):
        return a.relu_()
    if isinstance(module, nn.Sigmoid):
        return a.sigmoid_()
    return module(a)


_ONEDNN_POST_OPS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Identity: "none", type(None): "none"}


def use_onednn(gemm: str, like: Tensor) -> bool:
    """``gemm="auto"``: oneDNN for float32 on CPU when it works; "onednn" insists; "torch" never."""
    if gemm not in ("auto", "onednn", "torch"):
        raise ValueError(f"gemm must be 'auto', 'onednn' or 'torch'; got {gemm!r}")
    ok = gemm != "torch" and like.device.type == "cpu" and like.dtype == torch.float32 and onednn_linear_works()
    if gemm == "onednn" and not ok:
        raise RuntimeError("oneDNN's linear is not usable here (needs float32 on a CPU build with mkldnn)")
    return ok


def dense_layer(h: Tensor, linear: nn.Linear, activation: nn.Module | None, onednn: bool) -> Tensor:
    """activation(h W^T + b) on rows h (R, in). With ``onednn`` one fused oneDNN call (the activation
    fused into the GEMM); otherwise addmm and the activation in place."""
    post_op = _ONEDNN_POST_OPS.get(type(activation))
    if onednn and post_op is not None:
        return torch.ops.mkldnn._linear_pointwise(h, linear.weight, linear.bias, post_op, [], "")
    return _activation_(activation, torch.addmm(linear.bias, h, linear.weight.t()))


def _mlp_trunk(decoder: MLPDecoder, z: Tensor, onednn: bool) -> Tensor:
    """The decoder's hidden layers on rows z (R, Z)."""
    h = z
    for linear, activation in decoder.hidden_layers():
        h = dense_layer(h, linear, activation, onednn)
    return h


def log_cosh_sum(logits: Tensor) -> Tensor:
    """sum_d log(2 cosh(l_d / 2)) over the last axis of (R, D) logits, overwriting them.

    = sum |l| / 2 - sum log sigmoid(|l|), with one log per LOG_GROUP pixels (a product of
    sigmoids in [1/2, 1]); sigmoid(|l|) rounds to 1 for |l| > 17, an error below 4e-8 per pixel.
    """
    rows, d = logits.shape
    a = logits.abs_()
    half_abs = 0.5 * a.sum(-1)
    s = a.sigmoid_()
    grouped = d - d % LOG_GROUP
    log_sig = s[:, :grouped].view(rows, grouped // LOG_GROUP, LOG_GROUP).prod(-1).log_().sum(-1)
    if grouped < d:
        log_sig += s[:, grouped:].log().sum(-1)
    return half_abs - log_sig


def bernoulli_mlp_log_weights(decoder: MLPDecoder, prep: BernoulliPrep, eps: Tensor, onednn: bool = False) -> Tensor:
    """The fast path's log w for eps (b, s, Z) and the per-image ``prep`` (b images): (b, s), float64."""
    b, s, zdim = eps.shape
    z = torch.addcmul(prep.mu[:, None], prep.std[:, None], eps)  # (b, s, Z)
    rows = z.view(b * s, zdim)
    if prep.label is not None:  # a conditional decoder reads [z, one-hot y]
        rows = torch.cat([z, prep.label[:, None].expand(b, s, -1)], -1).view(b * s, -1)  # (R, Z + K)
    h = _mlp_trunk(decoder, rows, onednn)  # (R, H)
    logits = dense_layer(h, decoder.mean, None, onednn)  # (R, D)
    x_term = torch.bmm(h.view(b, s, -1), prep.u[:, :, None]).view(b, s) + prep.c[:, None]
    log_px_z = x_term.double() - log_cosh_sum(logits).view(b, s).double()
    prior_minus_q = 0.5 * ((eps * eps).sum(-1) - (z * z).sum(-1)) + prep.half_log_var_sum[:, None]
    return log_px_z + prior_minus_q.double()


def _image_log_weights_chunks(model, x: Tensor, mu: Tensor, log_var: Tensor, k: int, plan: ChunkPlan,
                              generator: torch.Generator, fast: bool, onednn: bool, y: Tensor | None):
    """Yield (image slice, log-weights (b, s)) for the images of one encoded batch, chunk by chunk."""
    prep = bernoulli_prep(model.decoder, x, mu, log_var, model.condition(y)) if fast else None
    for start in range(0, len(x), plan.images):
        sl = slice(start, min(start + plan.images, len(x)))
        b = sl.stop - sl.start
        for done in range(0, k, plan.samples):
            eps = draw_noise(generator, b, min(plan.samples, k - done), mu.shape[-1], mu)
            if prep is not None:
                yield sl, bernoulli_mlp_log_weights(model.decoder, prep.select(sl), eps, onednn)
            else:
                yield sl, generic_log_weights(model, x[sl], mu[sl], log_var[sl], eps, None if y is None else y[sl])


@torch.no_grad()
def importance_log_likelihood(model, x: Tensor, k: int, generator: torch.Generator, batch_size: int = 100,
                              max_samples: int | None = None, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                              fast: bool = True, gemm: str = "auto", y: Tensor | None = None,
                              progress=None) -> Tensor:
    """Per-image log (1/K) sum_k w_k for images x (N, ...): shape (N,), float64 (given a conditional
    model's labels ``y``, of log p(x|y) with z ~ q(z|x, y)).

    ``batch_size`` images are encoded at once; ``max_samples`` caps the samples per image in one chunk;
    ``fast=False`` forces the generic path (the model's own ``log_prob``); ``gemm`` picks the fast
    path's matrix products ("auto": oneDNN when it works, see ``dense_layer``; "torch": addmm).
    """
    x = x.reshape(len(x), *model.config.input_shape)
    use_fast = fast and has_fast_path(model)
    plan = plan_chunks(k, len(x), decoder_row_bytes(model), max_chunk_bytes,
                       max_images=batch_size, max_samples=max_samples)
    onednn = use_fast and use_onednn(gemm, next(model.parameters()))
    out = torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        q = model.encode(xb, yb)
        if gaussian_with_standard_prior(model, q):
            chunks = _image_log_weights_chunks(model, xb, q.mu, q.log_var, k, plan, generator, use_fast, onednn, yb)
        else:
            per_draw = max(1, plan.rows // len(xb))  # samples of every image of the batch at once
            chunks = ((slice(0, len(xb)), posterior_log_weights(model, xb, q, min(per_draw, k - done), generator, yb))
                      for done in range(0, k, per_draw))
        for sl, lw in chunks:
            rows = slice(start + sl.start, start + sl.stop)
            out[rows] = torch.logaddexp(out[rows], torch.logsumexp(lw.double(), dim=1))
        if progress is not None:
            progress(len(xb))
    return out - math.log(k)
