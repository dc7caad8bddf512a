"""The ``aevb`` command.

    aevb train --dataset digits --epochs 100 --out runs/digits
    aevb evaluate runs/digits --k 1000 --json
    aevb sample runs/digits
    aevb reconstruct runs/digits
    aevb fit-prior runs/digits --sampler gmm && aevb sample runs/digits --sampler gmm
    aevb train --dataset digits --conditional --out runs/cdigits && aevb sample runs/cdigits --label 7

One module per command group; each defines plain click commands, added to the ``cli`` group
here. Options several commands share are in ``options``. Heavy imports (torch, matplotlib, ...)
happen inside the command functions, so ``aevb --help`` starts fast.

Every failure a user can cause (a bad flag, a bad value, a missing or corrupt file)
ends with one line on stderr naming the problem, and exit status 2 (usage) or 1.
"""

from __future__ import annotations

import sys
import warnings

import click

from . import data, denoise, edit, evaluate, explain, figures, reproduce, samplers, serve, train
from .errors import UserError, describe_os_error

__all__ = ["UserError", "cli", "main"]


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"],
                                                             "max_content_width": 100})
@click.version_option(package_name="aevb")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """aevb: variational autoencoders as in Kingma & Welling, Auto-Encoding Variational Bayes."""
    if ctx.invoked_subcommand is None:  # bare `aevb`: the help, and success
        click.echo(ctx.get_help())


for _command in (train.train, evaluate.evaluate, figures.sample, figures.reconstruct, figures.plot, figures.report,
                 serve.serve, explain.explain, data.data, reproduce.reproduce):
    cli.add_command(_command)
cli.add_command(denoise.denoise)
cli.add_command(edit.edit)
cli.add_command(samplers.fit_prior)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command, turning every user error into one line (and aevb's own
    warnings, such as files skipped, into one line each)."""
    train.ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    previous = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.split(".")[0] == "aevb":
            click.echo(f"aevb: warning: {message}", err=True)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line
    try:
        return _run(argv)
    finally:
        warnings.showwarning = previous


def _run(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="aevb", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aevb: aborted", err=True)
        return 130
    except click.UsageError as e:
        where = f"{e.ctx.command_path}: " if e.ctx else ""
        click.echo(f"aevb: error: {where}{e.format_message()}", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"aevb: error: {e.format_message()}", err=True)
        return 1
    except OSError as e:  # a full disk, a read-only folder, a path below a file, a missing file
        click.echo(f"aevb: error: {describe_os_error(e)}", err=True)
        return 1
    except ValueError as e:  # ConfigError, DataError and CheckpointError are ValueErrors
        nets = sys.modules.get("aevb.nets")
        if nets is not None and isinstance(e, nets.UntrustedCode):
            click.echo(f"aevb: error: this run's {e.part} is your own class {e.path}; rebuilding it imports and "
                       "runs that code: pass --trust-code if you trust it", err=True)
            return 1
        click.echo(f"aevb: error: {e}", err=True)
        return 1
    except Exception as e:
        # Only a training run raises these, so aevb.train is loaded by then; looking them up in
        # sys.modules keeps main() from importing torch.
        training = sys.modules.get("aevb.train")
        if training is not None and isinstance(e, training.TrainingInterrupted):
            click.echo(f"aevb: {e}; continue with: aevb train --resume {e.run_dir}", err=True)
            return 130
        if training is not None and isinstance(e, training.TrainingDiverged):
            click.echo(f"aevb: error: {e}", err=True)
            return 1
        raise
    return 0
