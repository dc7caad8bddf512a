"""What every model family shares: networks around a latent code, and the capabilities it declares.

A model holds networks and distribution objects, nothing of training: no optimizer, no step
counter, no loss (objectives in ``aevb.objectives`` are functions of a model and a batch).

The interface (shapes: x (B, C, H, W) or (B, C*H*W); z (..., B, Z); y a conditional model's labels,
integer classes (B,) or label weights (B, K), see ``aevb.conditional``):

- ``encode(x, y)`` -> q(z|x) (a posterior object, ``aevb.distributions``), when ``has_posterior``;
- ``embed(x, y)`` -> the deterministic code (B, Z), never sampled;
- ``decode(z, y)`` -> p(x|z), a likelihood object with parameters shaped (..., C, H, W);
- ``prior`` -> p(z), ``sample_codes(n, generator)`` -> codes drawn from it (n, *latent_shape), and
  ``sample(n, generator, y)`` -> their decoded means;
- ``reconstruct(x, y)`` -> the decoded mean at the code;
- ``capabilities`` -> what the model can do (below): the trainer, evaluation, figures, the report
  and the explorer ask this, never the family's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..conditional import LabelError, check_labels, label_tensor, one_hot
from ..config import ConfigError, ModelConfig
from ..nets import as_likelihood, build_decoder, build_encoder, init_normal_


@dataclass(frozen=True)
class Capabilities:
    """What a model can do.

    ``has_prior``: it was trained with a prior p(z), so ``sample`` draws from the model itself;
    ``has_posterior``: ``encode`` returns q(z|x), so importance-sampled log p(x), the KL per
    dimension and active units apply; ``conditional``: every method that sees x or z takes a label;
    ``objectives``: the training objectives it supports (``aevb.objectives.OBJECTIVES``), the first
    its default; ``latent_shape``: the shape of one code (plots and the explorer use its size);
    ``code_name``: what ``embed`` returns, for captions.
    """

    has_prior: bool
    has_posterior: bool
    conditional: bool
    objectives: tuple[str, ...]
    latent_shape: tuple[int, ...]
    code_name: str = "codes"

    @property
    def default_objective(self) -> str:
        return self.objectives[0]

    @property
    def latent_dim(self) -> int:
        return math.prod(self.latent_shape)


class LatentVariableModel(nn.Module):
    """Encoder with named heads, decoder p(x|z), prior p(z); a family subclasses it and sets
    ``capabilities``. ``encoder``/``decoder`` replace the built-in networks (``aevb.nets``
    documents the contract); ``heads`` are the encoder outputs the family reads."""

    CODE = "mu"  # the encoder head that is the deterministic code
    # The component settings of ModelConfig this family builds from (of COMPONENT_DEFAULTS); any other
    # one set away from its default is refused when the model is built.
    COMPONENTS: frozenset[str] = frozenset()

    def __init__(self, config: ModelConfig, heads: tuple[str, ...], encoder: nn.Module | None = None,
                 decoder: nn.Module | None = None):
        super().__init__()
        check_components(config, self.COMPONENTS)
        self.config = config
        self.heads = heads
        self.encoder = encoder if encoder is not None else build_encoder(config, heads=heads)
        self.decoder = decoder if decoder is not None else build_decoder(config)
        if config.init_std is not None:
            init_normal_(self, config.init_std)

    @property
    def capabilities(self) -> Capabilities:
        raise NotImplementedError

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def device(self) -> torch.device:
        """Where the parameters are (the CPU for a model without any)."""
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # -- what a family trains itself (the trainer's hooks) --------------------------------------------

    def optimized_parameters(self) -> list[nn.Parameter]:
        """The parameters the trainer's optimizer updates with the objective's gradient: all of them,
        unless the family trains some itself in ``after_step`` (a discriminator), or keeps copies that are
        not trained at all (an average of the weights, held as buffers)."""
        return list(self.parameters())

    def auxiliary_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The family's own optimizers, by name (none by default): saved in and restored from the
        training state with the trainer's, so a resumed run continues exactly. Build them once (cache
        them on the model) after the model is on its device; each must hold parameters that
        ``optimized_parameters`` leaves out."""
        return {}

    def after_step(self, x: Tensor, y: Tensor | None, generator, skipped: Tensor) -> dict[str, Tensor]:
        """Called by the trainer after every optimizer step, outside autocast and without gradients of the
        main step: the family's own updates (a discriminator step, an average of the weights). ``x``, ``y``:
        this process's batch; ``generator``: the run's noise; ``skipped``: a boolean device tensor, true
        when the trainer skipped the step (do not wait for it on the host; use ``torch.where``). Returns
        per-example terms to log beside the objective's (metrics ``train_NAME``); none by default. Under
        torchrun a family that trains parameters here all-reduces their gradients itself
        (``aevb.distributed``)."""
        return {}

    def condition(self, y: Tensor | None) -> Tensor | None:
        """The one-hot code (B, K) the networks read beside x or z; None for an unconditional model.
        Shapes are checked here; label values where they enter (``aevb.conditional.check_labels``)."""
        k = self.config.num_classes
        if k == 0:
            if y is not None:
                raise LabelError("this model is not conditional (it was trained without labels); do not pass a label")
            return None
        if y is None:
            raise LabelError(f"this model is conditional on a label ({k} classes); pass y")
        return one_hot(y, k, torch.float32)

    def encoder_out(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """The encoder's named heads for x (and y), each (B, Z)."""
        c = self.condition(y)
        if c is not None and c.shape[:-1] != x.shape[:1]:
            raise LabelError(f"one label per image is needed: {x.shape[0]} images, labels shaped {tuple(y.shape)}")
        return self.encoder(x) if c is None else self.encoder(x, c)  # custom networks may take x alone

    def decode(self, z: Tensor, y: Tensor | None = None):
        """p(x|z) (or p(x|z, y)) with parameters shaped (..., C, H, W); z is (..., Z), y (B,) or (B, K)
        for the last batch dimension of z."""
        c = self.condition(y)
        out = self.decoder(z) if c is None else self.decoder(z, c)
        return as_likelihood(self.config, out)

    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The deterministic code of x (a VAE's posterior mean E_q[z|x(, y)]); never sampled."""
        return self.encoder_out(x, y)[self.CODE]

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The decoded mean at the code (no sampling)."""
        return self.decode(self.embed(x, y), y).mean

    @torch.no_grad()
    def code_quantiles(self, probs: Tensor, draws: int = 20000, seed: int = 0) -> tuple[Tensor, str]:
        """Quantiles of each code dimension under the prior at probabilities ``probs`` (P,): (P, latent_dim),
        and what they are. N(0, I): the exact Gaussian quantiles; any other prior: the empirical quantiles
        of ``draws`` codes from ``sample_codes`` (seeded)."""
        from ..distributions import StandardNormal

        probs = probs.double()
        if isinstance(self.prior, StandardNormal):
            q = torch.distributions.Normal(0.0, 1.0).icdf(probs).float()
            return q[:, None].expand(-1, self.latent_dim).to(self.device), "Gaussian quantiles"
        z = self.sample_codes(draws, generator=torch.Generator(device=self.device).manual_seed(seed)).double()
        return torch.quantile(z, probs.to(z.device), dim=0).float(), f"quantiles of {draws} prior draws"

    def sample_codes(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tensor:
        """n codes z ~ p(z) in the space ``decode`` and ``embed`` share: (n, *latent_shape), on ``device``
        (the model's by default)."""
        return self.prior.sample(n, generator=generator, device=device or self.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: int | Tensor | None = None) -> Tensor:
        """Decoded means of z ~ p(z): n images shaped (n, C, H, W). A conditional model needs ``y``:
        one class for all n, or n labels."""
        device = self.device
        if isinstance(y, int):
            y = label_tensor(y, n, device)
        if y is not None and self.config.num_classes and not y.is_floating_point():
            check_labels(y, self.config.num_classes, "labels")
        return self.decode(self.sample_codes(n, generator=generator), y).mean


# The component settings and their defaults: what a family that does not build one must leave alone.
COMPONENT_DEFAULTS = {"prior": "standard", "flow": "none", "stochastic_layers": 1}
_COMPONENT_WORDS = {"prior": "a learned prior", "flow": "a flow posterior",
                    "stochastic_layers": "a second stochastic layer"}


def check_components(config: ModelConfig, supported: frozenset[str]) -> None:
    """``ConfigError`` (one line naming the setting) for a component set in ``config`` that the family,
    building only ``supported`` ones, does not have."""
    for name, default in COMPONENT_DEFAULTS.items():
        value = getattr(config, name, default)
        if name not in supported and value != default:
            raise ConfigError(f"the {config.family} model cannot have {_COMPONENT_WORDS[name]} ({name}={value!r}); "
                              f"leave {name} at {default!r}, or choose a family that builds one (vae)")


@torch.no_grad()
def check_networks(model: LatentVariableModel, x: Tensor, y: Tensor | None = None) -> None:
    """Run a couple of examples through the model's networks and say in one line what breaks the
    contract (``aevb.nets``): the heads the encoder must return and the decoder's output.
    A plain ``ValueError`` subclass (``NetworkError``) for a user's network."""
    from ..nets import NetworkError

    was_training = model.training
    model.eval()
    try:
        caps = model.capabilities
        z_dim = caps.latent_dim
        try:
            out = model.encoder_out(x, y)
        except LabelError:
            raise
        except Exception as e:  # noqa: BLE001 -- a user's network: say where it failed
            raise NetworkError(f"the encoder failed on a batch shaped {tuple(x.shape)}: {type(e).__name__}: {e}") from None
        if not isinstance(out, dict):
            raise NetworkError(f"the encoder returned {type(out).__name__}; it must return a dict with "
                               f"{', '.join(repr(h) for h in model.heads)}")
        for head in model.heads:
            if head not in out:
                raise NetworkError(f"the encoder's output has no {head!r}; the {model.config.family} model reads "
                                   f"{', '.join(repr(h) for h in model.heads)} (got {', '.join(map(repr, out)) or 'nothing'})")
            if tuple(out[head].shape) != (len(x), z_dim):
                raise NetworkError(f"the encoder's {head!r} is shaped {tuple(out[head].shape)}; expected "
                                   f"({len(x)}, {z_dim}) (batch, latent_dim)")
        z = out[model.CODE]
        try:
            lik = model.decode(z, y)
        except NetworkError:
            raise
        except Exception as e:  # noqa: BLE001
            raise NetworkError(f"the decoder failed on codes shaped {tuple(z.shape)}: {type(e).__name__}: {e}") from None
        log_p = lik.log_prob(x.reshape(len(x), *model.config.input_shape))
        if tuple(log_p.shape) != (len(x),):
            raise NetworkError(f"the decoder's likelihood gives log p(x|z) shaped {tuple(log_p.shape)} for "
                               f"{len(x)} images; expected ({len(x)},)")
    finally:
        model.train(was_training)
