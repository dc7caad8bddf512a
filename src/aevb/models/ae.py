"""A deterministic autoencoder with the VAE's networks: code = f(x), x' = g(code).

It trains on -log p(x | z = code(x)) (``aevb.objectives.ae_loss``): with a Bernoulli decoder the
summed binary cross-entropy, with ``gaussian_fixed`` the squared error / (2 sigma^2) plus a
constant. It has no posterior and was trained with no prior; ``sample`` decodes codes drawn from
N(0, I), usually poor images, which is the point of the AE-vs-VAE comparison.
"""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..distributions import StandardNormal
from .base import Capabilities, LatentVariableModel
from .registry import Family, register


class AE(LatentVariableModel):
    CODE = "code"

    def __init__(self, config: ModelConfig, encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__(config, heads=("code",), encoder=encoder, decoder=decoder)
        self.prior = StandardNormal(config.latent_dim)  # not trained with: what ``sample`` draws codes from

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(has_prior=False, has_posterior=False, conditional=self.config.conditional,
                            objectives=("reconstruction",), latent_shape=(self.config.latent_dim,),
                            code_name="codes")


FAMILY = register(Family("ae", build=AE, summary="deterministic autoencoder with the same networks "
                                                   "(no prior, no posterior)"))
