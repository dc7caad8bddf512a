"""The models: ``VAE`` (Gaussian q(z|x), prior N(0, I)) and a plain deterministic ``AE``.

A model holds networks and nothing of training: no optimizer, no step counter, no
loss. Objectives (``aevb.objectives``) are functions of a model and a batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .distributions import Bernoulli, DiagonalGaussian, DiscretizedLogistic, Gaussian
from .nets import build_decoder, build_encoder, init_normal_


class _Autoencoder(nn.Module):
    """What both models share: an encoder with named linear heads and a decoder p(x|z)."""

    CODE = "mu"  # the head that gives the deterministic code

    def __init__(self, config: ModelConfig, heads: tuple[str, ...]):
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config, heads=heads)
        self.decoder = build_decoder(config)
        if config.init_std is not None:
            init_normal_(self, config.init_std)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def decode(self, z: Tensor) -> Bernoulli | Gaussian | DiscretizedLogistic:
        """p(x|z) with parameters shaped (..., C, H, W)."""
        return self.decoder(z)

    def embed(self, x: Tensor) -> Tensor:
        """The deterministic code of x (a VAE's posterior mean E_q[z|x]); never sampled."""
        return self.encoder(x)[self.CODE]

    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoded mean at the code (no sampling)."""
        return self.decode(self.embed(x)).mean

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decoded means of z ~ N(0, I): n images shaped (n, C, H, W). (An AE has no prior:
        its samples are usually poor images, which is the point of the AE-vs-VAE comparison.)"""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decode(z).mean


class VAE(_Autoencoder):
    """Auto-Encoding Variational Bayes (Kingma & Welling 2013), section 3."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, heads=("mu", "log_var"))

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """q(z|x) = N(mu(x), diag(exp(log_var(x)))); x is (B, C, H, W) or (B, C*H*W)."""
        out = self.encoder(x)
        log_var = out["log_var"].clamp(self.config.log_var_min, self.config.log_var_max)
        return DiagonalGaussian(out["mu"], log_var)


class AE(_Autoencoder):
    """A deterministic autoencoder with the same networks: code = f(x), x' = g(code)."""

    CODE = "code"

    def __init__(self, config: ModelConfig):
        super().__init__(config, heads=("code",))


def build_model(config: ModelConfig) -> VAE | AE:
    return VAE(config) if config.kind == "vae" else AE(config)
