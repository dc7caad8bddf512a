"""Errors a user can fix (printed as one line by ``aevb.cli.main``), and the checks several commands share."""

from __future__ import annotations

import errno

import click


class UserError(click.ClickException):
    """An error the user can fix; printed as one line."""


def labels_for(run, y, n: int | None, device: str):
    """The first n labels of a split for a conditional run (None for an unconditional one)."""
    if not run.config.model.conditional:
        return None
    if y is None:
        raise UserError(f"{run.dir} is a conditional model but its data set has no labels in this split")
    return (y if n is None else y[:n]).to(device)


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
}


def describe_os_error(e: OSError) -> str:
    """An OSError as one line: the path, the problem, and what to do about it."""
    where = f"{e.filename}: " if e.filename else ""
    hint = _OS_HINTS.get(e.errno)
    return f"{where}{e.strerror or e}" + (f"; {hint}" if hint else "")
