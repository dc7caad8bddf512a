"""A run directory loaded for use: ``aevb.load(path)`` -> ``Run`` (its model in eval mode, its configuration,
and what was written beside them: metrics, the latest evaluation, the best epoch, the fitted samplers), with
``run.sample(n, sampler=...)``. The files themselves are read and written by ``aevb.checkpoint``; drawing codes
and images is ``aevb.samplers``'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .checkpoint import fitted_samplers, load_model, read_best, read_evaluation, read_metrics
from .config import RunConfig
from .samplers import draw_codes, draw_images


@dataclass
class Run:
    """A loaded run directory: its model (in eval mode) and configuration."""

    dir: Path
    config: RunConfig
    model: torch.nn.Module
    which: str = "last"  # the weights loaded: "last" or "best"

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.dir)

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """The latest ``aevb evaluate`` of the run (evaluation.json), or None."""
        return read_evaluation(self.dir)

    @property
    def best(self) -> dict[str, Any] | None:
        """The best epoch by validation ELBO (epoch, score key and value), or None."""
        return read_best(self.dir)

    def dataset(self, data_dir: str | None = None):
        """The run's data set, read as it was configured for training."""
        from dataclasses import replace

        from .data import load_dataset

        cfg = self.config.data if data_dir is None else replace(self.config.data, data_dir=data_dir)
        return load_dataset(cfg)

    @property
    def samplers(self) -> list[str]:
        """The samplers fitted on the run's codes (``aevb fit-prior``), by name."""
        return fitted_samplers(self.dir)

    def sample_codes(self, n: int, sampler: str | None = None, temperature: float = 1.0,
                     seed: int = 0) -> torch.Tensor:
        """n codes (n, *latent_shape) on the model's device: from the model's prior (``sampler=None``) or from
        the fitted sampler NAME (``aevb.samplers``); ``temperature`` scales the sampler's noise."""
        return draw_codes(self, n, sampler, temperature, seed)

    def sample(self, n: int, sampler: str | None = None, temperature: float = 1.0, seed: int = 0,
               y: int | torch.Tensor | None = None) -> torch.Tensor:
        """n decoded means (n, C, H, W) of codes from ``sample_codes`` (the same seed, the same codes); a
        conditional model needs ``y``: one class for all n, or n labels. ``aevb.load(run).sample(64,
        sampler="gmm", seed=0)``."""
        return draw_images(self, n, sampler, temperature, seed, y)


def load(run_dir: str | Path, device: str | torch.device = "cpu", *, trust_code: bool = False,
         networks: Mapping[str, type] | None = None, which: str = "last") -> Run:
    """Rebuild a run's model from its directory alone: ``aevb.load("runs/mnist")``.

    ``which="best"`` loads the weights of the epoch with the best validation ELBO (best.safetensors)
    instead of the last ones.

    A run trained with your own networks records their classes by import path; rebuilding them
    imports that code, so it needs ``trust_code=True`` or the classes themselves
    (``networks={"encoder": MyEncoder, "decoder": MyDecoder}``).
    """
    model, config = load_model(run_dir, device, trust_code=trust_code, networks=networks, which=which)
    return Run(Path(run_dir), config, model, which)
