"""Pieces the reproductions share: the paper's models, a compact training loop, CSV writing."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import atomic_write
from ..config import DataConfig, ModelConfig
from ..data import Dataset, dataset_info, load_dataset
from ..models import VAE

PAPER_LRS = (0.01, 0.02, 0.1)  # the paper's Adagrad step sizes (section 5)
PAPER_INIT_STD = 0.01  # N(0, 0.01) initialisation, read as std 0.01

# The paper's experiments: which data set each reads and its hidden width. MNIST is the
# standard statically binarized MNIST of Larochelle & Murray. Shape and likelihood (Bernoulli
# for MNIST, learned-variance Gaussian for Frey Face) come from the data set's record.
DATASETS = {
    "mnist": {"data": "binarized_mnist", "hidden": 500},
    "frey_face": {"data": "frey_face", "hidden": 200},
}


def paper_model_config(dataset: str, latent_dim: int, hidden: int | None = None) -> ModelConfig:
    spec = DATASETS[dataset]
    info = dataset_info(spec["data"])
    return ModelConfig(input_shape=info.shape, likelihood=info.likelihood, hidden=(hidden or spec["hidden"],),
                       activation="tanh", latent_dim=latent_dim, init_std=PAPER_INIT_STD)


def load_paper_data(dataset: str, data_dir: str | None = None) -> Dataset:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    return load_dataset(DataConfig(dataset=DATASETS[dataset]["data"], data_dir=data_dir))


def build(config: ModelConfig, seed: int) -> VAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VAE(config)


def eval_subset(x: Tensor, n: int | None, seed: int = 0) -> Tensor:
    """A fixed random subset of ``n`` rows. Not the first n: the MNIST test files are ordered
    (the first 1000 binarized test digits average 133 on-pixels against 104 overall)."""
    if n is None or n >= len(x):
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def eval_schedule(budget: int, batch_size: int, points: int, first: int | None = None) -> list[int]:
    """Log-spaced step numbers (ending at the last step) at which to record the curve."""
    steps = max(1, budget // batch_size)
    lo = max(1, (first or max(batch_size, budget // 1000)) // batch_size)
    return sorted({int(round(s)) for s in np.geomspace(min(lo, steps), steps, points)})


def train_loop(model, x_train: Tensor, loss_fn: Callable[..., dict[str, Tensor]], optimizer: torch.optim.Optimizer,
               steps: int, batch_size: int, record_at: Iterable[int], on_record: Callable[[int], None],
               seed: int = 0, dynamic_binarize: bool = False, schedule: Callable[[int], float] | None = None) -> None:
    """Minibatch training for ``steps`` steps (reshuffling every pass); ``on_record(step)`` at ``record_at``.

    ``schedule(step)`` (optional) sets the learning rate before each step.
    """
    n = len(x_train)
    order = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    noise = torch.Generator().manual_seed(seed + 1)
    record = set(record_at)
    perm, pos = None, n
    model.train()
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=order), 0
        x = x_train[perm[pos : pos + batch_size]]
        pos += batch_size
        if dynamic_binarize:
            x = torch.bernoulli(x, generator=noise)
        if schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
        terms = loss_fn(model, x, generator=noise)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        if step in record:
            model.eval()
            on_record(step)
            model.train()


def plot_train_test(ax, rows: list[dict[str, Any]], train_key: str, test_key: str, color: str, label: str) -> None:
    """One method's curves against training samples: train solid, test dashed."""
    xs = [float(r["samples"]) for r in rows]
    ax.plot(xs, [float(r[train_key]) for r in rows], "-", color=color, label=f"{label} (train)")
    ax.plot(xs, [float(r[test_key]) for r in rows], "--", color=color, label=f"{label} (test)")


FIGURE_DPI = 160
FIGURE_MIN_WIDTH = 10.5  # inches: at FIGURE_DPI, 1680 px, so that a figure reads at full size


def legend_below(fig, axes) -> None:
    """One legend for every panel, below them (outside every axes, so it covers no curve); ``fig`` must use
    the constrained layout."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=min(len(entries), 6),
                   fontsize=9, frameon=False)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the rows atomically: a run stopped while writing leaves the previous file whole."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write(Path(path), buf.getvalue().encode())
    return Path(path)


def merge_curves(paths: Iterable[str | Path], key: tuple[str, str]) -> list[dict[str, str]]:
    """The rows of several CSVs written by separate runs, one curve per ``key`` (for example
    ("nz", "algorithm")); a later file wins for the same key. Sorted by the key, numbers first."""
    curves: dict[tuple[str, str], list[dict[str, str]]] = {}
    for p in paths:
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        for k in {(r[key[0]], r[key[1]]) for r in rows}:
            curves[k] = [r for r in rows if (r[key[0]], r[key[1]]) == k]
    return [r for k in sorted(curves, key=lambda k: (int(k[0]), k[1])) for r in curves[k]]


class Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.start, 3)
