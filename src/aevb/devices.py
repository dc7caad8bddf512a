"""Which device a name means: ``auto`` (CUDA, else MPS, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device name that is not known here, or a device that is not present."""


def available_devices() -> list[str]:
    """The device names that work on this machine, for messages."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch.device for ``name``; ``DeviceError`` naming the devices present when it is not one."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    present = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {name!r}; this machine has: auto, {', '.join(present)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} was asked for but CUDA is not available; this machine has: auto, "
                          f"{', '.join(present)}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} does not exist; this machine has: auto, {', '.join(present)}")
    if device.type == "mps" and "mps" not in present:
        raise DeviceError(f"device {name!r} was asked for but MPS is not available; this machine has: auto, "
                          f"{', '.join(present)}")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {name!r} is not supported; this machine has: auto, {', '.join(present)}")
    return device
