"""Figures of a run: ``aevb sample``, ``aevb reconstruct``, ``aevb plot`` and ``aevb report``.

    aevb sample runs/digits --n 64
    aevb sample runs/digits --sampler gmm --temperature 0.8   # after `aevb fit-prior runs/digits --sampler gmm`
    aevb reconstruct runs/digits
    aevb plot runs/mnist2d --kind manifold --kind scatter     # PNGs in RUN_DIR/plots/
    aevb report runs/mnist2d                                  # RUN_DIR/report.html
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from .errors import labels_for
from .options import data_dir_option, device_option, int_list, resolved_device, seed_option, split_option, trust_code_option
from .samplers import SAMPLER_KINDS


def float_list(ctx, param, value: str | None):
    """"0.8" -> 0.8, "1,0.8,0.6" -> [1.0, 0.8, 0.6] (one per latent layer); numbers >= 0."""
    if value is None:
        return None
    try:
        values = [float(v) for v in value.split(",")]
    except ValueError:
        values = []
    if not values or any(not v >= 0 or v == float("inf") for v in values):
        raise click.BadParameter(f"expected a number >= 0 or a comma-separated list such as 1,0.8; got {value!r}")
    return values[0] if len(values) == 1 else values


# Kept equal to aevb.viz.PLOT_KINDS (a test checks) so that `aevb --help` need not import matplotlib.
PLOT_KINDS = ("manifold", "scatter", "samples", "reconstructions", "interpolate", "traverse", "curves")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", type=click.IntRange(min=1, max=1024), default=64, show_default=True)
@click.option("--label", type=int,
              help="Conditional models: draw every sample for this class (default: one row per class).")
@click.option("--sampler", type=click.Choice(("prior", *SAMPLER_KINDS)), default="prior", show_default=True,
              help="Where the codes come from: the model's prior, or a sampler fitted with `aevb fit-prior`.")
@seed_option()
@click.option("--temperature", callback=float_list, metavar="T[,T...]",
              help="Draw at this temperature (default 1): it scales a N(0, I) prior's codes or a fitted sampler's noise "
                   "(a GMM's component spread, ...); a hierarchy (hvae) takes one per latent layer, top first.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG path (default RUN_DIR/samples.png).")
@device_option
@trust_code_option
def sample(run_dir, n, label, sampler, temperature, seed, out, device, trust_code) -> None:
    """A PNG grid of samples from the prior (or a fitted sampler), decoded.

    A conditional model draws all N for --label; without --label it draws one row per class,
    N // classes columns (at least one), each column sharing one z, so a row shows a class and
    a column one style.
    """
    from ..checkpoint import check_writable
    from ..run import load
    from ..conditional import check_label
    from ..viz import plot_samples

    run = load(run_dir, device=resolved_device(device), trust_code=trust_code)
    out = out or run_dir / "samples.png"
    check_writable(out.parent)  # before anything is drawn
    check_label(label, run.config.model.num_classes, "--label")  # a LabelError: one line from main()
    temperature = 1.0 if temperature is None else temperature
    codes, source = None, None
    if sampler != "prior" or temperature != 1.0:
        name = None if sampler == "prior" else sampler
        run.sample_codes(1, sampler=name, temperature=temperature, seed=seed)  # its errors before any drawing
        codes = functools.partial(run.sample_codes, sampler=name, temperature=temperature, seed=seed)
        shown = ",".join(f"{t:g}" for t in temperature) if isinstance(temperature, list) else f"{temperature:g}"
        at = "" if temperature == 1.0 else f" at temperature {shown}"
        source = (f"from the {sampler} sampler" if name else "from the prior") + at
    click.echo(f"wrote {plot_samples(run.model, out, n=n, seed=seed, label=label, codes=codes, source=source)}")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--n", type=click.IntRange(min=1, max=256), default=16, show_default=True)
@split_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG path (default RUN_DIR/reconstructions.png).")
@data_dir_option
@device_option
@trust_code_option
def reconstruct(run_dir, n, split, out, data_dir, device, trust_code) -> None:
    """A PNG of test inputs above their reconstructions."""
    from ..checkpoint import check_writable
    from ..run import load
    from ..viz import plot_reconstructions

    device = resolved_device(device)
    run = load(run_dir, device=device, trust_code=trust_code)
    out = out or run_dir / "reconstructions.png"
    check_writable(out.parent)
    part = run.dataset(data_dir).split(split)
    x, y = part.x[:n].to(device), labels_for(run, part.y, n, device)
    click.echo(f"wrote {plot_reconstructions(run.model, x, out, n=n, y=y)}")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--kind", "kinds", multiple=True, type=click.Choice(("all", *PLOT_KINDS)), default=("all",),
              show_default=True, help="Which figure(s); repeat the flag for several.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder for the PNGs (default RUN_DIR/plots).")
@click.option("--dims", callback=int_list("latent dimensions", "0,1", count=2, min_value=None),
              help="manifold: the two latent dimensions to span, others at 0 (default: the two most active, "
                   "by KL on the split's images).")
@click.option("--grid", type=click.IntRange(min=2, max=64), help="manifold: the grid's side (default 20).")
@click.option("--images", type=click.IntRange(min=2, max=1024),
              help="samples (default 64), reconstructions (default 16, at most 256): how many images.")
@click.option("--points", type=click.IntRange(min=2, max=10000),
              help="scatter: at most this many points (default 5000).")
@click.option("--steps", type=click.IntRange(min=2, max=64),
              help="interpolate (default 10), traverse (default 9): steps along the line or sweep.")
@click.option("--n", type=click.IntRange(min=2, max=10000),
              help="Deprecated (removed in the next release): the count of each kind; use --grid, --images, "
                   "--points or --steps.")
@split_option
@click.option("--a", "index_a", type=click.IntRange(min=0), default=0, show_default=True,
              help="interpolate/traverse: index of the (first) image in the split.")
@click.option("--b", "index_b", type=click.IntRange(min=0), default=1, show_default=True,
              help="interpolate: index of the second image.")
@click.option("--label", type=click.IntRange(min=0),
              help="Conditional models: the class the manifold and samples are drawn for (default: manifold "
                   "for 0, samples one row per class); data images always use their own labels.")
@seed_option()
@data_dir_option
@device_option
@trust_code_option
def plot(run_dir, kinds, out, dims, grid, images, points, steps, n, split, index_a, index_b, label, seed, data_dir,
         device, trust_code) -> None:
    """PNG figures of a run: manifold, scatter, samples, reconstructions, interpolate, traverse, curves."""
    from ..checkpoint import check_writable
    from ..run import load
    from ..viz import make_plot

    if n is not None:
        click.echo("aevb: warning: plot --n is deprecated and will be removed in the next release; use --grid "
                   "(manifold), --images (samples, reconstructions), --points (scatter) or --steps (interpolate, "
                   "traverse)", err=True)
    run = load(run_dir, device=resolved_device(device), trust_code=trust_code)
    out = out or run_dir / "plots"
    check_writable(out)
    kinds = PLOT_KINDS if "all" in kinds else tuple(dict.fromkeys(kinds))
    dataset = None
    needs_data = {"scatter", "reconstructions", "interpolate", "traverse"} & set(kinds)
    if needs_data or ("manifold" in kinds and dims is None):
        try:
            dataset = run.dataset(data_dir)
        except (ValueError, OSError):  # DataError is a ValueError
            if needs_data:
                raise
            # then the manifold's dimensions come from evaluation.json, or are 0 and 1
    for kind in kinds:
        path = make_plot(run, kind, out / f"{kind}.png", dims=dims, n=n, grid=grid, images=images, points=points,
                         steps=steps, split=split, seed=seed, index_a=index_a, index_b=index_b, dataset=dataset,
                         data_dir=data_dir, label=label)
        click.echo(f"wrote {path}")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="HTML path (default RUN_DIR/report.html).")
@data_dir_option
@device_option
@trust_code_option
def report(run_dir, out, data_dir, device, trust_code) -> None:
    """One self-contained HTML page: configuration, metrics and every figure."""
    from ..checkpoint import check_writable
    from ..run import load
    from ..report import write_report

    run = load(run_dir, device=resolved_device(device), trust_code=trust_code)
    check_writable((out or run_dir / "report.html").parent)
    click.echo(f"wrote {write_report(run, out, data_dir)}")
