"""Data-parallel training with PyTorch's own engine (torchrun + DistributedDataParallel).

    torchrun --nproc_per_node=2 -m aevb train --dataset mnist --out runs/mnist   # or: aevb train --nproc 2 ...
    torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 \
             --nproc_per_node=8 -m aevb train ...                                  # several machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; ``init_from_env`` reads them. Backend
gloo on CPU, nccl on CUDA. Every rank takes a contiguous shard of each global batch
(the batch size is global and must divide by the number of processes); DDP averages
the gradients. Every rank draws the *whole* global batch's noise (epsilon, dynamic
binarization, wake-sleep's dreams) from the same seeded generator and keeps its own rows
(``ShardedNoise``), so an N-process
run follows the same trajectory as a 1-process run with the same global batch and
seed, up to the order of floating-point sums. Rank 0 alone writes files and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # A collective that waits longer than this fails instead of hanging (e.g. a peer died).
        timeout = timedelta(seconds=float(os.environ.get("AEVB_DIST_TIMEOUT", "120")))
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    return info


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown(info: DistInfo) -> None:
    """Leave the process group together: a barrier first, so that no rank tears down its gloo
    connections while a peer is still using them (which aborted a rank with SIGABRT,
    "terminate called without an active exception", about one run in ten on a loaded machine)."""
    if info.enabled and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 -- a peer already failed: tear down anyway
            pass
        dist.destroy_process_group()


class ShardedNoise:
    """A noise source (``aevb.distributions.noise``) that draws the global batch's noise from the
    shared generator and returns this rank's rows.

    Shapes asked for are local, with this rank's rows on ``batch_axis``; the draw is made at the
    global size, so every rank consumes the shared generator identically. ``shard_sizes``: every
    rank's number of rows of the global batch, for uneven shards (None: equal ones).
    """

    def __init__(self, generator: torch.Generator, info: DistInfo, shard_sizes: Sequence[int] | None = None):
        self.generator = generator
        self.info = info
        self.shard_sizes = None if shard_sizes is None else list(shard_sizes)

    def draw(self, kind: str, shape: tuple[int, ...], batch_axis: int, device, dtype) -> torch.Tensor:
        shape_ = list(shape)
        b = shape_[batch_axis]
        sizes = self.shard_sizes or [b] * self.info.world_size
        if sizes[self.info.rank] != b:
            raise ValueError(f"this rank's noise has {sizes[self.info.rank]} rows; {b} were asked for")
        shape_[batch_axis] = sum(sizes)
        fn = torch.randn if kind == "normal" else torch.rand
        full = fn(shape_, generator=self.generator, device=device, dtype=dtype)
        return full.narrow(batch_axis, sum(sizes[: self.info.rank]), b)
