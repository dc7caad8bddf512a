"""``aevb reproduce ...``: the paper's experiments as commands.

    aevb reproduce figure2 --dataset frey_face --budget 10000000      # results/figure2_frey_face.csv and .png
    aevb reproduce figure3 --budget 1000000 --out results/fig3
    aevb reproduce iwae-table --budget 3000000 --out results/iwae
    aevb reproduce zoo --rows vae-1l,vamp --budget 10 --out results/zoo
    aevb reproduce hvae --recipe mnist --steps 300000 --out results/hvae
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import data_dir_option, device_option, int_list, resolved_device, seed_option


def _prepare(out: Path, threads: int | None) -> None:
    """Check that ``out`` can be written before anything is computed, and set the CPU threads."""
    from ..checkpoint import check_writable

    check_writable(out)
    if threads:
        import torch

        torch.set_num_threads(threads)


_out = click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
                    show_default=True, help="Folder for the CSV and PNG (named after the experiment).")
_budget = click.option("--budget", type=click.IntRange(min=1), help="Training samples evaluated per model.")
_threads_opt = click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads.")


@click.group()
def reproduce() -> None:
    """The paper's experiments: figure2, figure3, iwae-table (CSV + PNG); zoo (CSV + markdown)."""


@click.command()
@click.option("--dataset", type=click.Choice(["mnist", "frey_face"]), default="frey_face", show_default=True)
@_budget
@click.option("--nz", callback=int_list("latent sizes", "3,20"),
              help="Latent sizes (default: the paper's for the data set).")
@click.option("--algorithms", type=click.Choice(["both", "aevb", "wake-sleep"]), default="both", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Adagrad step size (default: chosen from 0.01, 0.02, 0.1 by a short trial).")
@click.option("--n-eval", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Train and test images the bound is measured on.")
@click.option("--points", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--batched/--no-batched", default=True, show_default=True,
              help="Train each algorithm's models (and the step-size trials) together in one stacked step, "
                   "the same numbers as alone (aevb.batched); --no-batched trains them one by one.")
@_out
@seed_option()
@data_dir_option
@_threads_opt
def figure2(dataset, budget, nz, algorithms, lr, n_eval, points, batched, out, seed, data_dir, threads) -> None:
    """AEVB vs wake-sleep: lower bound per datapoint vs training samples (the paper's figure 2)."""
    from ..reproduce import figure2 as fig2

    _prepare(out, threads)
    algs = fig2.ALGORITHMS if algorithms == "both" else (algorithms,)
    paths = fig2.run(dataset, out, budget=budget or 1_000_000, nzs=nz, algorithms=algs, lr=lr, n_eval=n_eval,
                     points=points, seed=seed, data_dir=data_dir, log=click.echo, batched=batched)
    for p in paths.values():
        click.echo(f"wrote {p}")


@click.command()
@_budget
@click.option("--train-sizes", callback=int_list("training-set sizes", "1000,50000"), default="1000,50000",
              show_default=True, help="Training-set sizes (MCEM runs at the smallest).")
@click.option("--k", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Importance samples per image for log p(x).")
@click.option("--n-eval", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--points", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True)
@click.option("--mcem/--no-mcem", default=True, show_default=True,
              help="Train Monte Carlo EM at the smallest training size (--no-mcem: AEVB and wake-sleep only).")
@_out
@seed_option()
@data_dir_option
@_threads_opt
def figure3(budget, train_sizes, k, n_eval, points, lr, mcem, out, seed, data_dir, threads) -> None:
    """Estimated log p(x): AEVB vs wake-sleep vs Monte Carlo EM (the paper's figure 3)."""
    from ..reproduce import figure3 as fig3

    _prepare(out, threads)
    paths = fig3.run(out, budget=budget or 100_000, train_sizes=train_sizes, k=k, n_eval=n_eval, points=points,
                     lr=lr, mcem=mcem, seed=seed, data_dir=data_dir, log=click.echo)
    for p in paths.values():
        click.echo(f"wrote {p}")


@click.command("iwae-table")
@_budget
@click.option("--k", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--n-test", type=click.IntRange(min=1), help="Score only N test images (a fixed random subset).")
@click.option("--subset", type=click.IntRange(min=1), help="Train on the first N training images.")
@_out
@seed_option()
@data_dir_option
@_threads_opt
def iwae_table(budget, k, n_test, subset, out, seed, data_dir, threads) -> None:
    """The IWAE paper's 1-layer VAE (784-200-200-50) on dynamically binarized MNIST, log p(x) at k."""
    from ..reproduce import iwae_table as it

    _prepare(out, threads)
    paths = it.run(out, budget=budget, k=k, n_test=n_test, subset=subset, seed=seed, data_dir=data_dir,
                   log=click.echo)
    for p in paths.values():
        click.echo(f"wrote {p}")


def _rows(ctx, param, value: str | None) -> tuple[str, ...] | None:
    """"a,b" -> ("a", "b"); the zoo checks the names (one line naming the known rows)."""
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise click.BadParameter(f"expected comma-separated row names such as vae-1l,vamp; got {value!r}")
    return names


@click.command()
@click.option("--rows", callback=_rows, help="Comma-separated rows (default: all), e.g. vae-1l,iwae-1l,vamp.")
@click.option("--budget", type=click.IntRange(min=1), help="At most this many passes per row (default: the recipe's).")
@click.option("--k", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Importance samples per test image for log p(x).")
@click.option("--n-test", type=click.IntRange(min=1), help="Score only N test images (a fixed random subset).")
@click.option("--subset", type=click.IntRange(min=1), help="Train on the first N training images.")
@click.option("--cpu-hours", type=click.FloatRange(min=0, min_open=True),
              help="Stop each row after this much training CPU time (process CPU, every thread; resumable).")
@click.option("--curve-minutes", type=click.FloatRange(min=0),
              help="Record a curve point every so many training CPU-minutes (default: 6 with --cpu-hours, else none).")
@click.option("--curve-k", type=click.IntRange(min=1), default=100, show_default=True,
              help="Importance samples per image for the curve's log p(x).")
@click.option("--curve-n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Test images (a fixed random subset) for the curve's log p(x).")
@_out
@seed_option()
@device_option
@data_dir_option
@_threads_opt
@click.option("--progress", is_flag=True, help="Show a progress bar while training.")
def zoo(rows, budget, k, n_test, subset, cpu_hours, curve_minutes, curve_k, curve_n, out, seed, device, data_dir,
        threads, progress) -> None:
    """The model zoo: VAE, IWAE, 2 layers, planar and IAF flows, MoG and VampPrior, each with its paper's
    recipe, test -log p(x) at k against the published figures (zoo.csv, zoo.md). Resumable: run it again."""
    from ..reproduce import zoo as z

    _prepare(out, threads)
    paths = z.run(out, rows=rows, budget=budget, k=k, n_test=n_test, subset=subset, seed=seed,
                  device=resolved_device(device), data_dir=data_dir, progress=progress, log=click.echo,
                  cpu_hours=cpu_hours, curve_minutes=curve_minutes, curve_k=curve_k, curve_n=curve_n)
    for p in paths.values():
        click.echo(f"wrote {p}")


@click.command()
@click.option("--recipe", type=click.Choice(["mnist", "fashion_mnist", "fashion_mnist_mixture"]), default="mnist",
              show_default=True, help="mnist: the MLP ladder on dynamically binarized MNIST; fashion_mnist: the conv "
              "hierarchy (discretized logistic); fashion_mnist_mixture: the same with a mixture of 5 logistics.")
@click.option("--steps", type=click.IntRange(min=1), default=300000, show_default=True, help="Optimizer steps in all.")
@click.option("--curve-every", type=click.FloatRange(min=0), default=900.0, show_default=True,
              help="Training CPU seconds between points of the log p(x) curve.")
@click.option("--curve-images", type=click.IntRange(min=1), default=1000, show_default=True,
              help="The curve's fixed random subset of test images.")
@click.option("--curve-k", type=click.IntRange(min=1), default=100, show_default=True,
              help="Importance samples per image for the curve.")
@click.option("--k", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Importance samples per image for the final log p(x).")
@click.option("--n-test", type=click.IntRange(min=1), help="Score only the first N test images at the end (default all).")
@_out
@seed_option()
@device_option
@data_dir_option
@_threads_opt
def hvae(recipe, steps, curve_every, curve_images, curve_k, k, n_test, out, seed, device, data_dir, threads) -> None:
    """The hierarchical VAE (--model hvae): train the recipe, the curve of test log p(x) against training
    CPU time, then log p(x) with k samples on the test set (final.json, table.md). Resumable: run it again."""
    from ..reproduce import hvae as h

    _prepare(out, threads)
    record = h.run(out, recipe=recipe, steps=steps, curve_every_cpu_s=curve_every, curve_images=curve_images,
                   curve_k=curve_k, final_k=k, final_images=n_test, seed=seed, data_dir=data_dir,
                   device=resolved_device(device), log=click.echo)
    click.echo(json.dumps(record))


for _command in (figure2, figure3, iwae_table, zoo, hvae):
    reproduce.add_command(_command)
