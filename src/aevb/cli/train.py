"""``aevb train``: train a model and write a run directory.

    aevb train --dataset digits --epochs 100 --out runs/digits
    aevb train --resume runs/digits --epochs 200
    aevb train --dataset mnist --nproc 4 --out runs/mnist4     # 4 processes under torchrun
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..config import (ACTIVATIONS, ALGORITHMS, ARCHITECTURES, BINARIZE, CHANNELS, ESTIMATORS, FITS, FLOWS, PRESETS,
                      KL_SCHEDULES, LIKELIHOODS, LR_SCHEDULES, OBJECTIVES, OPTIMIZERS, PRECISIONS, PRIORS,
                      TC_ESTIMATORS)
from .errors import UserError, labels_for
from .options import (data_dir_option, device_option, image_size_option, input_noise, int_list, resolved_device,
                      seed_option)

ARGV: list[str] = []  # the arguments main() was called with (for --nproc to relaunch under torchrun)

_widths = int_list("layer widths", "500 or 400,400")


def _tracking_uri(ctx, param, value: str | None) -> str | None:
    """A plain folder as an absolute file: URI, so that a resumed run logs to the same store from anywhere."""
    if value is None or "://" in value or value.startswith("file:"):
        return value
    return Path(value).expanduser().absolute().as_uri()


@click.command()
@click.option("--dataset", help="digits (default, embedded), mnist, fashion_mnist, binarized_mnist, frey_face, "
              "dsprites, dsprites_small, dsprites_released, folder:PATH (PNG/JPEG images) or npy:PATH (.npy/.npz).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory to write.")
@click.option("--resume", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this directory (its own config; --epochs may raise the total).")
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the training split.")
@click.option("--model", "family", help="The model family: vae (the default), ae (a deterministic autoencoder), "
              "factorvae (a VAE with a discriminator on its codes) or hvae (a top-down hierarchy, see --latent-layers); "
              "families registered by your own code too.")
@click.option("--kind", help="Deprecated alias of --model (removed in the next release).")
@click.option("--likelihood", type=click.Choice(LIKELIHOODS),
              help="Decoder: bernoulli, gaussian (learned variance), gaussian_fixed (MSE), discretized_logistic (8-bit) "
                   "or discretized_logistic_mixture (8-bit, --mixture-components logistics per pixel).")
@click.option("--mixture-components", type=click.IntRange(min=1),
              help="discretized_logistic_mixture: K, the logistics per pixel (default 10, as PixelCNN++ and NVAE).")
@click.option("--architecture", type=click.Choice(ARCHITECTURES),
              help="mlp, conv (convolutional), or conv64 (Locatello et al. 2019's network for 64x64 images, the "
                   "default for built-in 64x64 data sets).")
@click.option("--conv-channels", callback=_widths, help="conv: channels of the stride-2 convolutions, e.g. 32,64.")
@click.option("--hidden", callback=_widths, help="Hidden layer widths, e.g. 500 or 400,400.")
@click.option("--activation", type=click.Choice(ACTIVATIONS))
@click.option("--latent-dim", type=click.IntRange(min=1), help="Size of z.")
@click.option("--conditional", is_flag=True,
              help="Condition encoder and decoder on the label (a conditional VAE; needs a labelled data set).")
@click.option("--prior", type=click.Choice(PRIORS),
              help="p(z): standard N(0, I), vamp (VampPrior) or mog (mixture of Gaussians).")
@click.option("--prior-components", type=click.IntRange(min=1), help="K: pseudo-inputs (vamp) or Gaussians (mog).")
@click.option("--flow", type=click.Choice(FLOWS), help="q(z|x) through a flow: none, planar or iaf.")
@click.option("--flow-steps", type=click.IntRange(min=1), help="K: steps of the flow.")
@click.option("--stochastic-layers", type=click.IntRange(1, 2),
              help="2: the IWAE paper's z1 -> z2 stack (the decoder reads z1, of --latent-dim).")
@click.option("--top-latent-dim", type=click.IntRange(min=1), help="Size of z2 (with --stochastic-layers 2).")
@click.option("--top-hidden", callback=_widths, help="Hidden widths between z1 and z2, e.g. 100,100.")
@click.option("--latent-layers", type=click.IntRange(1, 64),
              help="hvae: L, the stochastic layers of the top-down hierarchy.")
@click.option("--latent-sizes", callback=_widths,
              help="hvae: each layer's size, top first (mlp: dimensions, conv: channels), e.g. 32,32,16; "
                   "default --latent-dim for every layer.")
@click.option("--kl-balance/--no-kl-balance", "kl_balance", default=None,
              help="hvae: NVAE's per-layer KL balancing during the KL warm-up (default on).")
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True),
              help="hvae: decay of the weights' moving average used for evaluation and sampling (0: none; "
                   "default 0.999).")
@click.option("--log-var-min", type=float, help="Clamp of every log-variance (decoder and q(z|x)): lower end, "
              "default -10; evaluate reports the share of decoder pixels at it.")
@click.option("--log-var-max", type=float, help="Clamp of every log-variance: upper end, default 10.")
@click.option("--init-std", type=click.FloatRange(min=0, min_open=True),
              help="Initialise every weight from N(0, std^2) (the paper: 0.01).")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), help="aevb (SGVB) or the wake-sleep baseline.")
@click.option("--estimator", type=click.Choice(ESTIMATORS), help="SGVB estimator B (analytic KL) or A (mc).")
@click.option("--samples", type=click.IntRange(min=1),
              help="L: samples of z per data point in the training ELBO estimate (SGVB; --objective elbo).")
@click.option("--objective", type=click.Choice(OBJECTIVES),
              help="Train on the ELBO, the IWAE bound, or a disentangling objective: tcvae, dipvae-i, dipvae-ii, "
                   "capacity (docs/disentangling-models.md); factorvae is --model factorvae's.")
@click.option("--iwae-k", type=click.IntRange(min=1),
              help="k: samples of the IWAE training bound (--objective iwae); aevb evaluate --k sets the "
                   "evaluation's log p(x) estimate.")
@click.option("--beta", type=click.FloatRange(min=0), help="KL weight (beta-VAE); 1 is the ELBO.")
@click.option("--kl-schedule", type=click.Choice(KL_SCHEDULES), help="KL warm-up: constant, linear or cyclical.")
@click.option("--warmup-steps", type=click.IntRange(min=0), help="Steps of the warm-up (the cycle length if cyclical).")
@click.option("--free-bits", type=click.FloatRange(min=0), help="Nats per latent dimension not pushed to the prior.")
@click.option("--tc-estimator", type=click.Choice(TC_ESTIMATORS),
              help="tcvae: estimate log q(z) by minibatch-stratified (mss, default) or -weighted (mws) sampling.")
@click.option("--tc-alpha", type=click.FloatRange(min=0), help="tcvae: weight of the index-code mutual information.")
@click.option("--tc-gamma", type=click.FloatRange(min=0), help="tcvae: weight of the dimension-wise KL (--beta "
              "weights the total correlation).")
@click.option("--dip-lambda-od", type=click.FloatRange(min=0), help="dipvae-i/ii: weight of the off-diagonal "
              "covariance penalty (default 10).")
@click.option("--dip-lambda-d", type=click.FloatRange(min=0), help="dipvae-i/ii: weight of the diagonal penalty "
              "(default 10 x --dip-lambda-od for dipvae-i, equal to it for dipvae-ii).")
@click.option("--capacity-max", type=click.FloatRange(min=0), help="capacity: the final capacity C in nats (25).")
@click.option("--capacity-steps", type=click.IntRange(min=1),
              help="capacity: steps over which C rises from 0 (100000).")
@click.option("--capacity-gamma", type=click.FloatRange(min=0), help="capacity: weight of |KL - C| (1000).")
@click.option("--factor-gamma", type=click.FloatRange(min=0), help="factorvae: weight of the total correlation (35).")
@click.option("--discriminator-hidden", callback=_widths,
              help="factorvae: the discriminator's hidden widths (default six of 1000).")
@click.option("--discriminator-lr", type=click.FloatRange(min=0, min_open=True),
              help="factorvae: the discriminator's Adam learning rate (1e-4; betas 0.5, 0.9).")
@click.option("--input-noise", callback=input_noise, metavar="SPEC",
              help="Train a denoising model: corrupt each batch the encoder reads, score the clean one: "
              "gaussian:SIGMA, mask:P or salt-pepper:P.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS))
@click.option("--lr", type=float, help="Learning rate (step size).")
@click.option("--weight-decay", type=float, help="L2 weight decay (the paper's N(0, I) parameter prior).")
@click.option("--batch-size", type=click.IntRange(min=1), help="M: the minibatch size.")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES),
              help="Learning rate over the run: constant, warmup (linear ramp, then constant), cosine (to "
                   "--lr-min), step (times --lr-gamma every --lr-step-epochs) or plateau (times --lr-gamma after "
                   "--lr-patience epochs without a better validation ELBO).")
@click.option("--lr-warmup-steps", type=click.IntRange(min=0),
              help="Optimizer steps of a linear learning-rate ramp before the schedule.")
@click.option("--lr-min", type=click.FloatRange(min=0), help="cosine: the final learning rate.")
@click.option("--lr-gamma", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              help="step, plateau: the factor each decay multiplies the learning rate by.")
@click.option("--lr-step-epochs", type=click.IntRange(min=1), help="step: epochs between decays.")
@click.option("--lr-patience", type=click.IntRange(min=0),
              help="plateau: epochs without a better validation ELBO before a decay.")
@click.option("--patience", type=click.IntRange(min=0),
              help="Early stopping: stop after this many epochs without a better validation ELBO (0: never); "
                   "the best epoch's weights are in best.safetensors either way.")
@seed_option(default=None)
@device_option
@click.option("--binarize", type=click.Choice(BINARIZE), help="none, static (threshold 0.5), dynamic (resampled); "
              "default: dynamic for grey levels under a Bernoulli decoder, else none.")
@click.option("--valid-size", type=click.IntRange(min=0), help="Training examples held out for validation.")
@click.option("--subset", type=click.IntRange(min=1), help="Use only the first N training examples.")
@image_size_option
@click.option("--fit", type=click.Choice(FITS), help="folder: resize (default) or crop (centre) to --image-size.")
@click.option("--channels", type=click.Choice([str(c) for c in CHANNELS]), help="folder: 1 (grey) or 3 (RGB).")
@data_dir_option
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
@click.option("--figures-every", type=click.IntRange(min=0),
              help="Draw samples and reconstructions every N epochs into RUN_DIR/figures and TensorBoard.")
@click.option("--mlflow", callback=_tracking_uri, metavar="URI",
              help="Log params, metrics per epoch, figures and the run directory to this MLflow tracking URI "
                   "(a folder for a local file store, or http://HOST:PORT); pip install \"aevb[mlflow]\".")
@click.option("--nproc", type=click.IntRange(min=1), help="Launch N data-parallel processes through torchrun.")
@click.option("--no-progress", is_flag=True,
              help="Quiet: no progress bar (shown on a terminal only) and no line per epoch.")
@click.option("--no-figures", is_flag=True, help="Do not write samples.png and reconstructions.png at the end.")
def train(dataset, out, resume, config_file, no_progress, no_figures, no_download, hidden, conv_channels, channels,
          device, nproc, conditional, **flags) -> None:
    """Train a model (a VAE by default; --model picks the family) and write a run directory.

    Several processes: --nproc N here, or torchrun --nproc_per_node=N -m aevb train ... (the
    batch size is global); see docs/scaling.md for several machines.
    """
    from ..distributed import shutdown
    from ..train import Trainer, plan_on_rank_zero

    if nproc is not None and nproc > 1:
        _relaunch_under_torchrun(nproc)
        return
    kind = flags.pop("kind", None)
    if kind is not None:
        click.echo("aevb: warning: --kind is deprecated and will be removed in the next release; use --model", err=True)
        if flags.get("family") not in (None, kind):
            raise UserError(f"--kind {kind} and --model {flags['family']} disagree; give --model alone")
        flags["family"] = kind
    if resume is not None and (out is not None or dataset is not None or config_file is not None or conditional):
        raise UserError("--resume takes the run's own settings; do not combine it with --out, --dataset, "
                        "--config or --conditional")
    preset = flags.pop("preset", None)
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if hidden is not None:
        overrides["hidden"] = hidden
    if conv_channels is not None:
        overrides["conv_channels"] = conv_channels
    if channels is not None:
        overrides["channels"] = int(channels)
    resolved_device(device)  # a device this machine lacks: one line before any work
    if click.get_current_context().get_parameter_source("device") is not ParameterSource.DEFAULT:
        overrides["device"] = device  # unset, a new run gets the default (auto) and a resumed one keeps its own
    if dataset is not None:
        overrides["dataset"] = dataset
    if no_download:
        overrides["download"] = False
    plan = plan_on_rank_zero(out=out, resume=resume, config=config_file, preset=preset, overrides=overrides,
                             conditional=conditional)  # under torchrun, rank 0 alone reads the run directory
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
    for a in ARGV:
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
    from ..run import load
    from ..report import write_report
    from ..viz import plot_reconstructions, plot_samples

    from ..tracking import log_files

    run = load(run_dir, device=device)
    written = [plot_samples(run.model, run_dir / 'samples.png')]
    test = run.dataset().test
    x, y = test.x[:16].to(device), labels_for(run, test.y, 16, device)
    written.append(plot_reconstructions(run.model, x, run_dir / 'reconstructions.png', y=y))
    written.append(write_report(run))
    for path in written:
        click.echo(f"wrote {path}")
    log_files(run_dir, written)  # into the run's MLflow run, when it has one
