"""``aevb fit-prior``: fit a sampler on a run's codes and store it in the run (``aevb.samplers``).

    aevb fit-prior runs/mnist-ae --sampler gmm --components 10
    aevb fit-prior runs/mnist-vae --sampler maf --epochs 50
    aevb fit-prior runs/mnist-vae --sampler two-stage
    aevb sample runs/mnist-ae --sampler gmm --temperature 0.8
"""

from __future__ import annotations

from pathlib import Path

import click

from .options import data_dir_option, device_option, resolved_device, seed_option, trust_code_option

# Kept equal to aevb.samplers.SAMPLERS and CODE_KINDS (a test checks) so that `aevb --help` need not import torch.
SAMPLER_KINDS = ("gmm", "maf", "two-stage")
CODE_KINDS = ("mean", "sample")
# Each option and the sampler kinds it applies to.
_OPTION_KINDS = {"components": ("gmm",), "layers": ("maf",), "hidden": ("maf", "two-stage"),
                 "epochs": ("maf", "two-stage")}


@click.command("fit-prior")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--sampler", "kind", type=click.Choice(SAMPLER_KINDS), required=True,
              help="gmm: a Gaussian mixture; maf: a masked autoregressive flow; two-stage: a second VAE on the "
                   "codes (Dai & Wipf 2019).")
@click.option("--components", type=click.IntRange(min=1), help="gmm: mixture components (default 10).")
@click.option("--epochs", type=click.IntRange(min=1),
              help="maf, two-stage: training epochs (default 50 for maf, 60 for two-stage).")
@click.option("--hidden", type=click.IntRange(min=1),
              help="maf, two-stage: hidden units per layer (default 128 for maf, 256 for two-stage).")
@click.option("--layers", type=click.IntRange(min=1), help="maf: MADE layers (default 5).")
@click.option("--codes", type=click.Choice(CODE_KINDS), default="mean", show_default=True,
              help="mean: the deterministic codes (posterior means); sample: one z ~ q(z|x) per image (a VAE).")
@click.option("--max-codes", type=click.IntRange(min=2), help="Fit on the first N training images only.")
@click.option("--which", type=click.Choice(("last", "best")), default="last", show_default=True,
              help="The weights whose codes are fitted (model.safetensors or best.safetensors).")
@seed_option()
@data_dir_option
@device_option
@trust_code_option
def fit_prior(run_dir, kind, components, epochs, hidden, layers, codes, max_codes, which, seed, data_dir, device,
              trust_code) -> None:
    """Fit a sampler on the codes of a run's training images, stored in the run as sampler-KIND.safetensors
    and .json; then `aevb sample RUN --sampler KIND` draws from it. An AE becomes a generative model."""
    given = {"components": components, "epochs": epochs, "hidden": hidden, "layers": layers}
    for name, value in given.items():
        if value is not None and kind not in _OPTION_KINDS[name]:
            raise click.UsageError(f"--{name} applies to --sampler {' or '.join(_OPTION_KINDS[name])}, not {kind}")
    from ..checkpoint import check_writable
    from ..run import load
    from ..samplers import fit_prior as fit

    run = load(run_dir, device=resolved_device(device), trust_code=trust_code, which=which)
    check_writable(run_dir)
    options = {k: v for k, v in given.items() if v is not None}
    _, meta = fit(run, kind, seed=seed, codes=codes, data_dir=data_dir, max_codes=max_codes, **options)
    stats = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in meta["fit_stats"].items())
    click.echo(f"fitted the {kind} sampler on {meta['n_codes']} codes in {meta['fit_seconds']:.1f} s ({stats}); "
               f"wrote {run_dir / f'sampler-{kind}.json'} and .safetensors")
