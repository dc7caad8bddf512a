"""The models: ``VAE`` (Gaussian q(z|x), prior N(0, I)) and a plain deterministic ``AE``.

A model holds networks and nothing of training: no optimizer, no step counter, no
loss. Objectives (``aevb.objectives``) are functions of a model and a batch.

A conditional model (``config.num_classes > 0``; Sohn et al. 2015) takes a label ``y``
in every method that sees x or z: q(z|x, y), p(x|z, y), with the prior p(z) = N(0, I)
as before. ``y`` holds integer classes (B,) or label weights (B, K) (``aevb.conditional``);
an unconditional model takes ``y=None`` and refuses a label.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .conditional import LabelError, check_labels, label_tensor, one_hot
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

    def condition(self, y: Tensor | None) -> Tensor | None:
        """The one-hot code (B, K) the networks read beside x or z; None for an unconditional model.
        Shapes are checked here; label values where they enter (``aevb.conditional.check_labels``)."""
        k = self.config.num_classes
        if k == 0:
            if y is not None:
                raise LabelError("this model is not conditional (it was trained without --conditional); "
                                 "do not pass a label")
            return None
        if y is None:
            raise LabelError(f"this model is conditional on a label ({k} classes); pass y")
        return one_hot(y, k, torch.float32)

    def _encoder_out(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        c = self.condition(y)
        if c is not None and c.shape[:-1] != x.shape[:1]:
            raise LabelError(f"one label per image is needed: {x.shape[0]} images, labels shaped {tuple(y.shape)}")
        return self.encoder(x) if c is None else self.encoder(x, c)  # custom networks may take x alone

    def decode(self, z: Tensor, y: Tensor | None = None) -> Bernoulli | Gaussian | DiscretizedLogistic:
        """p(x|z) (or p(x|z, y)) with parameters shaped (..., C, H, W); z is (..., Z), y (B,) or (B, K)
        for the last batch dimension of z."""
        c = self.condition(y)
        return self.decoder(z) if c is None else self.decoder(z, c)

    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The deterministic code of x (a VAE's posterior mean E_q[z|x(, y)]); never sampled."""
        return self._encoder_out(x, y)[self.CODE]

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The decoded mean at the code (no sampling)."""
        return self.decode(self.embed(x, y), y).mean

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: int | Tensor | None = None) -> Tensor:
        """Decoded means of z ~ N(0, I): n images shaped (n, C, H, W). (An AE has no prior:
        its samples are usually poor images, which is the point of the AE-vs-VAE comparison.)
        A conditional model needs ``y``: one class for all n, or n labels."""
        device = next(self.parameters()).device
        if isinstance(y, int):
            y = label_tensor(y, n, device)
        if y is not None and self.config.num_classes and not y.is_floating_point():
            check_labels(y, self.config.num_classes, "labels")
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.decode(z, y).mean


class VAE(_Autoencoder):
    """Auto-Encoding Variational Bayes (Kingma & Welling 2013), section 3."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, heads=("mu", "log_var"))

    def encode(self, x: Tensor, y: Tensor | None = None) -> DiagonalGaussian:
        """q(z|x) = N(mu(x), diag(exp(log_var(x)))) (or q(z|x, y)); x is (B, C, H, W) or (B, C*H*W)."""
        out = self._encoder_out(x, y)
        log_var = out["log_var"].clamp(self.config.log_var_min, self.config.log_var_max)
        return DiagonalGaussian(out["mu"], log_var)


class AE(_Autoencoder):
    """A deterministic autoencoder with the same networks: code = f(x), x' = g(code)."""

    CODE = "code"

    def __init__(self, config: ModelConfig):
        super().__init__(config, heads=("code",))


def build_model(config: ModelConfig) -> VAE | AE:
    return VAE(config) if config.kind == "vae" else AE(config)
