"""Options and value parsers that several commands share, each defined once.

Nothing here imports torch: ``aevb --help`` builds every command's options.
"""

from __future__ import annotations

import json

import click

from .errors import UserError

SPLITS = ("test", "valid", "train")

device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False),
                               help="Folder with the data files (else $AEVB_DATA_DIR, cache).")
trust_code_option = click.option("--trust-code", is_flag=True,
                                 help="The run was trained with your own network classes: import them (their "
                                 "import paths are in config.json) to rebuild the model.")
split_option = click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)


def seed_option(default: int | None = 0):
    """``--seed``; ``default=None`` leaves the seed to the run's configuration."""
    return click.option("--seed", type=int, default=default, show_default=default is not None)


def resolved_device(name: str) -> str:
    """A ``--device`` value as a device ``aevb.checkpoint.load`` takes: "auto" becomes cuda, mps or cpu;
    a device this machine does not have is one line naming the ones it has (exit status 1: the
    command is right, the machine lacks the device)."""
    from ..devices import DeviceError, resolve_device

    try:
        return str(resolve_device(name))
    except DeviceError as e:
        raise UserError(f"--device: {e}") from None


_COUNT_WORDS = {2: "two", 3: "three"}


def int_list(noun: str, example: str, count: int | None = None, min_value: int | None = 1):
    """A callback parsing "a,b,c" into a tuple of ints: exactly ``count`` of them (any number, at
    least one, if None), each at least ``min_value`` (unchecked if None). ``noun`` and ``example`` go
    into the error message, e.g. "expected comma-separated layer widths such as 500 or 400,400"."""
    how_many = "comma-separated" if count is None else _COUNT_WORDS.get(count, str(count))

    def parse(ctx, param, value: str | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        try:
            ints = tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            ints = None
        if ints is None or (count is not None and len(ints) != count):
            raise click.BadParameter(f"expected {how_many} {noun} such as {example}; got {value!r}")
        if min_value is not None and (not ints or min(ints) < min_value):
            bound = "positive integers" if min_value == 1 else f"integers of at least {min_value}"
            raise click.BadParameter(f"{noun} must be {bound}; got {value!r}")
        return ints

    return parse


def input_noise(ctx, param, value: str | None) -> str | None:
    """A callback checking a corruption spec such as gaussian:0.5, mask:0.3 or salt-pepper:0.1."""
    from ..config import ConfigError, parse_input_noise

    if value is not None:
        try:
            parse_input_noise(value)
        except ConfigError as e:
            raise click.BadParameter(str(e).replace("input_noise ", "", 1)) from None
    return value


def _image_size(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        size = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) < 1:
        raise click.BadParameter(f"expected a size such as 64 or 48x64 (height x width); got {value!r}")
    return size * 2 if len(size) == 1 else size  # type: ignore[return-value]


image_size_option = click.option("--image-size", callback=_image_size,
                                 help="folder: bring images to this size, e.g. 64 or 48x64 (HxW).")


def json_list(ctx, param, value: str | None) -> list | None:
    """A callback parsing a JSON array, e.g. '[0.5, 1.0, -0.5]'."""
    if value is None:
        return None
    try:
        v = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON ({e.msg}); give an array such as [0.5, 1.0, -0.5]") from None
    if not isinstance(v, list):
        raise click.BadParameter("must be a JSON array")
    return v
