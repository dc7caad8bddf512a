"""The hierarchical VAE's training step against its FLOP floor, on one CPU thread.

    PYTHONPATH=src python benchmarks/hvae_step.py [--recipe mnist] [--steps 30]

The floor: every nn.Linear of the model runs once per step on the batch (the bottom-up pass, the top-down
pass, the decoder), 2 * in * out multiply-adds per row forward and twice that backward, divided by the
matrix-product rate this thread reaches on a large square product (the best case). CPU time is
``time.process_time`` (what the thread used, whatever else runs on the machine). Convolutions are not
counted, so this is for the MLP recipe.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn


def gemm_rate(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of one float32 (n x n) @ (n x n) product on this thread (the best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        torch.mm(a, b)
        best = min(best, time.process_time() - t)
    return 2 * n**3 / best


def step_flops(model: nn.Module, batch: int) -> int:
    """Forward + backward FLOPs of the model's linear layers for one step on ``batch`` rows."""
    return sum(6 * m.in_features * m.out_features * batch for m in model.modules() if isinstance(m, nn.Linear))


def main() -> None:
    from aevb.models import build_model
    from aevb.models.hvae import HVAEConfig, hierarchical_elbo
    from aevb.reproduce.hvae import RECIPES

    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="mnist")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    r = RECIPES[args.recipe]
    cfg = HVAEConfig(hidden=tuple(r["hidden"]), activation=r["activation"], latent_layers=r["latent_layers"],
                     latent_sizes=tuple(r["latent_sizes"]))
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = r["batch_size"]
    x = (torch.rand(batch, 1, 28, 28) > 0.5).float()
    g = torch.Generator().manual_seed(0)
    times = []
    for i in range(args.steps + 3):
        t = time.process_time()
        loss = hierarchical_elbo(model, x, generator=g, beta=1.0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step(x, None, g, torch.tensor(False))
        if i >= 3:
            times.append(time.process_time() - t)
    times.sort()
    step = times[len(times) // 2]
    flops = step_flops(model, batch)
    rate = gemm_rate()
    print(json.dumps({"recipe": args.recipe, "batch_size": batch, "parameters": sum(p.numel() for p in model.parameters()),
                      "step_cpu_seconds_median": round(step, 5), "step_gflop": round(flops / 1e9, 4),
                      "gemm_gflops_per_thread": round(rate / 1e9, 2), "floor_seconds": round(flops / rate, 5),
                      "step_over_floor": round(step / (flops / rate), 2)}))


if __name__ == "__main__":
    main()
