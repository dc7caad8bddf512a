"""The plain MLP VAE's training step written out by hand: the ELBO and every parameter gradient
without autograd.

A step of the paper's MLP VAE at the batch sizes it trains with (M = 100-128) is half GEMMs and half
everything around them: autograd's graph and its nodes, the tensors every operation allocates, the
elementwise passes of the likelihood, the KL and the activations' derivatives, each its own kernel.
``FastELBO`` computes the same loss and the same gradients as ``objectives.elbo`` followed by
``loss.backward()``, with the chain rule written out:

- every GEMM is the oneDNN call ``nets.dense`` makes (``torch.ops.mkldnn._linear_pointwise``, the
  activation fused into the forward GEMM); the encoder's ``mu`` and ``log_var`` heads run as one GEMM
  (their weights copied side by side each step: 2 x Z x H numbers) forward and backward;
- the activations' derivatives are the kernels autograd itself calls (``threshold_backward``,
  ``tanh_backward``, ``sigmoid_backward``), one pass each;
- the Bernoulli likelihood's gradient is sigmoid(logits) - x, written over the logits once their
  log-likelihood has been summed (one kernel for the value, two in-place passes for the gradient);
  the Gaussian's, the KL's and the reparameterization's are a few in-place passes over (B, Z) or (B, D);
- the gradients are written into buffers allocated at the first step and kept, and given to the
  parameters as their ``.grad``, so that the trainer's guard and fused optimizer read them as they
  read autograd's.

The noise is drawn exactly as ``objectives.elbo`` draws it (eps ~ N(0, I) of shape (L, B, Z) from the
step's generator, one call), so a run with the fast path follows the run without it: the same draws,
the same data order, losses and weights equal to float32 rounding (the chain rule's sums come in
another order than autograd's; ``tests/test_fastpath.py`` checks 1e-5).

What it covers (``why_not``): the VAE of one stochastic layer with the built-in MLP networks of any
depth, activations relu, tanh, sigmoid or linear, the Gaussian posterior (log-variance clamped) and the
N(0, I) prior, no labels; Bernoulli, Gaussian (learned, clamped log-variance) and fixed-variance
Gaussian decoders, identity or sigmoid mean; the SGVB ELBO with estimator A (``kl="mc"``) or B
(``"analytic"``), L samples, any KL weight beta, no free bits; float32, or bf16 as autocast runs it (the
GEMMs and activations in bf16; eps, z and every log-density in float32; float32 gradients), on a CPU where
oneDNN's fused linear runs; one process. The trainer takes it when ``why_not`` finds nothing (``AEVB_FASTPATH=0``
turns it off) and runs autograd otherwise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import LOG_2PI, GaussianPosterior, StandardNormal, standard_normal
from .nets import _POST_OPS, ONEDNN, MLPDecoder, MLPEncoder, layer_pairs, onednn_linear_works

ENABLED = os.environ.get("AEVB_FASTPATH", "1") != "0"
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_fixed")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # TrainConfig.precision -> the networks' compute dtype
_lin = None  # torch.ops.mkldnn._linear_pointwise, bound at first use


def _linear(x: Tensor, w: Tensor, b: Tensor | None, post_op: str = "none") -> Tensor:
    """post_op(x w^T + b): x (N, in), w (out, in) -> (N, out), one oneDNN call."""
    global _lin
    if _lin is None:
        _lin = torch.ops.mkldnn._linear_pointwise
    return _lin(x, w, b, post_op, [], "")


def why_not(model: nn.Module, train, distributed: bool = False) -> str | None:
    """None when ``FastELBO`` computes exactly the loss and gradients that ``train`` (a ``TrainConfig``)
    asks of ``model`` through autograd; else the reason it does not apply."""
    if not ENABLED:
        return "turned off (AEVB_FASTPATH=0)"
    if not (ONEDNN and onednn_linear_works()):
        return "oneDNN's fused linear is not available here (or AEVB_ONEDNN=0)"
    if distributed:
        return "data-parallel runs draw their noise per rank (aevb.distributed)"
    objective = train.objective or model.capabilities.default_objective
    if train.algorithm != "aevb" or objective != "elbo":
        return "only the ELBO of the aevb algorithm is written out"
    if train.precision not in DTYPES or train.compile:
        return "only float32 or bf16 eager steps (no fp16, no torch.compile)"
    if train.free_bits or train.input_noise:
        return "free bits and input noise are not written out"
    caps = model.capabilities
    if caps.conditional or not (caps.has_posterior and caps.has_prior):
        return "only unconditional models with a posterior and a prior"
    if not (type(model.encoder) is MLPEncoder and type(model.decoder) is MLPDecoder):
        return "only the built-in MLP networks"
    if set(model.encoder.heads) != {"mu", "log_var"} or type(getattr(model, "posterior", None)) is not GaussianPosterior:
        return "only the Gaussian posterior q(z|x) = N(mu, sigma^2) of the encoder's mu and log_var heads"
    if type(model.prior) is not StandardNormal or getattr(model, "top_encoder", None) is not None:
        return "only one stochastic layer with the N(0, I) prior"
    if _own_training(model):
        return "the model trains some of its parameters itself"
    if model.config.likelihood not in LIKELIHOODS:
        return f"the {model.config.likelihood} likelihood is not written out"
    pairs = layer_pairs(model.encoder.trunk) + model.decoder.hidden_layers()
    if any(_POST_OPS.get(type(act)) is None for _, act in pairs):
        return f"activation {model.config.activation} has no fused oneDNN form"
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        return "only float32 models on the CPU"
    return None


def _own_training(model: nn.Module) -> bool:
    """Whether the model updates parameters outside the objective's gradient (``after_step``, a subset
    in ``optimized_parameters``), or has parameters the written-out step does not know."""
    from .models.base import LatentVariableModel

    if type(model).after_step is not LatentVariableModel.after_step:
        return True
    known = {id(p) for p in _network_parameters(model)}
    every = list(model.parameters())
    return len(every) != len(known) or any(id(p) not in known for p in every) or \
        {id(p) for p in model.optimized_parameters()} != known


def _network_parameters(model: nn.Module) -> list[Tensor]:
    enc, dec = model.encoder, model.decoder
    linears = [lin for lin, _ in layer_pairs(enc.trunk)] + [enc.heads["mu"], enc.heads["log_var"]]
    linears += [lin for lin, _ in dec.hidden_layers()] + [dec.mean] + ([dec.log_var] if dec.log_var is not None else [])
    return [p for lin in linears for p in (lin.weight, lin.bias) if p is not None]


@dataclass
class _Dense:
    """One linear layer of the step: its module and the oneDNN post-op of the activation after it."""

    linear: nn.Linear
    post_op: str


def _activation_backward(dy: Tensor, y: Tensor, post_op: str) -> Tensor:
    """dL/da from dL/dy for y = act(a), from the output y (the kernels autograd calls for these)."""
    if post_op == "relu":
        return torch.ops.aten.threshold_backward(dy, y, 0)
    if post_op == "tanh":
        return torch.ops.aten.tanh_backward(dy, y)
    if post_op == "sigmoid":
        return torch.ops.aten.sigmoid_backward(dy, y)
    return dy


class FastELBO:
    """``objectives.elbo(model, x, samples, kl, beta, generator)`` and its gradients, by hand.

    ``step(x, generator, beta)`` writes every parameter's gradient (``p.grad``) and returns the terms
    ``elbo`` returns with ``reduction="mean"`` (``loss`` detached: there is no graph). ``why_not(model,
    ...)`` must be None."""

    def __init__(self, model: nn.Module, samples: int = 1, kl: str = "analytic", dtype: torch.dtype = torch.float32):
        if kl not in ("analytic", "mc"):
            raise ValueError(f"kl must be 'analytic' or 'mc'; got {kl!r}")
        cfg = model.config
        self.model, self.samples, self.kl = model, samples, kl
        self.dtype = dtype  # of the networks' GEMMs and activations (bf16: what autocast runs them in)
        enc, dec = model.encoder, model.decoder
        self.encoder = [_Dense(lin, _POST_OPS[type(act)]) for lin, act in layer_pairs(enc.trunk)]
        self.mu, self.log_var = enc.heads["mu"], enc.heads["log_var"]
        self.decoder = [_Dense(lin, _POST_OPS[type(act)]) for lin, act in dec.hidden_layers()]
        self.out_mean, self.out_var = dec.mean, dec.log_var
        self.likelihood = cfg.likelihood
        self.sigmoid_mean = cfg.likelihood != "bernoulli" and cfg.decoder_mean == "sigmoid"
        self.q_bounds = (model.posterior.log_var_min, model.posterior.log_var_max)
        self.x_bounds = (cfg.log_var_min, cfg.log_var_max)
        self.fixed_log_var = 2.0 * math.log(cfg.fixed_sigma)
        self.latent = cfg.latent_dim
        self._bias_grads: dict[int, Tensor] = {}
        z, h = self.mu.weight.shape
        self._w_heads = torch.empty(2 * z, h, dtype=dtype)  # [W_mu; W_log_var], refreshed every step
        self._b_heads = torch.empty(2 * z, dtype=dtype)

    @classmethod
    def for_training(cls, model: nn.Module, train) -> "FastELBO":
        """The step a ``TrainConfig`` asks for (``why_not(model, train)`` is None)."""
        return cls(model, train.samples, train.estimator, DTYPES[train.precision])

    # -- pieces -----------------------------------------------------------------------------------

    def _cast(self, t: Tensor) -> Tensor:
        return t if t.dtype == self.dtype else t.to(self.dtype)

    def _weights(self, linear: nn.Linear) -> tuple[Tensor, Tensor | None]:
        """The layer's weight and bias in the compute dtype (the parameters themselves in float32)."""
        return self._cast(linear.weight.detach()), None if linear.bias is None else self._cast(linear.bias.detach())

    def _heads(self) -> tuple[Tensor, Tensor]:
        """The two heads as one layer: weights (2Z, H) and biases (2Z,), copied from the parameters."""
        z = self.mu.weight.shape[0]
        self._w_heads[:z].copy_(self.mu.weight.detach())
        self._w_heads[z:].copy_(self.log_var.weight.detach())
        self._b_heads[:z].copy_(self.mu.bias.detach())
        self._b_heads[z:].copy_(self.log_var.bias.detach())
        return self._w_heads, self._b_heads

    def _set_linear_grads(self, linear: nn.Linear, da: Tensor, h: Tensor) -> None:
        """linear's weight and bias gradients (float32) for the pre-activation gradient da (N, out) at its
        input h (N, in)."""
        linear.weight.grad = _linear(da.t(), h.t(), None).float()  # (out, in) = da^T h
        if linear.bias is not None:
            g = self._bias_grads.get(id(linear))
            if g is None:
                g = self._bias_grads[id(linear)] = torch.empty_like(linear.bias)
            linear.bias.grad = torch.sum(da, 0, dtype=g.dtype, out=g)

    # -- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, x: Tensor, generator=None, beta: float = 1.0) -> dict[str, Tensor]:
        """Forward and backward of the ELBO on the batch x (B, C, H, W) or (B, D): returns the terms
        (batch means) and leaves dLoss/dp in every parameter's ``.grad``."""
        n, L, Z = x.shape[0], self.samples, self.latent
        x = x.reshape(n, -1)  # (B, D)
        # encoder: h_0 = x, h_i = act(h_{i-1} W_i^T + b_i)
        enc = [self._weights(layer.linear) for layer in self.encoder]
        hs = [self._cast(x)]
        for layer, (w, b) in zip(self.encoder, enc):
            hs.append(_linear(hs[-1], w, b, layer.post_op))
        w_heads, b_heads = self._heads()
        heads = _linear(hs[-1], w_heads, b_heads)  # (B, 2Z): [mu, raw log sigma^2]
        raw_lv = heads[:, Z:]
        mu, lv = heads[:, :Z].float(), raw_lv.clamp(*self.q_bounds).float()  # log-densities in float32
        std = torch.exp(0.5 * lv)  # (B, Z)
        eps = standard_normal((L, n, Z), generator, x.device, mu.dtype, batch_axis=-2)  # as DiagonalGaussian.rsample
        z = torch.addcmul(mu, std, eps)  # (L, B, Z), float32
        # decoder: g_0 = z, g_i = act(g_{i-1} W_i^T + b_i), then the likelihood's parameters
        dec = [self._weights(layer.linear) for layer in self.decoder]
        gs = [self._cast(z.view(L * n, Z))]
        for layer, (w, b) in zip(self.decoder, dec):
            gs.append(_linear(gs[-1], w, b, layer.post_op))
        scale = 1.0 / (L * n)  # d loss / d log p(x|z) of each (sample, example): the means over L and B
        outputs = [self._weights(self.out_mean)] + ([self._weights(self.out_var)] if self.out_var is not None else [])
        d_outs, reconstruction = self._likelihood(gs[-1], outputs, x, L, n, scale)
        # the KL, estimator B (closed form) or A (log q(z|x) - log p(z) at the samples), and its gradients
        d_mu, d_lv, d_z_kl, kl = self._kl(mu, lv, z, eps, beta / n)
        # back through the decoder
        dg = None
        for linear, (w, _), d in zip((self.out_mean, self.out_var), outputs, d_outs):
            self._set_linear_grads(linear, d, gs[-1])
            dg = _linear(d, w.t(), None) if dg is None else dg.add_(_linear(d, w.t(), None))  # (N, H) = d W
        for layer, (w, _), g_in, g_out in zip(reversed(self.decoder), reversed(dec), reversed(gs[:-1]),
                                              reversed(gs[1:])):
            da = _activation_backward(dg, g_out, layer.post_op)
            self._set_linear_grads(layer.linear, da, g_in)
            dg = _linear(da, w.t(), None)  # (N, in) = da W
        dz = dg.view(L, n, Z).float()  # d loss / dz through the decoder
        if d_z_kl is not None:
            dz = dz + d_z_kl
        # z = mu + std * eps: d mu = sum_L dz, d lv = sum_L dz * eps * std / 2; the clamp passes [min, max]
        d_heads = torch.empty(n, 2 * Z, dtype=dz.dtype)
        torch.sum(dz, 0, out=d_heads[:, :Z]).add_(d_mu)
        d_std = (dz * eps).sum(0).mul_(std).mul_(0.5).add_(d_lv)
        lo, hi = self.q_bounds
        torch.mul(d_std, (raw_lv >= lo) & (raw_lv <= hi), out=d_heads[:, Z:])
        d_heads = self._cast(d_heads)
        # back through the heads and the encoder
        h = hs[-1]
        w_grad = _linear(d_heads.t(), h.t(), None).float()  # (2Z, H)
        b_grad = torch.sum(d_heads, 0, dtype=torch.float32)
        self.mu.weight.grad, self.log_var.weight.grad = w_grad[:Z], w_grad[Z:]
        self.mu.bias.grad, self.log_var.bias.grad = b_grad[:Z], b_grad[Z:]
        if self.encoder:
            dh = _linear(d_heads, w_heads.t(), None)  # (B, H)
            for i in range(len(self.encoder) - 1, -1, -1):
                layer = self.encoder[i]
                da = _activation_backward(dh, hs[i + 1], layer.post_op)
                self._set_linear_grads(layer.linear, da, hs[i])
                if i:
                    dh = _linear(da, enc[i][0].t(), None)
        rec = reconstruction * scale  # batch mean of the L-sample mean of log p(x|z)
        kl_mean = kl / n
        return {"loss": -rec + beta * kl_mean, "elbo": rec - kl_mean, "reconstruction": rec, "kl": kl_mean}

    def _likelihood(self, g: Tensor, outputs: list[tuple[Tensor, Tensor | None]], x: Tensor, L: int, n: int,
                    scale: float) -> tuple[list[Tensor], Tensor]:
        """The decoder's output layer(s) (``outputs``: weights and biases, the mean's first) on the last hidden
        layer g (L*B, H) and the log-likelihood of x: d loss / d (each output layer's pre-activation) (L*B, D),
        in the compute dtype, and the sum of log p(x|z) over samples and batch (a 0-dim float32 tensor)."""
        (w, b), cast = outputs[0], self._cast
        out = _linear(g, w, b).view(L, n, -1)  # (L, B, D)
        if self.likelihood == "bernoulli":
            logits = out.float()
            total = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="sum")
            d_out = logits.sigmoid_().sub_(x).mul_(scale)  # d(-log p)/d logits = sigmoid(l) - x, over the logits
            return [cast(d_out).view(L * n, -1)], total
        mean_c = torch.sigmoid(out) if self.sigmoid_mean else out
        diff = x - mean_c.float()  # (L, B, D)
        d_var = None
        if self.out_var is None:  # fixed variance
            prec = math.exp(-self.fixed_log_var)
            sq = diff.square()
            total = -0.5 * (LOG_2PI + self.fixed_log_var) * sq.numel() - 0.5 * prec * sq.sum()
            d_mean = diff.mul_(-prec * scale)
        else:
            raw = _linear(g, *outputs[1]).view(L, n, -1)
            lo, hi = self.x_bounds
            lv = raw.clamp(lo, hi).float()
            prec = torch.exp(-lv)
            wsq = diff.square().mul_(prec)  # (x - mean)^2 / sigma^2
            total = -0.5 * (LOG_2PI * wsq.numel() + lv.sum() + wsq.sum())
            d_var = cast(wsq.sub_(1.0).mul_(-0.5 * scale).mul_((raw >= lo) & (raw <= hi))).view(L * n, -1)
            d_mean = diff.mul_(prec).mul_(-scale)
        d_mean = cast(d_mean)
        if self.sigmoid_mean:
            d_mean = torch.ops.aten.sigmoid_backward(d_mean, mean_c)
        return [d_mean.view(L * n, -1)] + ([] if d_var is None else [d_var]), total

    def _kl(self, mu: Tensor, lv: Tensor, z: Tensor, eps: Tensor,
            weight: float) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """The KL's batch sum and its gradients, weighted by ``weight`` (beta / B): d/d mu (B, Z), d/d lv
        (B, Z) (direct, not through z) and d/dz (L, B, Z) (None for the closed form)."""
        if self.kl == "analytic":  # -1/2 sum (1 + lv - mu^2 - e^lv) (paper appendix B)
            var = torch.exp(lv)
            kl = -0.5 * (1 + lv - mu.square() - var).sum()
            return mu * weight, var.sub_(1.0).mul_(0.5 * weight), None, kl
        # estimator A: mean over L of log q(z|x) - log p(z), per dimension, summed
        L = z.shape[0]
        w = weight / L
        prec = torch.exp(-lv)
        diff = z - mu  # (L, B, Z)
        wsq = diff.square().mul_(prec)
        kl = (-0.5 * (wsq + lv) + 0.5 * z.square()).sum() / L  # the log 2 pi terms cancel
        dq_dz = diff.mul_(prec)  # -(d log q / dz) = (z - mu) / sigma^2
        d_mu = dq_dz.sum(0).mul_(w)  # log q's direct dependence on mu: d/dmu log q = (z - mu) / sigma^2
        d_lv = wsq.sub_(1.0).sum(0).mul_(0.5 * w)  # d/dlv log q = ((z - mu)^2 / sigma^2 - 1) / 2
        d_z = torch.sub(z, dq_dz).mul_(w)  # d/dz (log q - log p) = -(z - mu) / sigma^2 + z
        return d_mu, d_lv, d_z, kl
