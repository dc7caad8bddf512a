"""Build a model from its configuration: the family's builder, with your own networks where the
configuration names them (``aevb.nets.load_network``)."""

from __future__ import annotations

from typing import Mapping

from torch import nn

from ..config import ModelConfig
from ..nets import load_network
from .registry import get_family


def build_model(config: ModelConfig, *, encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                trust_code: bool = False, networks: Mapping[str, type] | None = None) -> nn.Module:
    """The model ``config`` describes.

    ``encoder``/``decoder``: network instances to use as they are. Otherwise a network recorded in
    ``config.encoder``/``config.decoder`` (your own class) is rebuilt from its import path and
    arguments, which imports your code: only with ``trust_code=True``, or when ``networks`` gives
    the class itself (``{"encoder": MyEncoder}``).
    """
    family = get_family(config.family)
    if encoder is None and config.encoder is not None:
        encoder = load_network(config.encoder, "encoder", trust_code, networks)
    if decoder is None and config.decoder is not None:
        decoder = load_network(config.decoder, "decoder", trust_code, networks)
    return family.build(config, encoder=encoder, decoder=decoder)
