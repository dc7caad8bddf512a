"""``aevb data``: the data sets aevb knows, and fetching their files.

    aevb data list
    aevb data fetch mnist --data-dir data/
"""

from __future__ import annotations

import click

from .options import data_dir_option


@click.group()
def data() -> None:
    """List data sets, or fetch and verify their files."""


@click.command("list")
def data_list() -> None:
    """The data sets aevb knows."""
    from ..data import DATASETS

    for name in DATASETS:
        click.echo(name)


@click.command("fetch")
@click.argument("name")
@data_dir_option
def data_fetch(name, data_dir) -> None:
    """Find (or download) a data set's files, check their sha256, and print the splits."""
    from ..config import DataConfig
    from ..data import load_dataset

    ds = load_dataset(DataConfig(dataset=name, data_dir=data_dir))
    for split in ("train", "valid", "test"):
        s = getattr(ds, split)
        if s is not None:
            click.echo(f"{name} {split}: {(len(s), *s.image_shape)}")


data.add_command(data_list)
data.add_command(data_fetch)
