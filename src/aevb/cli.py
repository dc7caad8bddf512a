"""The ``aevb`` command.

    aevb train --dataset digits --epochs 100 --out runs/digits
    aevb evaluate runs/digits --k 1000 --json
    aevb sample runs/digits
    aevb reconstruct runs/digits
    aevb train --dataset digits --conditional --out runs/cdigits && aevb sample runs/cdigits --label 7

Every failure a user can cause (a bad flag, a bad value, a missing or corrupt file)
ends with one line on stderr naming the problem, and exit status 2 (usage) or 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .commands_viz import register as _register_viz
from .config import (ACTIVATIONS, ALGORITHMS, ARCHITECTURES, BINARIZE, CHANNELS, ESTIMATORS, FITS, PRESETS,
                     KL_SCHEDULES, LIKELIHOODS, OBJECTIVES, OPTIMIZERS, PRECISIONS, ConfigError)

_ARGV: list[str] = []  # the arguments main() was called with (for --nproc to relaunch under torchrun)


class UserError(click.ClickException):
    """An error the user can fix; printed as one line."""


def _hidden(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer widths such as 500 or 400,400; got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"layer widths must be positive integers; got {value!r}")
    return sizes


def _image_size(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        size = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise click.BadParameter(f"expected a size such as 64 or 48x64 (height x width); got {value!r}")
    return size * 2 if len(size) == 1 else size  # type: ignore[return-value]


def _resolved_device(ctx, param, value: str) -> str:
    from .devices import DeviceError, resolve_device

    try:
        return str(resolve_device(value))
    except DeviceError as e:
        raise click.BadParameter(str(e)) from None


def _device_option(f):
    return click.option("--device", default="auto", show_default=True, callback=_resolved_device,
                        help="auto, cpu, cuda, cuda:N or mps.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="aevb")
def cli() -> None:
    """aevb: variational autoencoders as in Kingma & Welling, Auto-Encoding Variational Bayes."""


_register_viz(cli)


@cli.command()
@click.option("--dataset", help="digits (default, embedded), mnist, fashion_mnist, binarized_mnist, frey_face, "
              "folder:PATH (PNG/JPEG images) or npy:PATH (.npy/.npz).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory to write.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this directory (its own config; --epochs may raise the total).")
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the training split.")
@click.option("--model", "family", help="The model family: vae (default) or ae (a deterministic autoencoder); "
              "see aevb.models for the list.")
@click.option("--kind", "kind", help="Deprecated alias of --model (removed in the next release).")
@click.option("--likelihood", type=click.Choice(LIKELIHOODS),
              help="Decoder: bernoulli, gaussian (learned variance), gaussian_fixed (MSE) or discretized_logistic (8-bit).")
@click.option("--architecture", type=click.Choice(ARCHITECTURES), help="mlp, or conv (convolutional).")
@click.option("--conv-channels", callback=_hidden, help="conv: channels of the stride-2 convolutions, e.g. 32,64.")
@click.option("--hidden", callback=_hidden, help="Hidden layer widths, e.g. 500 or 400,400.")
@click.option("--activation", type=click.Choice(ACTIVATIONS))
@click.option("--latent-dim", type=click.IntRange(min=1), help="Size of z.")
@click.option("--conditional", is_flag=True,
              help="Condition encoder and decoder on the label (a conditional VAE; needs a labelled data set).")
@click.option("--init-std", type=click.FloatRange(min=0, min_open=True),
              help="Initialise every weight from N(0, std^2) (the paper: 0.01).")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), help="aevb (SGVB) or the wake-sleep baseline.")
@click.option("--estimator", type=click.Choice(ESTIMATORS), help="SGVB estimator B (analytic KL) or A (mc).")
@click.option("--samples", type=click.IntRange(min=1), help="L: samples of z per data point.")
@click.option("--objective", type=click.Choice(OBJECTIVES), help="Train on the ELBO or the IWAE bound.")
@click.option("--iwae-k", type=click.IntRange(min=1), help="Samples of the IWAE training bound.")
@click.option("--beta", type=click.FloatRange(min=0), help="KL weight (beta-VAE); 1 is the ELBO.")
@click.option("--kl-schedule", type=click.Choice(KL_SCHEDULES), help="KL warm-up: constant, linear or cyclical.")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Steps of the warm-up (the cycle length if cyclical).")
@click.option("--free-bits", type=click.FloatRange(min=0), help="Nats per latent dimension not pushed to the prior.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS))
@click.option("--lr", type=float, help="Learning rate (step size).")
@click.option("--weight-decay", type=float, help="L2 weight decay (the paper's N(0, I) parameter prior).")
@click.option("--batch-size", type=click.IntRange(min=1), help="M: the minibatch size.")
@click.option("--seed", type=int)
@click.option("--device", help="auto (default: CUDA, else MPS, else the CPU), cpu, cuda, cuda:N or mps.")
@click.option("--binarize", type=click.Choice(BINARIZE), help="none, static (threshold 0.5), dynamic (resampled).")
@click.option("--valid-size", type=click.IntRange(min=0), help="Training examples held out for validation.")
@click.option("--subset", type=click.IntRange(min=1), help="Use only the first N training examples.")
@click.option("--image-size", callback=_image_size, help="folder: bring images to this size, e.g. 64 or 48x64 (HxW).")
@click.option("--fit", type=click.Choice(FITS), help="folder: resize (default) or crop (centre) to --image-size.")
@click.option("--channels", type=click.Choice([str(c) for c in CHANNELS]), help="folder: 1 (grey) or 3 (RGB).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder with the data files (else $AEVB_DATA_DIR, cache).")
@click.option("--no-download", is_flag=True, help="Fail instead of downloading missing data files.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), help="Steps between mid-epoch checkpoints.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Start from a config.json; flags override it.")
@click.option("--clip-grad-norm", type=click.FloatRange(min=0, min_open=True), help="Clip the gradient norm to this.")
@click.option("--skip-grad-norm", type=click.FloatRange(min=0, min_open=True),
              help="Skip steps whose gradient norm exceeds this (non-finite ones always are).")
@click.option("--max-skips", type=click.IntRange(min=1), help="Stop after this many consecutive skipped steps.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="Autocast dtype: fp32, bf16 (CPU/CUDA) or fp16 (CUDA); log-likelihoods stay float32.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="fast: the batch size, step size and precision that reach a target ELBO soonest "
              "(docs/performance.md); other flags override it.")
@click.option("--compile/--no-compile", "compile", default=None,
              help="torch.compile the training objective (first step compiles; cached for later runs).")
@click.option("--nproc", type=click.IntRange(min=1), help="Launch N data-parallel processes through torchrun.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--no-figures", is_flag=True, help="Do not write samples.png and reconstructions.png at the end.")
def train(dataset, out, resume, config_file, no_progress, no_figures, no_download, hidden, conv_channels, channels,
          device, nproc, conditional, **flags) -> None:
    """Train a VAE (or an AE) and write a run directory.

    Several processes: --nproc N here, or torchrun --nproc_per_node=N -m aevb train ... (the
    batch size is global); see docs/scaling.md for several machines.
    """
    import warnings

    from .distributed import shutdown
    from .runconfig import plan_run
    from .train import Trainer

    if nproc is not None and nproc > 1:
        _relaunch_under_torchrun(nproc)
        return
    kind = flags.pop("kind", None)
    if kind is not None:
        warnings.warn("--kind is deprecated and will be removed in the next release; use --model", DeprecationWarning)
        click.echo("aevb: warning: --kind is deprecated; use --model (the model family)", err=True)
        if flags.get("family") not in (None, kind):
            raise UserError(f"--kind {kind} and --model {flags['family']} disagree; give --model alone")
        flags["family"] = kind
    preset = flags.pop("preset", None)
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if hidden is not None:
        overrides["hidden"] = hidden
    if conv_channels is not None:
        overrides["conv_channels"] = conv_channels
    if channels is not None:
        overrides["channels"] = int(channels)
    if device is not None:
        overrides["device"] = device
    if dataset is not None:
        overrides["dataset"] = dataset
    if no_download:
        overrides["download"] = False
    if resume is not None and (out is not None or dataset is not None or config_file is not None or conditional):
        raise UserError("--resume takes the run's own settings; do not combine it with --out, --dataset, "
                        "--config or --conditional")
    plan = plan_run(out=out, resume=resume, config=config_file, preset=preset, overrides=overrides,
                    conditional=conditional)
    run_dir = plan.out
    trainer = Trainer(plan.config, run_dir, dataset=plan.data, progress=not no_progress)
    if plan.resume:
        trainer.restore()
    try:
        lines = trainer.run()
    finally:
        shutdown(trainer.dist)
    if not trainer.dist.is_main:
        return
    click.echo(f"run directory: {run_dir}")
    if lines:
        click.echo(json.dumps(lines[-1]))
    if not no_figures:
        _figures(run_dir, str(trainer.device))


def _relaunch_under_torchrun(nproc: int) -> None:
    """Run this same `aevb train` command as N processes under torchrun (one machine)."""
    import subprocess

    args, skip = [], False
    for a in _ARGV:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "aevb", *args]
    code = subprocess.call(cmd)
    if code != 0:
        raise click.ClickException(f"the {nproc}-process run failed (exit status {code}); see the messages above")


def _figures(run_dir: Path, device: str) -> None:
    from .checkpoint import load
    from .report import write_report
    from .viz import plot_reconstructions, plot_samples

    run = load(run_dir, device=device)
    click.echo(f"wrote {plot_samples(run.model, run_dir / 'samples.png')}")
    test = run.dataset().test
    x, y = test.x[:16].to(device), _labels_for(run, test.y, 16, device)
    click.echo(f"wrote {plot_reconstructions(run.model, x, run_dir / 'reconstructions.png', y=y)}")
    click.echo(f"wrote {write_report(run)}")


def _load(run_dir: Path, device: str):
    from .checkpoint import load

    return load(run_dir, device=device)


def _labels_for(run, y, n: int | None, device: str):
    """The first n labels of a split for a conditional run (None for an unconditional one)."""
    if not run.config.model.conditional:
        return None
    if y is None:
        raise UserError(f"{run.dir} is a conditional model but its data set has no labels in this split")
    return (y if n is None else y[:n]).to(device)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--k", type=click.IntRange(min=0), default=5000, show_default=True,
              help="Importance samples per image for log p(x).")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@click.option("--n", "limit", type=click.IntRange(min=1), help="Evaluate only the first N images of the split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--chunk", type=click.IntRange(min=1), default=None,
              help="Cap on the samples decoded at once per image (memory is bounded without it: "
                   "chunks stay under 16 MiB).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False))
@_device_option
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Logistic-regression and k-NN accuracy of the codes (fitted on the train split's codes).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(run_dir, k, split, limit, batch_size, chunk, seed, data_dir, device, probe, as_json) -> None:
    """ELBO, k-sample importance-weighted log p(x) with its standard error, bits/dim, active units,
    KL per latent dimension and latent-probe accuracies (nats per example); --k 0 skips log p(x)."""
    from .evaluate import evaluate as run_eval

    run = _load(run_dir, device)
    ds = run.dataset(data_dir)
    part = ds.split(split)
    x, y = part.x, part.y
    if limit:
        x, y = x[:limit], (y[:limit] if y is not None else None)
    conditional = run.config.model.conditional
    if conditional:
        _labels_for(run, y, None, device)  # a clear error when the split has no labels
    probe_train = (ds.train.x.to(device), ds.train.y.to(device)) if probe and ds.train.y is not None else None
    res = run_eval(run.model, x.to(device), k=k, batch_size=batch_size, chunk=chunk, seed=seed,
                   progress=not as_json and sys.stderr.isatty(),
                   y=y.to(device) if ((probe or conditional) and y is not None) else None, probe_train=probe_train)
    res["split"] = split
    if as_json:
        click.echo(json.dumps(res))
        return
    click.echo(f"{run.config.data.dataset} {split} split, {res['n']} images:")
    if conditional:
        click.echo(f"  conditional model ({run.config.model.num_classes} classes): every value is given the true "
                   "label y (elbo and log_likelihood are of log p(x|y))")
    for key, value in res.items():
        if isinstance(value, float):
            click.echo(f"  {key:24s} {value:.4f}")
        elif key in ("active_units", "latent_dim"):
            click.echo(f"  {key:24s} {value}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", type=click.IntRange(min=1, max=1024), default=64, show_default=True)
@click.option("--label", type=int,
              help="Conditional models: draw every sample for this class (default: one row per class).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG path (default RUN_DIR/samples.png).")
@_device_option
def sample(run_dir, n, label, seed, out, device) -> None:
    """A PNG grid of samples from the prior, decoded.

    A conditional model draws all N for --label; without --label it draws one row per class,
    N // classes columns (at least one), each column sharing one z, so a row shows a class and
    a column one style.
    """
    from .viz import plot_samples

    run = _load(run_dir, device)
    _check_label(run, label, "--label")
    click.echo(f"wrote {plot_samples(run.model, out or run_dir / 'samples.png', n=n, seed=seed, label=label)}")


def _check_label(run, label: int | None, flag: str) -> None:
    k = run.config.model.num_classes
    if label is None:
        return
    if k == 0:
        raise UserError(f"{flag} needs a conditional model; {run.dir} was trained without --conditional")
    if not 0 <= label < k:
        raise UserError(f"{flag} must be between 0 and {k - 1} (the model's {k} classes); got {label}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", type=click.IntRange(min=1, max=256), default=16, show_default=True)
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG path (default RUN_DIR/reconstructions.png).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@_device_option
def reconstruct(run_dir, n, split, out, data_dir, device) -> None:
    """A PNG of test inputs above their reconstructions."""
    from .viz import plot_reconstructions

    run = _load(run_dir, device)
    part = run.dataset(data_dir).split(split)
    x, y = part.x[:n].to(device), _labels_for(run, part.y, n, device)
    click.echo(f"wrote {plot_reconstructions(run.model, x, out or run_dir / 'reconstructions.png', n=n, y=y)}")


def _json_list(ctx, param, value):
    if value is None:
        return None
    try:
        v = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON ({e.msg}); give an array such as [0.5, 1.0, -0.5]") from None
    if not isinstance(v, list):
        raise click.BadParameter("must be a JSON array")
    return v


@cli.command()
@click.option("--x", "x", callback=_json_list, help="Input, e.g. '[0.5, 1.0, -0.5]'.")
@click.option("--W-e", "W_e", callback=_json_list, help="Encoder weights (hidden x inputs).")
@click.option("--b-e", "b_e", callback=_json_list)
@click.option("--W-mu", "W_mu", callback=_json_list)
@click.option("--b-mu", "b_mu", callback=_json_list)
@click.option("--W-lv", "W_lv", callback=_json_list, help="Log-variance head weights.")
@click.option("--b-lv", "b_lv", callback=_json_list)
@click.option("--eps", callback=_json_list, help="The noise epsilon (default zeros).")
@click.option("--W-d", "W_d", callback=_json_list, help="Linear decoder weights (inputs x latent).")
@click.option("--b-d", "b_d", callback=_json_list)
@click.option("--x-recon", "x_recon", callback=_json_list, help="Use this x' instead of decoding z.")
@click.option("--activation", type=click.Choice(["linear", "tanh", "relu"]), default="linear", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
def explain(as_json, activation, **values) -> None:
    """A worked forward pass through a tiny VAE (3 inputs, 2 latent dimensions), each step
    with its formula and value. The defaults reproduce the tutorials' worked example."""
    from .explain import Example, explain as run_explain, format_steps

    ex = Example(activation=activation, **{k: v for k, v in values.items() if v is not None})
    steps = run_explain(ex)
    if as_json:
        click.echo(json.dumps({s["name"]: s["value"] for s in steps}))
    else:
        click.echo(format_steps(steps))


@cli.group()
def data() -> None:
    """List data sets, or fetch and verify their files."""


@data.command("list")
def data_list() -> None:
    """The data sets aevb knows."""
    from .data import DATASETS

    for name in DATASETS:
        click.echo(name)


@data.command("fetch")
@click.argument("name")
@click.option("--data-dir", type=click.Path(file_okay=False))
def data_fetch(name, data_dir) -> None:
    """Find (or download) a data set's files, check their sha256, and print the splits."""
    from .config import DataConfig
    from .data import load_dataset

    ds = load_dataset(DataConfig(dataset=name, data_dir=data_dir))
    for split in ("train", "valid", "test"):
        s = getattr(ds, split)
        if s is not None:
            click.echo(f"{name} {split}: {tuple(s.x.shape)}")


from .commands_eval import register as _register_eval  # noqa: E402  (aevb reproduce ...)

_register_eval(cli)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command, turning every user error into one line."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import TrainingDiverged, TrainingInterrupted

    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=argv, prog_name="aevb", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except TrainingInterrupted as e:
        click.echo(f"aevb: {e}; continue with: aevb train --resume {e.run_dir}", err=True)
        return 130
    except click.exceptions.Abort:
        click.echo("aevb: aborted", err=True)
        return 130
    except TrainingDiverged as e:
        click.echo(f"aevb: error: {e}", err=True)
        return 1
    except click.UsageError as e:
        where = f"{e.ctx.command_path}: " if e.ctx else ""
        click.echo(f"aevb: error: {where}{e.format_message()}", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"aevb: error: {e.format_message()}", err=True)
        return 1
    except (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError) as e:
        click.echo(f"aevb: error: {e}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
