"""``aevb serve``: the latent explorer (an HTTP app and its page) for a run.

    aevb serve runs/mnist2d --port 8000                       # on 127.0.0.1
"""

from __future__ import annotations

from pathlib import Path

import click

from .options import data_dir_option, device_option, resolved_device, trust_code_option


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; the default serves this machine only.")
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@data_dir_option
@device_option
@trust_code_option
def serve(run_dir, host, port, data_dir, device, trust_code) -> None:
    """The latent explorer: sliders, latent map, sampling, drawing/uploading, interpolation."""
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise click.ClickException(f"the explorer needs fastapi and uvicorn ({e}); pip install 'aevb[serve]'") from None
    from ..checkpoint import load

    run = load(run_dir, device=resolved_device(device), trust_code=trust_code)
    app = create_app(run, data_dir=data_dir)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}: anyone who can reach it can use the explorer", err=True)
    click.echo(f"aevb explorer for {run_dir} on http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
