"""Tiny trained runs shared by the viz, report, serve and browser tests.

Trained once per test process (functools.cache) on the embedded ``digits`` data set, in
a temporary folder removed at exit: a few seconds each on one CPU core.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

from aevb.checkpoint import save_model
from aevb.run import Run, load
from aevb.config import ModelConfig, RunConfig

_ROOT = Path(tempfile.mkdtemp(prefix="aevb-viz-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.cache
def digits_run(latent_dim: int = 2, kind: str = "vae", epochs: int = 25, conditional: bool = False) -> Run:
    """``conditional=True``: conditioned on the 10 digit labels (``num_classes=10``)."""
    from aevb.train import train

    torch.set_num_threads(1)
    out = _ROOT / f"digits-{kind}-{latent_dim}d{'-conditional' if conditional else ''}-{epochs}e"
    return train(dataset="digits", out=out, latent_dim=latent_dim, model=kind, epochs=epochs, hidden=(64,),
                 progress=False, device="cpu", seed=0, num_classes=10 if conditional else 0)


@functools.cache
def colour_run(latent_dim: int = 3, shape: tuple[int, int, int] = (3, 10, 14)) -> Run:
    """An untrained colour model (no data set behind it): for drawing colour pictures."""
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(input_shape=shape, latent_dim=latent_dim, hidden=(16,)))
    from aevb.models import build_model

    out = _ROOT / f"colour-{latent_dim}d"
    save_model(out, build_model(cfg.model), cfg)
    return load(out)


def aevb(capsys, *args: str) -> tuple[int, str, str]:
    """Run the `aevb` command in this process (no interpreter start-up): (status, stdout, stderr)."""
    from aevb.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err
