"""A worked forward pass through a tiny VAE (3 inputs, 2 latent dimensions), step by step.

The defaults reproduce the worked example that circulates in VAE tutorials:

    h      = W_e x + b_e                      = [0.2, 0.6]
    mu     = W_mu h + b_mu                    = [-0.04, 0.02]
    log_var = W_lv h + b_lv                   = [-0.02, 0.04]
    KL     = -1/2 sum(1 + log_var - mu^2 - exp(log_var)) = 0.00150472

(the hand calculation in circulation gets 0.00675, with a wrong sign and arithmetic; the
0.0015051 quoted in issue 4 is a rounding slip: the exact value rounds to 0.0015047). The
reconstruction x' = W_d z + b_d comes from a linear decoder whose defaults give the
example's x' = [0.044, 0.137, 0.23] (squared error 1.485605); ``x_recon`` overrides it.

The loss is the negative ELBO with the decoder's likelihood N(x; x', I) (the squared error as a
log-likelihood, as in ``Gaussian`` with sigma = 1), estimated with the given eps:

    -log N(x; x', I) = error / 2 + 3/2 log(2 pi) = 3.499618
    loss = -log N(x; x', I) + KL                 = 3.501123
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .distributions import DiagonalGaussian

Matrix = list[list[float]]
Vector = list[float]


@dataclass
class Example:
    x: Vector = field(default_factory=lambda: [0.5, 1.0, -0.5])
    W_e: Matrix = field(default_factory=lambda: [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    b_e: Vector = field(default_factory=lambda: [0.1, 0.2])
    W_mu: Matrix = field(default_factory=lambda: [[0.1, -0.1], [0.2, -0.2]])
    b_mu: Vector = field(default_factory=lambda: [0.0, 0.1])
    W_lv: Matrix = field(default_factory=lambda: [[0.0, 0.0], [0.0, 0.0]])
    b_lv: Vector = field(default_factory=lambda: [-0.02, 0.04])
    eps: Vector = field(default_factory=lambda: [0.0, 0.0])
    W_d: Matrix = field(default_factory=lambda: [[0.5, 0.3], [-0.2, 0.8], [0.4, 0.1]])
    # b_d = x' - W_d mu, so that at eps = 0 the decoder returns the example's x' = [0.044, 0.137, 0.23]
    b_d: Vector = field(default_factory=lambda: [0.058, 0.113, 0.244])
    x_recon: Vector | None = None
    activation: str = "linear"  # of the hidden layer: linear (the example), tanh or relu


_ACT = {"linear": lambda t: t, "tanh": torch.tanh, "relu": torch.relu}


def _t(v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def _check_shapes(ex: Example) -> None:
    def need(name, t, shape):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}; got {list(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} must hold finite numbers")

    n, hdim = len(ex.x), len(ex.b_e)
    zdim = len(ex.b_mu)
    need("x", _t(ex.x), (n,))
    need("W_e", _t(ex.W_e), (hdim, n))
    need("b_e", _t(ex.b_e), (hdim,))
    need("W_mu", _t(ex.W_mu), (zdim, hdim))
    need("W_lv", _t(ex.W_lv), (zdim, hdim))
    need("b_lv", _t(ex.b_lv), (zdim,))
    need("eps", _t(ex.eps), (zdim,))
    need("W_d", _t(ex.W_d), (n, zdim))
    need("b_d", _t(ex.b_d), (n,))
    if ex.x_recon is not None:
        need("x_recon", _t(ex.x_recon), (n,))
    if ex.activation not in _ACT:
        raise ValueError(f"activation must be one of {', '.join(_ACT)}; got {ex.activation!r}")


def explain(ex: Example) -> list[dict]:
    """The steps of the forward pass: each a dict with name, formula and value."""
    _check_shapes(ex)
    x = _t(ex.x)
    h = _ACT[ex.activation](_t(ex.W_e) @ x + _t(ex.b_e))
    mu = _t(ex.W_mu) @ h + _t(ex.b_mu)
    log_var = _t(ex.W_lv) @ h + _t(ex.b_lv)
    q = DiagonalGaussian(mu, log_var)
    sigma = q.std
    eps = _t(ex.eps)
    z = mu + sigma * eps
    decoded = _t(ex.W_d) @ z + _t(ex.b_d)
    x_recon = _t(ex.x_recon) if ex.x_recon is not None else decoded
    sq = ((x - x_recon) ** 2).sum()
    nll = 0.5 * sq + 0.5 * len(x) * math.log(2 * math.pi)  # -log N(x; x', I)
    kl = q.kl_to_standard_normal()
    pre = "W_e x + b_e" if ex.activation == "linear" else f"{ex.activation}(W_e x + b_e)"
    steps = [
        ("x", "input", x),
        ("h", f"h = {pre}", h),
        ("mu", "mu = W_mu h + b_mu", mu),
        ("log_var", "log sigma^2 = W_lv h + b_lv", log_var),
        ("sigma", "sigma = exp(log_var / 2)", sigma),
        ("eps", "eps ~ N(0, I) (given)", eps),
        ("z", "z = mu + sigma * eps   (the reparameterization)", z),
        ("x_recon", "x' (given)" if ex.x_recon is not None else "x' = W_d z + b_d", x_recon),
        ("reconstruction_error", "sum_i (x_i - x'_i)^2", sq),
        ("neg_log_likelihood", "-log N(x; x', I) = error / 2 + D/2 log(2 pi)", nll),
        ("kl", "KL = -1/2 sum_j (1 + log_var_j - mu_j^2 - exp(log_var_j))", kl),
        ("loss", "negative ELBO = -log N(x; x', I) + KL", nll + kl),
    ]
    return [{"name": n, "formula": f, "value": v.tolist()} for n, f, v in steps]


def format_steps(steps: list[dict]) -> str:
    def fmt(v):
        if isinstance(v, list):
            return "[" + ", ".join(f"{u:.7g}" for u in v) + "]"
        return f"{v:.7g}"

    width = max(len(s["formula"]) for s in steps)
    lines = [f"{s['name']:>22s}  {s['formula']:<{width}s}  = {fmt(s['value'])}" for s in steps]
    lines.append("")
    lines.append("note: with the default weights the KL is 0.00150472 (the 0.0015051 quoted in issue 4 is a "
                 "rounding slip); the hand calculation in circulation, 0.00675, has a wrong sign and arithmetic.")
    lines.append("      the loss is the negative ELBO of a decoder N(x; x', I) at this eps (one sample of z); "
                 "with sigma^2 = 1/2 instead, error + KL would be it, up to the constant D/2 log(pi).")
    return "\n".join(lines)
