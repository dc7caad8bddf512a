"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising"): a VAE whose loss adds gamma times the total
correlation KL(q(z) || prod_j q(z_j)) of its aggregate posterior, estimated by a discriminator D.

D is an MLP on codes (``discriminator_hidden``, leaky ReLU 0.2; the paper's is six layers of 1000) with one
output, the logit of "z came from q(z)" against "z came from prod_j q(z_j)". At its optimum the logit is
log q(z) / prod_j q(z_j), so the VAE loss adds gamma * E_q[logit(z)] (``aevb.objectives.factor_vae``, reading
``log_density_ratio``, with D held fixed). The two are trained alternately, as in the paper's Algorithm 1:

1. the trainer's step on the VAE loss (D is left out of ``optimized_parameters``);
2. ``after_step``: with the updated encoder, codes z ~ q(z|x) of this process's batch, split in two halves
   (the paper draws a second batch; here the second half plays it): the first half's codes are D's positives,
   the second half's, each dimension permuted across the half independently (samples of prod_j q(z_j)), its
   negatives; one step of D's own Adam (lr ``discriminator_lr``, betas ``discriminator_betas``: the paper's
   1e-4 and (0.5, 0.9)) on the binary cross-entropy. Its loss and accuracy are logged
   (``train_discriminator_loss``, ``train_discriminator_accuracy``).

D's weights are part of the model (model.safetensors), its Adam state part of the training state, so a
resumed run continues exactly. Under torchrun each process scores its own shard and D's gradients are
averaged over the processes before its step, so every process keeps the same D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig
from ..distributions import uniform
from .registry import Family, register
from .vae import VAE


@dataclass
class FactorVAEConfig(ModelConfig):
    """The VAE's settings, and the discriminator's: its hidden widths, and its Adam's learning rate and betas."""

    family: str = "factorvae"
    discriminator_hidden: tuple[int, ...] = (1000,) * 6
    discriminator_lr: float = 1e-4
    discriminator_betas: tuple[float, float] = (0.5, 0.9)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.discriminator_hidden = tuple(int(v) for v in self.discriminator_hidden)
        self.discriminator_betas = tuple(float(v) for v in self.discriminator_betas)  # type: ignore[assignment]
        if not (self.discriminator_hidden and all(h >= 1 for h in self.discriminator_hidden)):
            raise ConfigError("discriminator_hidden must be one or more positive widths; "
                              f"got {self.discriminator_hidden}")
        if not (isinstance(self.discriminator_lr, (int, float)) and math.isfinite(self.discriminator_lr)
                and self.discriminator_lr > 0):
            raise ConfigError(f"discriminator_lr must be positive and finite; got {self.discriminator_lr!r}")
        if not (len(self.discriminator_betas) == 2 and all(0 <= b < 1 for b in self.discriminator_betas)):
            raise ConfigError(f"discriminator_betas must be two numbers in [0, 1); got {self.discriminator_betas}")


class Discriminator(nn.Module):
    """z (..., Z) -> the logit (...,) that z is a sample of q(z) rather than of prod_j q(z_j)."""

    def __init__(self, latent_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        sizes = [latent_dim, *hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, z: Tensor, frozen: bool = False) -> Tensor:
        """``frozen``: with the weights detached, so that a loss through it trains z's producer, not D."""
        h = z
        for i, layer in enumerate(self.layers):
            w, b = (layer.weight.detach(), layer.bias.detach()) if frozen else (layer.weight, layer.bias)
            h = F.linear(h, w.to(h.dtype), b.to(h.dtype))
            if i < len(self.layers) - 1:
                h = F.leaky_relu(h, 0.2)
        return h.squeeze(-1)


def permute_dims(z: Tensor, generator) -> Tensor:
    """Each column of z (B, Z) shuffled across the rows on its own: samples of prod_j q(z_j) from samples of
    q(z) (Kim & Mnih 2018, Algorithm 1). The permutations are the argsorts of uniform noise drawn through
    ``aevb.distributions.uniform``, so that a data-parallel run draws them from its shared generator."""
    order = uniform(z.shape, generator, z.device, batch_axis=0).argsort(dim=0)  # (B, Z): a permutation per column
    return torch.gather(z, 0, order)


class FactorVAE(VAE):
    """A VAE (diagonal Gaussian q(z|x), N(0, I) prior) with a discriminator on its codes."""

    COMPONENTS = frozenset()

    def __init__(self, config: FactorVAEConfig, encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__(config, encoder, decoder)
        self.discriminator = Discriminator(config.latent_dim, config.discriminator_hidden)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._dist = None

    @property
    def capabilities(self):
        return replace(super().capabilities, objectives=("factorvae",))

    def log_density_ratio(self, z: Tensor) -> Tensor:
        """The discriminator's estimate of log q(z) / prod_j q(z_j) at codes z (B, Z): (B,), with its own
        parameters held fixed (the VAE loss trains the encoder through it, not D)."""
        return self.discriminator(z.float(), frozen=True)

    def optimized_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for p in self.discriminator.parameters()}
        return [p for p in self.parameters() if id(p) not in own]

    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if not self._optimizers:
            cfg = self.config
            params = list(self.discriminator.parameters())
            kw = {"lr": cfg.discriminator_lr, "betas": tuple(cfg.discriminator_betas)}
            try:  # the fused kernel takes the skip decision on the device (``after_step``)
                self._optimizers["discriminator"] = torch.optim.Adam(params, fused=True, **kw)
            except (RuntimeError, TypeError, ValueError):
                self._optimizers["discriminator"] = torch.optim.Adam(params, **kw)
        return self._optimizers

    def discriminator_loss(self, x: Tensor, y: Tensor | None, generator) -> tuple[Tensor, Tensor]:
        """D's binary cross-entropy on this batch (its codes' first half against the second half permuted) and
        its accuracy: two scalars. The codes are drawn without gradients; the loss has D's."""
        if len(x) < 4:
            raise ConfigError(f"FactorVAE's discriminator needs at least 4 examples per process and step (two "
                              f"halves to permute); got {len(x)}: raise batch_size")
        with torch.no_grad():
            z = self.encode(x, y).rsample(generator=generator).float()  # (B, Z)
        half = len(z) // 2
        positive, negative = z[:half], permute_dims(z[half : 2 * half], generator)
        logits = self.discriminator(torch.cat([positive, negative]))  # (2 * half,)
        labels = torch.cat([torch.ones(half, device=z.device), torch.zeros(half, device=z.device)])
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        accuracy = ((logits > 0).float() == labels).float().mean()
        return loss, accuracy

    def after_step(self, x: Tensor, y: Tensor | None, generator, skipped: Tensor) -> dict[str, Tensor]:
        """One discriminator step (Adam on ``discriminator_loss``), skipped with the trainer's step or when its
        own loss is not finite."""
        from ..distributed import all_reduce_sum, init_from_env

        if self._dist is None:
            self._dist = init_from_env()
        opt = self.auxiliary_optimizers()["discriminator"]
        loss, accuracy = self.discriminator_loss(x, y, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = list(self.discriminator.parameters())
        grads = torch.cat([p.grad.reshape(-1) for p in params])
        if self._dist.enabled:  # every process keeps the same D: average the gradients
            grads = all_reduce_sum(grads, self._dist) / self._dist.world_size
            for p, g in zip(params, grads.split([p.numel() for p in params])):
                p.grad.copy_(g.view_as(p))
        bad = skipped | ~torch.isfinite(grads).all()  # the same decision on every process
        if opt.defaults.get("fused"):
            opt.found_inf, opt.grad_scale = bad.float(), None
            try:
                opt.step()
            finally:
                del opt.found_inf, opt.grad_scale
        elif not bool(bad):
            opt.step()
        return {"discriminator_loss": loss.detach(), "discriminator_accuracy": accuracy}


FAMILY = register(Family("factorvae", build=FactorVAE, config=FactorVAEConfig,
                         summary="FactorVAE (Kim & Mnih 2018): a VAE whose loss adds gamma times a discriminator's "
                                 "estimate of the total correlation of its codes"))
