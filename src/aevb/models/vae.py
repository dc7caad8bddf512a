"""The variational autoencoder of Auto-Encoding Variational Bayes (Kingma & Welling 2013), section 3, and the
components the model zoo adds to it.

    q(z|x) = N(mu(x), diag(sigma^2(x)))      the encoder's two heads (``GaussianPosterior``)
    p(z)   = N(0, I)                          ``StandardNormal``
    p(x|z)                                    Bernoulli, Gaussian or discretized logistic (``aevb.nets``)

trained on the SGVB estimate of the ELBO (``aevb.objectives.elbo``; beta-weighted: the beta-VAE) or the IWAE
bound, or on the disentangling objectives (docs/disentangling-models.md): the capacity-annealed VAE's, and
with a diagonal Gaussian q(z|x) beta-TCVAE's and DIP-VAE I and II. A conditional
VAE (``num_classes > 0``; Sohn et al. 2015) reads a one-hot label y beside x and z: q(z|x, y),
p(x|z, y), with the prior unchanged (it does not depend on y).

The components, each a ``ModelConfig`` setting, compose freely:

- ``flow="planar"|"iaf"`` (``aevb.flows``): q(z|x) is the Gaussian pushed through ``flow_steps`` steps that
  read a third encoder head, the context ``h``; the code is the flow's image of mu.
- ``prior="vamp"|"mog"`` (``aevb.priors``): a mixture of ``prior_components`` Gaussians, the VampPrior's
  being the encoder's Gaussian at learned pseudo-inputs (before any flow: the flow's density at a given z
  needs its inverse; with two layers, q(z2 | z1 = the code of u_k)).
- ``stochastic_layers=2`` (``aevb.models.stacked``): the IWAE paper's z1 -> z2 stack; the prior is then
  p(z2) p(z1|z2) with p(z2) the configured prior, the flow acts on q(z1|x), and the code is z1's.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import ModelConfig
from ..distributions import DiagonalGaussian, GaussianPosterior, StandardNormal
from ..flows import FlowPosteriorHeads, build_flow
from ..nets import init_normal_
from ..priors import MixtureOfGaussians, VampPrior
from .base import Capabilities, LatentVariableModel
from .registry import Family, register
from .stacked import GaussianLayer, StackedPosterior, StackedPrior


class VAE(LatentVariableModel):
    """Gaussian (or flow) posterior, standard normal (or learned) prior, one or two stochastic layers, the
    configured likelihood."""

    COMPONENTS = frozenset({"prior", "flow", "stochastic_layers"})

    def __init__(self, config: ModelConfig, encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        gaussian = GaussianPosterior(config.log_var_min, config.log_var_max)
        posterior = gaussian
        if config.flow != "none":
            made_width = config.hidden[-1] if config.hidden else 4 * config.latent_dim
            posterior = FlowPosteriorHeads(gaussian, build_flow(config.flow, config.latent_dim, config.flow_steps,
                                                                made_width))
        super().__init__(config, heads=posterior.heads, encoder=encoder, decoder=decoder)
        self.posterior = posterior
        self.top_encoder: GaussianLayer | None = None
        top_dim = config.latent_dim
        if config.stochastic_layers == 2:
            top_dim = config.top_latent_dim
            self.top_encoder = self._gaussian_layer(config.latent_dim, top_dim)  # q(z2|z1)
        prior = self._top_prior(top_dim)
        if config.stochastic_layers == 2:
            prior = StackedPrior(prior, self._gaussian_layer(top_dim, config.latent_dim), config.latent_dim)
        self.prior = prior

    def _gaussian_layer(self, n_in: int, n_out: int) -> GaussianLayer:
        cfg = self.config
        layer = GaussianLayer(n_in, cfg.top_hidden, n_out, cfg.activation, cfg.log_var_min, cfg.log_var_max)
        if cfg.init_std is not None:
            init_normal_(layer, cfg.init_std)
        return layer

    def _top_prior(self, latent_dim: int) -> nn.Module:
        """p(z) (p(z2) with two layers): N(0, I), a mixture of Gaussians or the VampPrior."""
        cfg = self.config
        if cfg.prior == "mog":
            return MixtureOfGaussians(latent_dim, cfg.prior_components)
        if cfg.prior == "vamp":
            bounded = cfg.likelihood == "bernoulli" or cfg.decoder_mean == "sigmoid"  # images in [0, 1]
            return VampPrior(cfg.prior_components, cfg.input_shape, latent_dim, self._vamp_component,
                             bounded=bounded, num_classes=cfg.num_classes)
        return StandardNormal(latent_dim)

    def _vamp_component(self, u: Tensor, c: Tensor | None) -> DiagonalGaussian:
        """The Gaussian the VampPrior mixes at pseudo-inputs u (and label weights c): q_0(z|u) before any
        flow, or with two layers q(z2 | z1 = the code of u)."""
        out = self.encoder_out(u, c)
        if self.top_encoder is not None:
            return self.top_encoder(self.posterior(out).mean)
        return self.posterior.base(out) if isinstance(self.posterior, FlowPosteriorHeads) else self.posterior(out)

    @property
    def capabilities(self) -> Capabilities:
        cfg = self.config
        code = "posterior means" if cfg.flow == "none" else "posterior means pushed through the flow"
        if cfg.stochastic_layers == 2:
            code += " of z1"
        objectives = ("elbo", "iwae", "capacity")
        if cfg.flow == "none" and cfg.stochastic_layers == 1:  # a diagonal Gaussian q(z|x), which these read
            objectives += ("tcvae", "dipvae-i", "dipvae-ii")
        return Capabilities(has_prior=True, has_posterior=True, conditional=cfg.conditional,
                            objectives=objectives, latent_shape=(cfg.latent_dim,), code_name=code)

    def encode(self, x: Tensor, y: Tensor | None = None):
        """q(z|x) (or q(z|x, y)); x is (B, C, H, W) or (B, C*H*W): a ``DiagonalGaussian``, a
        ``FlowPosterior``, or with two layers a ``StackedPosterior`` over [z1, z2]."""
        q = self.posterior(self.encoder_out(x, y))
        return q if self.top_encoder is None else StackedPosterior(q, self.top_encoder)

    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The deterministic code (B, latent_dim): mu, the flow's image of mu, or z1's code; never sampled."""
        if self.top_encoder is None and self.config.flow == "none":
            return super().embed(x, y)
        return self.encode(x, y).mean

    def decode(self, z: Tensor, y: Tensor | None = None):
        """p(x|z) for z (..., latent_dim), or with two layers the whole latent [z1, z2] (..., latent_dim +
        top_latent_dim), of which the decoder reads z1."""
        if self.top_encoder is not None and z.shape[-1] == self.config.latent_dim + self.config.top_latent_dim:
            z = z[..., : self.config.latent_dim]
        return super().decode(z, y)

    def sample_codes(self, n: int, generator=None, device=None) -> Tensor:
        """n codes from the prior (n, latent_dim): with two layers z1 of an ancestral draw [z1, z2]."""
        return super().sample_codes(n, generator, device)[..., : self.config.latent_dim]


FAMILY = register(Family("vae", build=VAE, summary="variational autoencoder: Gaussian or flow q(z|x), N(0, I) or "
                                                     "learned prior, one or two stochastic layers (Kingma & Welling "
                                                     "2013); conditional with labels"))
