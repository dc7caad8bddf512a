"""The `aevb plot`, `aevb report` and `aevb serve` commands (registered on the main group by
``register(cli)``).

    aevb plot runs/mnist2d --kind manifold --kind scatter     # PNGs in RUN_DIR/plots/
    aevb report runs/mnist2d                                  # RUN_DIR/report.html
    aevb serve runs/mnist2d --port 8000                       # the latent explorer on 127.0.0.1
"""

from __future__ import annotations

from pathlib import Path

import click

# Kept equal to aevb.viz.PLOT_KINDS (a test checks) so that `aevb --help` need not import matplotlib.
PLOT_KINDS = ("manifold", "scatter", "samples", "reconstructions", "interpolate", "traverse", "curves")


def _dims(ctx, param, value: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two latent dimensions such as 0,1; got {value!r}") from None
    return a, b


def _device_option(f):
    return click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or mps.")(f)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--kind", "kinds", multiple=True, type=click.Choice(("all", *PLOT_KINDS)), default=("all",),
              show_default=True, help="Which figure(s); repeat the flag for several.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder for the PNGs (default RUN_DIR/plots).")
@click.option("--dims", default="0,1", show_default=True, callback=_dims,
              help="manifold: the two latent dimensions to span (others at 0).")
@click.option("--n", type=click.IntRange(min=2, max=10000),
              help="Grid side (manifold), images (samples, reconstructions), points (scatter) or steps.")
@click.option("--split", type=click.Choice(["test", "valid", "train"]), default="test", show_default=True)
@click.option("--a", "index_a", type=click.IntRange(min=0), default=0, show_default=True,
              help="interpolate/traverse: index of the (first) image in the split.")
@click.option("--b", "index_b", type=click.IntRange(min=0), default=1, show_default=True,
              help="interpolate: index of the second image.")
@click.option("--label", type=click.IntRange(min=0),
              help="Conditional models: the class the manifold and samples are drawn for (default: manifold "
                   "for 0, samples one row per class); data images always use their own labels.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False))
@_device_option
def plot(run_dir, kinds, out, dims, n, split, index_a, index_b, label, seed, data_dir, device) -> None:
    """PNG figures of a run: manifold, scatter, samples, reconstructions, interpolate, traverse, curves."""
    from .checkpoint import load
    from .viz import make_plot

    run = load(run_dir, device=device)
    kinds = PLOT_KINDS if "all" in kinds else tuple(dict.fromkeys(kinds))
    out = out or run_dir / "plots"
    dataset = None
    if any(k in ("scatter", "reconstructions", "interpolate", "traverse") for k in kinds):
        dataset = run.dataset(data_dir)
    for kind in kinds:
        path = make_plot(run, kind, out / f"{kind}.png", dims=dims, n=n, split=split, seed=seed,
                         index_a=index_a, index_b=index_b, dataset=dataset, label=label)
        click.echo(f"wrote {path}")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="HTML path (default RUN_DIR/report.html).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@_device_option
def report(run_dir, out, data_dir, device) -> None:
    """One self-contained HTML page: configuration, metrics and every figure."""
    from .checkpoint import load
    from .report import write_report

    click.echo(f"wrote {write_report(load(run_dir, device=device), out, data_dir)}")


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; the default serves this machine only.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False))
@_device_option
def serve(run_dir, host, port, data_dir, device) -> None:
    """The latent explorer: sliders, latent map, sampling, drawing/uploading, interpolation."""
    try:
        import uvicorn

        from .serve.app import create_app
    except ImportError as e:
        raise click.ClickException(f"the explorer needs fastapi and uvicorn ({e}); pip install 'aevb[serve]'") from None
    from .checkpoint import load

    run = load(run_dir, device=device)
    app = create_app(run, data_dir=data_dir)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}: anyone who can reach it can use the explorer", err=True)
    click.echo(f"aevb explorer for {run_dir} on http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(cli: click.Group) -> None:
    for command in (plot, report, serve):
        cli.add_command(command)
