"""The paper's figure 3: estimated marginal likelihood log p(x) on train and test against
training samples evaluated, for AEVB, wake-sleep and Monte Carlo EM (appendix E), on MNIST
with Nz = 3 and 100 tanh hidden units, at small and large training sets.

How our estimate differs from the paper's: the paper estimated log p(x) with an HMC-based
estimator (appendix D: HMC posterior samples, a density estimate of them, and the
marginal-likelihood identity). We use importance sampling, log (1/k) sum_i p(x, z_i)/r(z_i):
with r = q(z|x) for AEVB and wake-sleep (the IWAE bound), and with r = N(0, I), the prior,
for MCEM, which has no recognition model. Both are stochastic lower bounds whose bias
falls with k; with the prior as proposal the bias is larger (acceptable at Nz = 3, where
the prior covers the posterior, but it is a weaker estimate, so MCEM's line is pessimistic).

Monte Carlo EM (appendix E): each training point keeps a persistent posterior sample z;
per minibatch, one HMC transition of 10 leapfrog steps (step size adapted towards a 90%
acceptance rate) on log p(x|z) + log p(z), then 5 Adagrad updates of the decoder on
-log p(x|z) at those samples. Each minibatch counts as M training samples evaluated.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..distributions import standard_normal_log_prob
from ..evaluate import log_likelihood
from ..objectives import elbo
from ..wake_sleep import wake_sleep_step_loss
from .common import (FIGURE_DPI, FIGURE_MIN_WIDTH, Clock, build, eval_schedule, eval_subset, legend_below,
                     load_paper_data, paper_model_config, plot_train_test, train_loop, write_csv)

NZ, HIDDEN = 3, 100


def log_joint(model, x: Tensor, z: Tensor) -> Tensor:
    """log p(x|z) + log p(z), shape z.shape[:-1]."""
    return model.decode(z).log_prob(x) + standard_normal_log_prob(z)


def hmc_step(model, x: Tensor, z: Tensor, step_size: Tensor, leapfrog: int = 10,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One HMC transition per data point (independent chains); returns (new z, accepted mask)."""

    def grad_u(z_: Tensor) -> tuple[Tensor, Tensor]:
        z_ = z_.detach().requires_grad_(True)
        lj = log_joint(model, x, z_)
        (g,) = torch.autograd.grad(lj.sum(), z_)
        return -lj.detach(), -g  # potential U = -log joint and its gradient

    eps = step_size[:, None]
    p0 = torch.randn(z.shape, generator=generator)
    u0, g = grad_u(z)
    zn, p = z.clone(), p0 - 0.5 * eps * g
    for i in range(leapfrog):
        zn = zn + eps * p
        u, g = grad_u(zn)
        if i < leapfrog - 1:
            p = p - eps * g
    p = p - 0.5 * eps * g
    log_accept = (u0 + 0.5 * (p0**2).sum(-1)) - (u + 0.5 * (p**2).sum(-1))
    accept = torch.log(torch.rand(len(z), generator=generator)) < log_accept.nan_to_num(-math.inf)
    return torch.where(accept[:, None], zn.detach(), z), accept


def train_mcem(model, x_train: Tensor, steps: int, batch_size: int, record_at, on_record, lr: float,
               seed: int = 0, updates_per_batch: int = 5, leapfrog: int = 10, target_accept: float = 0.9) -> None:
    """Monte Carlo EM with HMC posterior samples (paper appendix E); only the decoder is trained."""
    n = len(x_train)
    gen = torch.Generator().manual_seed(seed + 1)
    z_all = torch.randn(n, model.latent_dim, generator=gen)  # persistent chains
    step_size = torch.full((n,), 0.05)
    opt = torch.optim.Adagrad(model.decoder.parameters(), lr=lr, weight_decay=1.0 / n)
    order = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    record = set(record_at)
    perm, pos = None, n
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=order), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        x = x_train[idx]
        z, accepted = hmc_step(model, x, z_all[idx], step_size[idx], leapfrog, gen)
        z_all[idx] = z
        # Robbins-Monro-like adaptation: grow on accept, shrink 9x as much on reject, so the
        # step size settles where 90% of proposals are accepted.
        grow = 1.02
        step_size[idx] *= torch.where(accepted, grow, grow ** (-target_accept / (1 - target_accept)))
        for _ in range(updates_per_batch):
            loss = -model.decode(z).log_prob(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if step in record:
            on_record(step)


@torch.no_grad()
def prior_log_likelihood(model, x: Tensor, k: int, seed: int = 0, chunk: int = 500) -> Tensor:
    """log (1/k) sum_i p(x|z_i), z_i ~ N(0, I): importance sampling with the prior, shape (N,)."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for start in range(0, k, chunk):
        z = torch.randn(min(chunk, k - start), len(x), model.latent_dim, generator=gen)  # (c, N, Z)
        parts.append(model.decode(z).log_prob(x).double())
    lw = torch.cat(parts, 0)
    return torch.logsumexp(lw, 0) - math.log(k)


def run(out: str | Path, budget: int = 100_000, train_sizes=(1000, 50000), k: int = 1000, n_eval: int = 100,
        points: int = 8, lr: float = 0.02, batch_size: int = 100, mcem: bool = True, seed: int = 0,
        data_dir: str | None = None, log=print) -> dict[str, Path]:
    """Writes ``figure3.csv`` and ``figure3.png`` under ``out``; ``mcem``: also Monte Carlo EM at the
    smallest training size (as the paper, which does not run it on the large set)."""
    out = Path(out)
    ds = load_paper_data("mnist", data_dir)
    x_test = eval_subset(ds.test.x, n_eval, seed)
    rows: list[dict[str, Any]] = []
    csv_path = out / "figure3.csv"
    steps = max(1, budget // batch_size)
    schedule = eval_schedule(budget, batch_size, points)
    config = paper_model_config("mnist", NZ, hidden=HIDDEN)
    for n_train in train_sizes:
        x_train = ds.train.x[:n_train]
        x_eval_train = eval_subset(x_train, n_eval, seed)
        methods = ["aevb", "wake-sleep"] + (["mcem"] if mcem and n_train == min(train_sizes) else [])
        for method in methods:
            model = build(config, seed)
            clock = Clock()

            def record(step: int, model=model, method=method, clock=clock, n_train=n_train, x_eval_train=x_eval_train):
                model.eval()
                if method == "mcem":
                    tr = prior_log_likelihood(model, x_eval_train, k, seed).mean().item()
                    te = prior_log_likelihood(model, x_test, k, seed).mean().item()
                else:
                    tr = log_likelihood(model, x_eval_train, k=k, seed=seed).mean().item()
                    te = log_likelihood(model, x_test, k=k, seed=seed).mean().item()
                model.train()
                rows.append({"method": method, "n_train": n_train, "samples": step * batch_size, "k": k,
                             "train_log_px": tr, "test_log_px": te, "seconds": clock()})
                log(f"figure3 N={n_train} {method}: {step * batch_size} samples, log p(x) train {tr:.2f}, "
                    f"test {te:.2f} ({clock():.0f} s)")

            if method == "mcem":
                train_mcem(model, x_train, steps, batch_size, schedule, record, lr=lr, seed=seed)
            else:
                loss = partial(elbo, samples=1, kl="analytic") if method == "aevb" else wake_sleep_step_loss
                opt = torch.optim.Adagrad(model.parameters(), lr=lr, weight_decay=1.0 / n_train)
                train_loop(model, x_train, loss, opt, steps, batch_size, schedule, record, seed=seed)
            write_csv(csv_path, rows)
    return {"csv": csv_path, "png": plot(rows, out / "figure3.png")}


def plot(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per training-set size: log p(x) vs training samples evaluated (log x), as a PNG at least
    1600 px wide."""
    from ..viz import save_figure

    return save_figure(figure(rows), path, dpi=FIGURE_DPI, tight=False)


def figure(rows: list[dict[str, Any]]):
    """The matplotlib figure ``plot`` writes: a panel per training-set size and one legend below them all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({int(r["n_train"]) for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(4.2 * len(sizes), FIGURE_MIN_WIDTH), 4.2), squeeze=False,
                             layout="constrained")
    colors = {"aevb": "tab:red", "wake-sleep": "tab:green", "mcem": "tab:blue"}
    names = {"aevb": "AEVB", "wake-sleep": "Wake-Sleep", "mcem": "MCEM"}
    for ax, n in zip(axes[0], sizes):
        for method in ("aevb", "wake-sleep", "mcem"):
            sel = [r for r in rows if int(r["n_train"]) == n and r["method"] == method]
            if not sel:
                continue
            plot_train_test(ax, sel, "train_log_px", "test_log_px", colors[method], names[method])
        ax.set_xscale("log")
        ax.set_title(f"$N_{{train}} = {n}$")
        ax.set_xlabel("# training samples evaluated")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("marginal log-likelihood (IS estimate)")
    legend_below(fig, axes[0])
    return fig
