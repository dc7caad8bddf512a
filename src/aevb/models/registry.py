"""The model families aevb can build, by name: one ``Family`` record each.

A family is one module of ``aevb.models`` (or of your own code) that defines a model class and
registers it::

    FAMILY = register(Family("vae", build=VAE, summary="Gaussian q(z|x), N(0, I) prior (Kingma & Welling 2013)"))

``ModelConfig.family`` names it; ``build_model(config)`` builds it; ``RunConfig.from_dict`` reads
the model part of ``config.json`` into the family's own config class (``Family.config``, a
subclass of ``ModelConfig`` when the family has settings of its own; ``register`` lists it in
``config.MODEL_CONFIGS``, so that the config module imports no family). Nothing outside a family's
module asks which family a model is: it asks the model's ``capabilities``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..config import MODEL_CONFIGS, ConfigError, ModelConfig


@dataclass(frozen=True)
class Family:
    """One model family: its name, how to build it from its config, and its config class.

    ``build(config, encoder=None, decoder=None)`` returns the model (an ``nn.Module`` following
    ``aevb.models.base.LatentVariableModel``); ``encoder``/``decoder`` are networks to use instead
    of the built-in ones (``aevb.nets`` documents their contract).
    """

    name: str
    build: Callable[..., nn.Module]
    config: type[ModelConfig] = ModelConfig
    summary: str = ""


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry (registering the same name again replaces it) and return it."""
    if not (isinstance(family.config, type) and issubclass(family.config, ModelConfig)):
        raise TypeError(f"family {family.name!r}: config must be ModelConfig or a subclass of it")
    FAMILIES[family.name] = family
    MODEL_CONFIGS[family.name] = family.config  # what RunConfig.from_dict reads the model part into
    return family


def get_family(name: str) -> Family:
    """The registered family called ``name`` (``ConfigError`` naming the known ones otherwise)."""
    family = FAMILIES.get(name)
    if family is None:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)} (a family defined in "
                          "your own code is known once the module that registers it is imported)")
    return family


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)
