"""FactorVAE's discriminator steps on toy codes, one process of a two-process group or alone: a module of its
own with few imports, which the spawned processes of tests/test_disentangling_models.py import."""

from __future__ import annotations

import os

import torch
from torch import nn

from aevb.models.factorvae import FactorVAE, FactorVAEConfig

TOY = dict(input_shape=(1, 1, 4), latent_dim=4, hidden=(8,), likelihood="gaussian_fixed", discriminator_hidden=(16,),
           discriminator_lr=1e-2)


class CodesAreInputs(nn.Module):
    """An encoder whose posterior means are the inputs themselves, with a tiny variance: codes we choose."""

    def forward(self, x, c=None):
        mu = x.flatten(1)
        return {"mu": mu, "log_var": torch.full_like(mu, -10.0)}


def discriminator_after_steps(same_data: bool, rank: int = 0) -> dict[str, torch.Tensor]:
    """D's weights after 3 ``after_step`` calls on toy codes: rank 0's batches, or with ``same_data`` False
    batches of this rank's own."""
    torch.manual_seed(0)
    model = FactorVAE(FactorVAEConfig(**TOY), encoder=CodesAreInputs())
    g = torch.Generator().manual_seed(0 if same_data else 10 + rank)
    for _ in range(3):
        model.after_step(torch.randn(16, 1, 1, 4, generator=g), None, g, torch.tensor(False))
    return {k: v.clone() for k, v in model.discriminator.state_dict().items()}


def rank_main(rank: int, world: int, port: int, out: str) -> None:
    """One process of the group: D after its steps on shared and on its own batches, saved in ``out``."""
    from aevb.distributed import init_from_env, shutdown

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    info = init_from_env()
    for same in (True, False):
        torch.save(discriminator_after_steps(same, rank), f"{out}/rank{rank}-{same}.pt")
    shutdown(info)
