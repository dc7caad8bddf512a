"""Memory a run needs, estimated before anything is allocated, and the memory a device has free.

The model is built on PyTorch's ``meta`` device (shapes, no storage) and one forward pass of a
batch is traced there, so its parameters and activations are counted exactly and for free; the
data's size follows from the number of images and their shape before any is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import ModelConfig, RunConfig

FLOAT_BYTES = 4
# The optimizer's tensors of the parameters' size (Adam's two moments, ...). Training holds the
# weights, their gradients and these slots; a checkpoint serialises weights and slots, in two buffers
# (safetensors' and the bytes written): 4 + 3 * slots copies at the peak, 10 for Adam (measured:
# a 51-million-parameter MLP on digits peaked 1.97 GiB above the process's size before training,
# against the estimate of 2.05 GiB; docs/reliability.md).
OPTIMIZER_SLOTS = {"adam": 2, "adagrad": 1, "sgd": 1}
ACTIVATION_COPIES = 3  # a training batch's outputs kept for backward, their gradients, working tensors


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory free for new allocations on ``device``: MemAvailable of /proc/meminfo (else the free
    physical pages) for the CPU, the CUDA driver's free bytes for a GPU; None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes as "12.3 GiB", "512 MiB", ..."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def model_footprint(config: ModelConfig) -> tuple[int, int] | None:
    """(parameters, activation values of one image's forward pass) of the model ``config``
    describes, counted on the meta device; None when it cannot be traced there (your own networks,
    a family that needs real tensors)."""
    from .models import build_model

    if config.encoder is not None or config.decoder is not None:
        return None
    outputs = [0]

    def count(module, args, out) -> None:
        if isinstance(out, torch.Tensor):
            outputs[0] += out.numel()

    try:
        with torch.device("meta"):
            model = build_model(config)
            leaves = [m for m in model.modules() if not list(m.children())]
            hooks = [m.register_forward_hook(count) for m in leaves]
            x = torch.empty(1, *config.input_shape)
            y = torch.zeros(1, dtype=torch.long) if config.conditional else None
            with torch.no_grad():
                model.reconstruct(x, y)
            for h in hooks:
                h.remove()
    except Exception:  # anything the meta device cannot run: no estimate rather than a wrong one
        return None
    return sum(p.numel() for p in model.parameters()), outputs[0]


def training_bytes(config: RunConfig, params: int, activations: int) -> int:
    """Bytes of memory to train ``params`` parameters whose forward pass makes ``activations``
    values per image: the parameters' copies, and the larger of a training batch's activations
    (kept for backward) and a validation batch's."""
    t = config.train
    copies = 4 + 3 * OPTIMIZER_SLOTS.get(t.optimizer, 2)
    per_batch = max(ACTIVATION_COPIES * t.batch_size, t.eval_batch_size) * activations
    return FLOAT_BYTES * (copies * params + per_batch)


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
