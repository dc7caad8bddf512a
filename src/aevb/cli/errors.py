"""Errors a user can fix (printed as one line by ``aevb.cli.main``), and the checks several commands share."""

from __future__ import annotations

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
