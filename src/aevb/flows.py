"""Flow posteriors: q(z|x) as the pushforward of the encoder's diagonal Gaussian through K invertible steps.

    z_0 ~ N(mu(x), diag sigma^2(x)),   z_k = f_k(z_{k-1}; h(x)),   log q(z_K|x) = log N(z_0) - sum_k log |det df_k/dz|

- ``PlanarFlow`` (Rezende & Mohamed 2015, eq. 10-12 and appendix A.1): f(z) = z + u' tanh(w.z + b), with u'
  the invertible reparameterisation of u, u' = u + (m(w.u) - w.u) w / |w|^2, m(a) = -1 + softplus(a), so
  that w.u' >= -1; log |det| = log(1 + (1 - tanh^2(w.z + b)) w.u').
- ``IAF`` (Kingma et al. 2016, eq. 14, their numerically stable form): [m, s] = MADE(z, h), z' = g z + (1 - g) m,
  log |det| = sum log g, with the gate g = sigmoid(s + 2) / sigmoid(2) (the paper's sigmoid gate with its
  positive bias, divided by its value at s = 0 so that a zero output layer is exactly the identity); the
  order of the autoregression is reversed from one step to the next.

Both read the encoder's context head ``h`` (B, Z). The planar steps' parameters (u, w, b of every step) are a
linear function of h, amortised over x as in Rezende & Mohamed's experiments; each IAF step's MADE takes h
beside z in its hidden layer. A step works on z shaped (..., B, Z), every sample and image at once; the only
Python loops are over the K steps, and, in an IAF inverse, over the Z dimensions.

``FlowPosterior`` is the distribution object the model's ``encode`` returns: ``rsample_with_log_prob`` gives
z_K and log q(z_K|x), ``mean`` the flow's image of mu (the deterministic code), ``log_prob(z)`` inverts the
flow (planar steps by bisection on one scalar per step, IAF steps by Z passes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import DiagonalGaussian, GaussianPosterior, _wide

IAF_GATE_BIAS = 2.0  # the sigmoid gate's bias: g = sigmoid(s + 2) / sigmoid(2) lies in (0, 1.135)
PLANAR_BISECTIONS = 60  # halvings of the bracket when inverting a planar step (float64: exact to rounding)


class PlanarFlow(nn.Module):
    """K planar steps whose parameters are an affine function of the context h (B, context_dim)."""

    def __init__(self, latent_dim: int, steps: int, context_dim: int):
        super().__init__()
        self.latent_dim, self.steps = latent_dim, steps
        self.amortize = nn.Linear(context_dim, steps * (2 * latent_dim + 1))  # -> (u, w, b) of every step

    def step_parameters(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """u' (B, K, Z), w (B, K, Z), b (B, K) for context h (B, C), in float32 or wider."""
        z = self.latent_dim
        p = _wide(self.amortize(h)).view(*h.shape[:-1], self.steps, 2 * z + 1)  # (B, K, 2Z + 1)
        u, w, b = p[..., :z], p[..., z : 2 * z], p[..., 2 * z]
        wu = (w * u).sum(-1, keepdim=True)
        # appendix A.1: w.u' = m(w.u) >= -1 keeps each step invertible; w = 0 leaves u' = u
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-12)
        return u_hat, w, b

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """z_K (..., B, Z) and sum_k log |det df_k/dz| (..., B) for z_0 (..., B, Z).

        Each image's samples are rows of one matrix (B, N, Z), so a step is two batched products and a tanh;
        the log-determinants of all K steps are taken at the end, from the K tanh values."""
        u_hat, w, b = self.step_parameters(h)  # (B, K, Z), (B, K, Z), (B, K)
        wu_hat = (w * u_hat).sum(-1)  # (B, K)
        z = _wide(z)
        lead, (n_images, z_dim) = z.shape[:-2], z.shape[-2:]
        rows = z.movedim(-2, 0).reshape(n_images, -1, z_dim)  # (B, N, Z), N = samples per image
        tanhs = []
        for k in range(self.steps):
            t = torch.baddbmm(b[:, k, None, None], rows, w[:, k, :, None]).tanh()  # tanh(w.z + b): (B, N, 1)
            rows = torch.baddbmm(rows, t, u_hat[:, k, None, :])  # z + u' tanh(...)
            tanhs.append(t)
        t = torch.cat(tanhs, -1) if tanhs else rows.new_zeros(*rows.shape[:-1], 0)  # (B, N, K); K = 0: identity
        logdet = torch.log1p(((1 - t * t) * wu_hat[:, None, :]).clamp_min(-1 + 1e-6)).sum(-1)  # (B, N)
        return (rows.reshape(n_images, *lead, z_dim).movedim(0, -2),
                logdet.reshape(n_images, *lead).movedim(0, -1))

    def inverse(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """z_0 and the same sum of log-determinants for z_K = y (..., B, Z).

        Each step is undone through its one scalar a = w.z: a + c tanh(a + b) = w.y with c = w.u' >= -1
        is increasing in a and bracketed by w.y -+ |c|; bisection finds it in float64, and one Newton step
        from the (detached) root carries the gradient of the implicit function."""
        u_hat, w, b = self.step_parameters(h)
        wu_hat = (w * u_hat).sum(-1)  # (B, K)
        z = _wide(y)
        logdet = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for k in reversed(range(self.steps)):
            target = (z * w[:, k]).sum(-1)  # w.y (..., B)
            c, bk = wu_hat[:, k], b[:, k]
            with torch.no_grad():
                lo, hi = (target - c.abs()).double(), (target + c.abs()).double()
                c64, b64, t64 = c.double(), bk.double(), target.double()
                for _ in range(PLANAR_BISECTIONS):
                    mid = 0.5 * (lo + hi)
                    above = mid + c64 * torch.tanh(mid + b64) > t64
                    lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
                root = (0.5 * (lo + hi)).to(z.dtype)
            t = torch.tanh(root + bk)
            # one Newton step: the value stays the root, the gradient flows
            a = root - (root + c * t - target) / (1 + c * (1 - t * t))
            t = torch.tanh(a + bk)
            z = z - u_hat[:, k] * t.unsqueeze(-1)
            logdet = logdet + torch.log1p(((1 - t * t) * c).clamp_min(-1 + 1e-6))
        return z, logdet

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, steps={self.steps}"


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (n_out, n_in) (MADE, Germain et al. 2015).
    The mask follows from the sizes and the order, so it is not part of the saved state."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor):
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """One inverse autoregressive step: [m, s] = MADE(z, h) with one hidden layer (ELU), the context h added
    to its input; output i depends on the z_j that come before z_i in ``order`` (a permutation of 0..Z-1).
    The output layer starts at zero: the step starts as the identity."""

    def __init__(self, latent_dim: int, hidden: int, context_dim: int, reverse: bool):
        super().__init__()
        position = torch.arange(latent_dim, 0, -1) if reverse else torch.arange(1, latent_dim + 1)  # (Z,) 1..Z
        degree = torch.arange(hidden) % latent_dim  # (H,) in 0..Z-1: a unit of degree d sees positions <= d
        self.reverse = reverse
        self.inp = MaskedLinear(latent_dim, hidden, (degree[:, None] >= position[None, :]).float())
        self.context = nn.Linear(context_dim, hidden, bias=False)
        out_mask = (position[:, None] > degree[None, :]).float().repeat(2, 1)  # (2Z, H): m then s
        self.out = MaskedLinear(hidden, 2 * latent_dim, out_mask)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def shift_and_log_gate(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """m and log g (..., B, Z), in float32 or wider."""
        a = F.elu(self.inp(z) + self.context(h))  # (..., B, H); h (B, C) broadcasts over samples
        m, s = _wide(self.out(a)).chunk(2, -1)
        # both terms through the same kernel, so that s = 0 gives log g = 0 exactly (the identity)
        return m, F.logsigmoid(s + IAF_GATE_BIAS) - F.logsigmoid(torch.full_like(s, IAF_GATE_BIAS))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        m, log_g = self.shift_and_log_gate(z, h)
        g = torch.exp(log_g)
        return g * z + (1 - g) * m, log_g.sum(-1)

    def inverse(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """z with step(z) = y: Z fixed-point passes, each fixing the next dimension in the order."""
        z = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            m, log_g = self.shift_and_log_gate(z, h)
            z = (y - (1 - torch.exp(log_g)) * m) * torch.exp(-log_g)
        _, log_g = self.shift_and_log_gate(z, h)
        return z, log_g.sum(-1)


class IAF(nn.Module):
    """K inverse autoregressive steps, the order reversed between consecutive steps."""

    def __init__(self, latent_dim: int, steps: int, context_dim: int, hidden: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.steps = nn.ModuleList(IAFStep(latent_dim, hidden, context_dim, reverse=k % 2 == 1) for k in range(steps))

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """z_K (..., B, Z) and sum_k log |det| (..., B) for z_0 (..., B, Z)."""
        z = _wide(z)
        logdet = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for step in self.steps:
            z, ld = step(z, h)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        z = _wide(y)
        logdet = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for step in reversed(self.steps):
            z, ld = step.inverse(z, h)
            logdet = logdet + ld
        return z, logdet


class FlowPosterior:
    """q(z|x): the diagonal Gaussian ``base`` (batch (B,), Z dimensions) pushed through ``flow`` with
    context h (B, C)."""

    event_ndim = 1

    def __init__(self, base: DiagonalGaussian, flow: nn.Module, context: Tensor):
        self.base, self.flow, self.context = base, flow, context

    @property
    def mean(self) -> Tensor:
        """The flow's image of the base mean, f(mu) (B, Z): the deterministic code (E_q[z] has no closed form)."""
        return self.flow(self.base.mu, self.context)[0]

    def rsample_with_log_prob(self, n: int | None = None,
                              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """z_K (n, B, Z) (or (B, Z) without n) and log q(z_K|x) = log N(z_0) - sum log |det|."""
        z0 = self.base.rsample(n, generator)
        z, logdet = self.flow(z0, self.context)
        return z, self.base.log_prob(z0) - logdet

    def rsample(self, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        return self.rsample_with_log_prob(n, generator)[0]

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) at given z (..., B, Z), through the flow's inverse."""
        z0, logdet = self.flow.inverse(z, self.context)
        return self.base.log_prob(z0) - logdet


class FlowPosteriorHeads(nn.Module):
    """What turns the encoder's heads ``mu``, ``log_var`` and the context ``h`` into a ``FlowPosterior``:
    the Gaussian posterior's clamp, then the flow (whose parameters live here)."""

    heads = ("mu", "log_var", "h")

    def __init__(self, gaussian: GaussianPosterior, flow: nn.Module):
        super().__init__()
        self.gaussian = gaussian
        self.flow = flow

    def base(self, out: dict[str, Tensor]) -> DiagonalGaussian:
        """The Gaussian before the flow, q_0(z_0|x)."""
        return self.gaussian(out)

    def forward(self, out: dict[str, Tensor]) -> FlowPosterior:
        return FlowPosterior(self.gaussian(out), self.flow, out["h"])


FLOWS = {"planar": lambda z, steps, hidden: PlanarFlow(z, steps, z),
         "iaf": lambda z, steps, hidden: IAF(z, steps, z, hidden)}


def build_flow(name: str, latent_dim: int, steps: int, hidden: int) -> nn.Module:
    """The flow ``name`` ("planar" or "iaf") over ``latent_dim`` dimensions with ``steps`` steps, reading a
    context as wide as the latent; ``hidden``: the width of each IAF step's MADE."""
    return FLOWS[name](latent_dim, steps, hidden)
