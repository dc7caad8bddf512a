"""``aevb serve``: the latent explorer (an HTTP app and its page) for a run.

    aevb serve runs/mnist2d --port 8000                       # on 127.0.0.1
"""

from __future__ import annotations

import errno
from pathlib import Path

import click

from .errors import UserError
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
    from ..run import load

    run = load(run_dir, device=resolved_device(device), trust_code=trust_code)
    app = create_app(run, data_dir=data_dir)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}: anyone who can reach it can use the explorer", err=True)
    sock = _listening_socket(host, port)  # bound before the "on http://..." line: a port in use is one line
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"aevb explorer for {run_dir} on http://{shown}:{sock.getsockname()[1]}/ (Ctrl-C to stop)")
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run(sockets=[sock])


def _listening_socket(host: str, port: int):
    """A TCP socket bound to (host, port) as uvicorn binds one; a port in use or an address this
    machine does not have is a ``UserError`` naming it."""
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        hint = ("choose another port with --port, or stop the program using it" if e.errno == errno.EADDRINUSE
                else "check --host and --port")
        raise UserError(f"cannot listen on {host} port {port}: {e.strerror or e}; {hint}") from None
    sock.set_inheritable(True)
    return sock
