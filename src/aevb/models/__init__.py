"""Model families: one module each, registered by name (``aevb.models.registry``).

| family | module | what it is |
|---|---|---|
| ``vae`` | ``vae.py`` | Kingma & Welling (2013): Gaussian q(z\\|x), N(0, I) prior, any likelihood; conditional with labels; the zoo's components: flow posteriors, learned priors, two stochastic layers (``stacked.py``) |
| ``ae`` | ``ae.py`` | a deterministic autoencoder with the same networks (no prior, no posterior) |
| ``factorvae`` | ``factorvae.py`` | FactorVAE (Kim & Mnih 2018): a VAE and a discriminator on its codes, trained alternately |
| ``hvae`` | ``hvae.py`` | a top-down hierarchy of L stochastic layers (LVAE/VDVAE/NVAE), MLP or convolutional residual cells |

Wake-sleep is an algorithm over the ``vae`` family (``aevb.wake_sleep``), not a family.
A model declares what it can do (``LatentVariableModel.capabilities``); the trainer, evaluation,
figures, report and explorer ask that, never the family's name.
"""

from .base import Capabilities, LatentVariableModel
from .registry import FAMILIES, Family, family_names, get_family, register
from . import vae, ae, factorvae, hvae  # noqa: E402,F401,I001  (registers the built-in families, vae first)
from .ae import AE
from .factorvae import FactorVAE
from .vae import VAE
from .build import build_model

__all__ = ["AE", "Capabilities", "FactorVAE", "FAMILIES", "Family", "LatentVariableModel", "VAE", "build_model",
           "family_names", "get_family", "register"]
