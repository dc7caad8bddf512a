"""The paper's figure 2: AEVB against wake-sleep, lower bound per datapoint against the
number of training samples evaluated (log x axis), train and test, one panel per Nz.

Settings as in section 5: MNIST with 500 tanh hidden units and a Bernoulli decoder, Frey
Face with 200 hidden units and a learned-variance Gaussian decoder; Adagrad with the step
size chosen from {0.01, 0.02, 0.1} by the training bound after a short trial, M = 100,
L = 1, weight decay 1/N_train (the N(0, I) parameter prior, per datapoint, because our
losses are means over the batch), weights initialised from N(0, 0.01^2).
The plotted bound is the ELBO with the analytic KL (estimator B) for both algorithms,
on ``n_eval`` fixed, randomly chosen training and test images.

Every model uses PyTorch's fused Adagrad kernel. With ``batched=True`` (the default where
``aevb.batched.why_not_stackable`` allows it) the models of one algorithm train together, all latent
sizes in one stacked step (``aevb.batched``), and so do the step-size trials (every latent size x
every candidate step size in one stack): each model's weights, and so every row of the CSV but
its ``seconds``, are the ones training it alone gives, to the bit on the CPUs we measured (a test
checks the CSVs agree). All models read the same data order (one seed), as they do alone.
``seconds`` is the wall time since the model's own run started; in a batched run, since the
stack's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..batched import StackedOptimizer, StackedVAE, fused_optimizer, train_stacked, why_not_stackable
from ..evaluate import evaluate_elbo
from ..objectives import elbo
from ..wake_sleep import wake_sleep_step_loss
from .common import (FIGURE_DPI, FIGURE_MIN_WIDTH, PAPER_LRS, Clock, build, eval_schedule, eval_subset,
                     legend_below, load_paper_data, paper_model_config, plot_train_test, train_loop, write_csv)

ALGORITHMS = ("aevb", "wake-sleep")
DEFAULT_NZ = {"mnist": (3, 5, 10, 20, 200), "frey_face": (2, 5, 10, 20)}


def _loss(algorithm: str):
    return partial(elbo, samples=1, kl="analytic") if algorithm == "aevb" else wake_sleep_step_loss


def _objective(algorithm: str) -> str:
    """The stacked objective's name (``aevb.batched.STACKED_OBJECTIVES``) of an algorithm."""
    return "elbo" if algorithm == "aevb" else "wake-sleep"


def paper_optimizer(model, lr: float, n_train: int) -> torch.optim.Optimizer:
    """Adagrad at step size ``lr`` with weight decay 1/N_train (the N(0, I) parameter prior, per datapoint)."""
    return fused_optimizer(model, "adagrad", lr, weight_decay=1.0 / n_train)


def train_one(dataset: str, algorithm: str, nz: int, x_train, x_eval_train, x_eval_test, budget: int, lr: float,
              batch_size: int = 100, points: int = 12, seed: int = 0, log=None,
              on_row=None) -> list[dict[str, Any]]:
    """Train one model and return its curve (one row per recorded step); ``on_row(row)`` is
    called at every recorded step (figure2.run writes the CSV there)."""
    model = build(paper_model_config(dataset, nz), seed)
    opt = paper_optimizer(model, lr, len(x_train))
    rows: list[dict[str, Any]] = []
    clock = Clock()

    def record(step: int) -> None:
        rows.append(_curve_row(model, dataset, nz, algorithm, lr, step * batch_size, x_eval_train, x_eval_test,
                               seed, clock, True, on_row, log))

    steps = max(1, budget // batch_size)
    train_loop(model, x_train, _loss(algorithm), opt, steps, batch_size, eval_schedule(budget, batch_size, points),
               record, seed=seed)
    return rows


def _curve_row(model, dataset: str, nz: int, algorithm: str, lr: float, samples: int, x_eval_train, x_eval_test,
               seed: int, clock, score_test: bool, on_row, log) -> dict[str, Any]:
    """One point of a figure-2 curve: the model's bound on the train and (``score_test``) test subsets after
    ``samples`` training samples, passed to ``on_row`` and logged."""
    tr = evaluate_elbo(model, x_eval_train, seed=seed)["elbo"]
    te = evaluate_elbo(model, x_eval_test, seed=seed)["elbo"] if score_test else float("nan")
    row = {"dataset": dataset, "nz": nz, "algorithm": algorithm, "lr": lr, "samples": samples,
           "train_bound": tr, "test_bound": te, "seconds": clock()}
    if on_row:
        on_row(row)
    if log:
        log(f"{dataset} Nz={nz} {algorithm} lr={lr}: {samples} samples, train {tr:.2f}, test {te:.2f} ({clock():.0f} s)")
    return row


def train_batch(dataset: str, algorithm: str, runs: list[tuple[int, float]], x_train, x_eval_train, x_eval_test,
                budget: int, batch_size: int = 100, points: int = 12, seed: int = 0, log=None, on_row=None,
                score_test: bool = True) -> list[list[dict[str, Any]]]:
    """``train_one`` for every (nz, lr) of ``runs`` in one stacked run (``aevb.batched``): the curve of
    each, in the order of ``runs``, the same rows as ``train_one`` gives but ``seconds``."""
    models = [build(paper_model_config(dataset, nz), seed) for nz, _ in runs]
    stack = StackedVAE(models)
    opt = StackedOptimizer(stack, "adagrad", [lr for _, lr in runs], weight_decay=1.0 / len(x_train))
    curves: list[list[dict[str, Any]]] = [[] for _ in runs]
    clock = Clock()

    def record(step: int) -> None:
        for (nz, lr), model, rows in zip(runs, models, curves):
            rows.append(_curve_row(model, dataset, nz, algorithm, lr, step * batch_size, x_eval_train, x_eval_test,
                                   seed, clock, score_test, on_row, log))

    steps = max(1, budget // batch_size)
    train_stacked(stack, x_train, _objective(algorithm), opt, steps, batch_size,
                  eval_schedule(budget, batch_size, points), record, seed=seed)
    return curves


def _trial_budget(budget: int, batch_size: int) -> int:
    return max(batch_size, min(budget // 20, 20_000))


def _best_lr(scores: list[tuple[float, float]]) -> float:
    """The step size with the best score of (lr, score) pairs, in order; NaN never wins; ties: the first."""
    best, best_lr = -float("inf"), scores[0][0]
    for lr, score in scores:
        if score == score and score > best:
            best, best_lr = score, lr
    return best_lr


def choose_lrs_batched(dataset: str, algorithm: str, nzs, x_train, x_eval_train, budget: int, lrs=PAPER_LRS,
                       batch_size: int = 100, seed: int = 0) -> dict[int, float]:
    """``choose_lr`` for every latent size at once: all (nz, lr) trials in one stacked run."""
    runs = [(nz, lr) for nz in nzs for lr in lrs]
    curves = train_batch(dataset, algorithm, runs, x_train, x_eval_train, x_eval_train[:1],
                         _trial_budget(budget, batch_size), batch_size=batch_size, points=1, seed=seed,
                         score_test=False)
    scores: dict[int, list[tuple[float, float]]] = {}
    for (nz, lr), rows in zip(runs, curves):
        scores.setdefault(nz, []).append((lr, rows[-1]["train_bound"]))
    return {nz: _best_lr(s) for nz, s in scores.items()}


def choose_lr(dataset: str, algorithm: str, nz: int, x_train, x_eval_train, budget: int, lrs=PAPER_LRS,
              batch_size: int = 100, seed: int = 0) -> float:
    """The paper's rule: the step size with the best training bound after the first few iterations."""
    trial = _trial_budget(budget, batch_size)
    scores = []
    for lr in lrs:
        rows = train_one(dataset, algorithm, nz, x_train, x_eval_train, x_eval_train[:1], trial, lr,
                         batch_size=batch_size, points=1, seed=seed)
        scores.append((lr, rows[-1]["train_bound"]))
    return _best_lr(scores)


def run(dataset: str, out: str | Path, budget: int = 1_000_000, nzs=None, algorithms=ALGORITHMS,
        lr: float | None = None, n_eval: int = 1000, points: int = 12, seed: int = 0, data_dir: str | None = None,
        log=print, batched: bool = True) -> dict[str, Path]:
    """Run the figure for one data set; writes ``figure2_<dataset>.csv`` and ``.png`` under ``out``.

    ``batched``: train each algorithm's models together (see the module docstring) where they stack;
    False trains every model alone. The CSV is the same either way (rows in the order of ``nzs``, then
    ``algorithms``, then samples), but for ``seconds``."""
    out = Path(out)
    nzs = tuple(nzs or DEFAULT_NZ[dataset])
    ds = load_paper_data(dataset, data_dir)
    x_train = ds.train.x
    x_eval_train = eval_subset(x_train, n_eval, seed)
    x_eval_test = eval_subset(ds.test.x, n_eval, seed)
    rows: list[dict[str, Any]] = []
    csv_path = out / f"figure2_{dataset}.csv"

    def keep(row: dict[str, Any]) -> None:  # every recorded point, so a stopped run keeps its curves so far
        rows.append(row)
        rows.sort(key=lambda r: (nzs.index(r["nz"]), algorithms.index(r["algorithm"]), r["samples"]))
        write_csv(csv_path, rows)

    algorithms = tuple(algorithms)
    probe = [build(paper_model_config(dataset, nz), seed) for nz in nzs[:1]]
    if batched and why_not_stackable(probe) is None:
        for algorithm in algorithms:
            chosen = ({nz: lr for nz in nzs} if lr is not None else
                      choose_lrs_batched(dataset, algorithm, nzs, x_train, x_eval_train, budget, seed=seed))
            train_batch(dataset, algorithm, [(nz, chosen[nz]) for nz in nzs], x_train, x_eval_train, x_eval_test,
                        budget, points=points, seed=seed, log=log, on_row=keep)
        png = plot(rows, out / f"figure2_{dataset}.png", title=f"{dataset}: AEVB vs wake-sleep")
        return {"csv": csv_path, "png": png}
    for nz in nzs:
        for algorithm in algorithms:
            chosen = lr if lr is not None else choose_lr(dataset, algorithm, nz, x_train, x_eval_train, budget,
                                                         seed=seed)
            train_one(dataset, algorithm, nz, x_train, x_eval_train, x_eval_test, budget, chosen,
                      points=points, seed=seed, log=log, on_row=keep)
    png = plot(rows, out / f"figure2_{dataset}.png", title=f"{dataset}: AEVB vs wake-sleep")
    return {"csv": csv_path, "png": png}


def plot(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One panel per Nz: lower bound per datapoint vs training samples evaluated (log x), as a PNG at
    least 1600 px wide."""
    from ..viz import save_figure

    return save_figure(figure(rows, title), path, dpi=FIGURE_DPI, tight=False)


def figure(rows: list[dict[str, Any]], title: str = ""):
    """The matplotlib figure ``plot`` writes: a panel per Nz and one legend below them all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nzs = sorted({int(r["nz"]) for r in rows})
    fig, axes = plt.subplots(1, len(nzs), figsize=(max(3.6 * len(nzs), FIGURE_MIN_WIDTH), 4.2), squeeze=False,
                             layout="constrained")
    colors = {"aevb": "tab:red", "wake-sleep": "tab:green"}
    for ax, nz in zip(axes[0], nzs):
        for algorithm in ALGORITHMS:
            sel = [r for r in rows if int(r["nz"]) == nz and r["algorithm"] == algorithm]
            if not sel:
                continue
            label = "AEVB" if algorithm == "aevb" else "Wake-Sleep"
            plot_train_test(ax, sel, "train_bound", "test_bound", colors[algorithm], label)
        ax.set_xscale("log")
        ax.set_title(f"$N_z = {nz}$")
        ax.set_xlabel("# training samples evaluated")
        ax.grid(alpha=0.3)
        panel = [r for r in rows if int(r["nz"]) == nz]
        finite = [float(r[k]) for r in panel for k in ("train_bound", "test_bound") if abs(float(r[k])) < 1e9]
        if finite:  # very low early values (wake-sleep at Nz = 200) must not flatten the rest
            curves = [v for v in ([float(r[k]) for r in c for k in ("train_bound", "test_bound")
                                   if abs(float(r[k])) < 1e9] for c in _curves(panel)) if v]
            leader = max(curves, key=lambda v: v[-1])
            top = max(finite)
            rise = top - sorted(leader)[len(leader) // 4]  # the leading curve's climb after its first quarter
            span = max(top - min(v[-1] for v in curves), rise, 1.0)
            low = max(top - 3 * span, min(finite))
            ax.set_ylim(low - 0.05 * span, top + 0.15 * span)
    axes[0][0].set_ylabel("$\\mathcal{L}$ (lower bound per datapoint)")
    legend_below(fig, axes[0])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _curves(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The rows of each algorithm, in order of samples."""
    by_algorithm: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_algorithm.setdefault(r["algorithm"], []).append(r)
    return [sorted(c, key=lambda r: int(r["samples"])) for c in by_algorithm.values()]
