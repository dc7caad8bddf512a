"""Wake-sleep (Hinton, Dayan, Frey & Neal 1995): the paper's baseline, on the VAE's own networks.

Two phase losses, each a pure function of (model, batch) returning named terms in nats:

- wake: z ~ q(z|x) for data x, held fixed (no gradient through the sample); the decoder
  (the generative model) maximises log p(x|z) + log p(z). Only decoder parameters get gradients.
- sleep: (z, x~) dreamt from the generative model, z ~ N(0, I), x~ ~ p(x|z), held fixed;
  the encoder (the recognition model) maximises log q(z|x~). Only encoder parameters get gradients.

Because the two losses touch disjoint parameters, one optimizer step on their sum updates
the decoder with the wake gradient and the encoder with the sleep gradient:
``wake_sleep_step_loss`` is that sum, the objective ``aevb train --algorithm wake-sleep`` uses.
Its ``elbo`` term is the Monte Carlo bound log p(x|z) + log p(z) - log q(z|x) at the wake
sample (estimator A, L = 1), for monitoring only.

Every draw (z ~ q(z|x), z ~ p(z), x~ ~ p(x|z)) is made by the distribution objects' samplers,
in float32, from ``generator``: a torch.Generator, or under data parallelism the trainer's
sharded view of one shared generator (``aevb.distributed.ShardedNoise``), so that N processes
dream the same pairs as one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .objectives import Terms, as_images, reduce_terms


def wake_loss(model, x: Tensor, generator: torch.Generator | None = None, reduction: str = "mean") -> Terms:
    """Wake phase: -(log p(x|z) + log p(z)) at z ~ q(z|x), the sample detached (decoder update)."""
    x = as_images(model, x)
    q = model.encode(x)
    with torch.no_grad():
        z = q.rsample(generator=generator)  # (B, Z)
        log_q = q.log_prob(z)
    log_joint = model.decode(z).log_prob(x) + model.prior.log_prob(z)  # (B,)
    terms = {"loss": -log_joint.mean(), "wake_log_joint": log_joint.detach(),
             "elbo": (log_joint - log_q).detach()}
    return reduce_terms(terms, reduction)


def dream(model, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(z, x~): z ~ p(z), x~ ~ p(x|z); no gradients. Shapes (n, Z) and (n, C, H, W)."""
    with torch.no_grad():
        z = model.prior.sample(n, generator=generator, device=model.device)
        x = model.decode(z).sample(generator=generator)
    return z, x


def sleep_loss(model, n: int, generator: torch.Generator | None = None, reduction: str = "mean") -> Terms:
    """Sleep phase: -log q(z|x~) on n dreamt pairs (encoder update)."""
    z, x = dream(model, n, generator)
    log_q = model.encode(x).log_prob(z)  # (n,)
    return reduce_terms({"loss": -log_q.mean(), "sleep_log_q": log_q.detach()}, reduction)


def wake_sleep_step_loss(model, x: Tensor, generator: torch.Generator | None = None,
                         reduction: str = "mean", **_: object) -> Terms:
    """Both phases on one minibatch (as many dreams as data points): loss = wake + sleep."""
    wake = wake_loss(model, x, generator=generator, reduction="none")
    sleep = sleep_loss(model, x.shape[0], generator=generator, reduction="none")
    terms = {"loss": wake["loss"] + sleep["loss"], "wake_log_joint": wake["wake_log_joint"],
             "sleep_log_q": sleep["sleep_log_q"], "elbo": wake["elbo"]}
    return reduce_terms(terms, reduction)
