"""The IWAE paper's (Burda, Grosse & Salakhutdinov 2016) one-stochastic-layer VAE, as in its table 1.

784-200-200-50 with tanh, Bernoulli decoder, dynamically binarized MNIST, M = 20, Adam
(beta1 0.9, beta2 0.999, eps 1e-4) with their schedule: 3^i passes at learning rate
0.001 * 10^(-i/7) for i = 0..7 (3280 passes). The test log p(x) is the k = 5000 importance-
sampled estimate. Reference: their VAE (k = 1) reaches -86.76 nats (dynamic binarization).

``budget`` (training samples) truncates the schedule: stages run in order until it is spent,
so a short run is the start of theirs, not a compressed copy of it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..config import DataConfig, ModelConfig
from ..data import load_dataset
from ..evaluate import evaluate
from ..objectives import elbo
from ..train import binarize_draw
from .common import Clock, build, eval_subset, write_csv

REFERENCE_NATS = -86.76  # IWAE paper, table 1, VAE k=1, one stochastic layer
BATCH_SIZE = 20


def model_config() -> ModelConfig:
    return ModelConfig(input_shape=(1, 28, 28), likelihood="bernoulli", hidden=(200, 200), activation="tanh",
                       latent_dim=50)


def schedule_stages(n_train: int) -> list[tuple[int, float]]:
    """(training samples, learning rate) of each stage i = 0..7 of the IWAE schedule."""
    return [(3**i * n_train, 1e-3 * 10 ** (-i / 7)) for i in range(8)]


def run(out: str | Path, budget: int | None = None, k: int = 5000, n_test: int | None = None,
        subset: int | None = None, seed: int = 0, data_dir: str | None = None, log=print) -> dict[str, Path]:
    """Train (the schedule truncated to ``budget`` samples) and write ``iwae_table.csv``/``.png``."""
    out = Path(out)
    ds = load_dataset(DataConfig(dataset="mnist", data_dir=data_dir, binarize="dynamic", valid_size=0, subset=subset))
    x_train, x_test = ds.train.x, eval_subset(ds.test.x, n_test, seed)
    stages = schedule_stages(len(x_train))
    full = sum(s for s, _ in stages)
    budget = min(budget or full, full)
    model = build(model_config(), seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-4, fused=True)
    loss = partial(elbo, samples=1, kl="analytic")
    gen = torch.Generator().manual_seed(seed + 1)
    order = torch.Generator().manual_seed(seed)
    clock = Clock()
    n, seen, curve = len(x_train), 0, []
    perm, pos = None, n
    model.train()
    for stage, (length, lr) in enumerate(stages):
        for g in opt.param_groups:
            g["lr"] = lr
        stage_end = min(seen + length, budget)
        while seen + BATCH_SIZE <= stage_end:
            if pos + BATCH_SIZE > n:
                perm, pos = torch.randperm(n, generator=order), 0
            x = binarize_draw(x_train[perm[pos : pos + BATCH_SIZE]], gen)
            pos += BATCH_SIZE
            terms = loss(model, x, generator=gen)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            seen += BATCH_SIZE
        curve.append({"stage": stage, "lr": lr, "samples": seen, "seconds": clock()})
        log(f"iwae-table: stage {stage} (lr {lr:.2e}) done at {seen} samples ({clock():.0f} s)")
        if seen + BATCH_SIZE > budget:
            break
    res = evaluate(model, x_test, k=k, batch_size=100, chunk=min(k, 1000), seed=seed)
    row: dict[str, Any] = {"samples": seen, "passes": seen / n, "full_schedule_samples": full, "k": k,
                           "n_test": len(x_test), "test_log_likelihood": res["log_likelihood"],
                           "test_log_likelihood_stderr": res["log_likelihood_stderr"], "test_elbo": res["elbo"],
                           "active_units": res["active_units"], "reference_log_likelihood": REFERENCE_NATS,
                           "train_seconds": curve[-1]["seconds"], "total_seconds": clock()}
    log(f"iwae-table: test log p(x) {row['test_log_likelihood']:.2f} +- {row['test_log_likelihood_stderr']:.2f} "
        f"(k={k}, {len(x_test)} images) after {seen} samples; reference {REFERENCE_NATS}")
    csv_path = write_csv(out / "iwae_table.csv", [row])
    write_csv(out / "iwae_table_schedule.csv", curve)
    return {"csv": csv_path, "png": plot(row, out / "iwae_table.png")}


def plot(row: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz import save_figure

    fig, ax = plt.subplots(figsize=(4.0, 2.6))
    names = ["IWAE paper\nVAE (k=1)", f"aevb\n{row['passes']:.3g} passes"]
    vals = [-REFERENCE_NATS, -row["test_log_likelihood"]]
    ax.bar(names, vals, yerr=[0, row["test_log_likelihood_stderr"]], color=["0.6", "tab:red"])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"test -log p(x), k={row['k']} (nats)")
    ax.set_ylim(min(vals) - 10, max(vals) + 5)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80, tight=False)
