"""The variational autoencoder of Auto-Encoding Variational Bayes (Kingma & Welling 2013), section 3.

    q(z|x) = N(mu(x), diag(sigma^2(x)))      the encoder's two heads (``GaussianPosterior``)
    p(z)   = N(0, I)                          ``StandardNormal``
    p(x|z)                                    Bernoulli, Gaussian or discretized logistic (``aevb.nets``)

trained on the SGVB estimate of the ELBO (``aevb.objectives.elbo``) or the IWAE bound. A conditional
VAE (``num_classes > 0``; Sohn et al. 2015) reads a one-hot label y beside x and z: q(z|x, y),
p(x|z, y), with the prior N(0, I) unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from ..distributions import DiagonalGaussian, GaussianPosterior, StandardNormal
from .base import Capabilities, LatentVariableModel
from .registry import Family, register


class VAE(LatentVariableModel):
    """Gaussian posterior, standard normal prior, the configured likelihood."""

    def __init__(self, config: ModelConfig, encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        posterior = GaussianPosterior(config.log_var_min, config.log_var_max)
        super().__init__(config, heads=posterior.heads, encoder=encoder, decoder=decoder)
        self.posterior = posterior
        self.prior = StandardNormal(config.latent_dim)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(has_prior=True, has_posterior=True, conditional=self.config.conditional,
                            objectives=("elbo", "iwae"), latent_shape=(self.config.latent_dim,),
                            code_name="posterior means")

    def encode(self, x: Tensor, y: Tensor | None = None) -> DiagonalGaussian:
        """q(z|x) (or q(z|x, y)); x is (B, C, H, W) or (B, C*H*W)."""
        return self.posterior(self.encoder_out(x, y))


FAMILY = register(Family("vae", build=VAE, summary="variational autoencoder: Gaussian q(z|x), N(0, I) prior "
                                                     "(Kingma & Welling 2013); conditional with labels"))
