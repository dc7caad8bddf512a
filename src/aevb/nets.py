"""Encoder and decoder networks, built by name from a ``ModelConfig``.

The MLPs follow the paper's appendix C: each hidden layer is ``activation(W h + b)``;
the encoder ends in linear heads (mu and log sigma^2 for a VAE, the code for an AE);
the decoder ends in the likelihood's parameters reshaped to the image (C, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .distributions import Bernoulli, Gaussian

_ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, each followed by the activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), _ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """x -> h -> heads. ``heads`` names the linear outputs, each ``latent_dim`` wide."""

    def __init__(self, cfg: ModelConfig, heads: tuple[str, ...]):
        super().__init__()
        sizes = [cfg.data_dim, *cfg.hidden]
        self.trunk = mlp(sizes, cfg.activation)
        self.heads = nn.ModuleDict({name: nn.Linear(sizes[-1], cfg.latent_dim) for name in heads})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x.flatten(1))  # (B, C*H*W) -> (B, hidden[-1])
        return {name: head(h) for name, head in self.heads.items()}


class MLPDecoder(nn.Module):
    """z -> h -> likelihood parameters, shaped (..., C, H, W)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        sizes = [cfg.latent_dim, *reversed(cfg.hidden)]
        self.trunk = mlp(sizes, cfg.activation)
        self.mean = nn.Linear(sizes[-1], cfg.data_dim)  # logits for Bernoulli, pre-sigmoid mean for Gaussians
        self.log_var = nn.Linear(sizes[-1], cfg.data_dim) if cfg.likelihood == "gaussian" else None

    def forward(self, z: Tensor) -> Bernoulli | Gaussian:
        cfg = self.cfg
        h = self.trunk(z)
        shape = (*z.shape[:-1], *cfg.input_shape)  # (..., latent) -> (..., C, H, W)
        out = self.mean(h).view(shape)
        if cfg.likelihood == "bernoulli":
            return Bernoulli(out, event_ndim=3)
        mean = torch.sigmoid(out) if cfg.decoder_mean == "sigmoid" else out
        if self.log_var is not None:
            log_var = self.log_var(h).view(shape).clamp(cfg.log_var_min, cfg.log_var_max)
        else:
            log_var = torch.full_like(mean, 2.0 * math.log(cfg.fixed_sigma))
        return Gaussian(mean, log_var, event_ndim=3)


def build_encoder(cfg: ModelConfig, heads: tuple[str, ...]) -> nn.Module:
    if cfg.architecture == "mlp":
        return MLPEncoder(cfg, heads)
    raise ValueError(f"unknown architecture {cfg.architecture!r}")


def build_decoder(cfg: ModelConfig) -> nn.Module:
    if cfg.architecture == "mlp":
        return MLPDecoder(cfg)
    raise ValueError(f"unknown architecture {cfg.architecture!r}")


def init_normal_(module: nn.Module, std: float) -> None:
    """The paper's initialisation: every weight and bias drawn from N(0, std^2)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
