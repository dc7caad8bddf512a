"""Data-parallel training with PyTorch's own engine (torchrun + DistributedDataParallel).

    torchrun --nproc_per_node=2 -m aevb train --dataset mnist --out runs/mnist   # or: aevb train --nproc 2 ...
    torchrun --nnodes=2 --node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 \
             --nproc_per_node=8 -m aevb train ...                                  # several machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; ``init_from_env`` reads them.
Backend gloo for CPU tensors, nccl for CUDA ones. Every rank takes a contiguous shard of each
global batch (the batch size is global and must divide by the number of processes); DDP averages
the gradients. Every rank draws the *whole* global batch's noise (epsilon, dynamic binarization,
wake-sleep's dreams) from the same seeded generator and keeps its own rows (``ShardedNoise``), so
an N-process run follows the same trajectory as a 1-process run with the same global batch and
seed, up to the order of floating-point sums.

Rank 0 alone touches the run directory (it plans the run, reads the training state and sends it
to the others, writes every file); the others need only the data files. Collectives fail after
``AEVB_DIST_TIMEOUT`` seconds (default 120) instead of hanging on a dead peer; waits for work of
unknown length (reading or downloading the data, rank 0's checkpoint writes) go through
``wait_for_all`` with ``AEVB_DIST_WAIT_TIMEOUT`` (default 1800).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_WAIT_GROUP: list = []  # the long-timeout gloo group, made once by init_from_env (process groups are global)


class PeerFailed(ValueError):
    """Another process of the run failed (its own message says why); a ValueError, so that the
    command line reports it in one line."""


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


def _seconds(name: str, default: float) -> timedelta:
    return timedelta(seconds=float(os.environ.get(name, default)))


def init_from_env() -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process, and
    for a group already joined). The group carries gloo for CPU tensors and, where CUDA is
    available, nccl for CUDA ones, so it can be joined before the run's device is known."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # A collective that waits longer than this fails instead of hanging (e.g. a peer died).
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=_seconds("AEVB_DIST_TIMEOUT", 120))
    if not _WAIT_GROUP:
        _WAIT_GROUP.append(dist.new_group(backend="gloo", timeout=_seconds("AEVB_DIST_WAIT_TIMEOUT", 1800)))
    return info


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (one all-reduce: every rank calls it at the same point)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wait_for_all(info: DistInfo, failed: bool = False) -> bool:
    """A barrier with the long timeout (``AEVB_DIST_WAIT_TIMEOUT``), for the ends of work of unknown
    length; ``failed``: this rank's work raised. Returns whether any rank's did."""
    if not info.enabled:
        return failed
    t = torch.tensor([int(failed)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_WAIT_GROUP[0])
    return bool(t.item())


def _agreed(info: DistInfo, work: Callable[[], T], here: bool, failed_elsewhere: str) -> T | None:
    """``work()`` where ``here``, then one wait (long timeout) in which every rank learns whether any
    failed: the failing rank re-raises its exception, the others raise ``PeerFailed(failed_elsewhere)``."""
    result, error = None, None
    if here:
        try:
            result = work()
        except BaseException as e:  # noqa: BLE001 -- re-raised below, after telling the others
            error = e
    if wait_for_all(info, error is not None):
        if error is not None:
            raise error
        raise PeerFailed(failed_elsewhere)
    return result


def on_main(info: DistInfo, work: Callable[[], T]) -> T | None:
    """``work()`` on rank 0 while the others wait (long timeout); an exception in it is raised on
    rank 0, and as ``PeerFailed`` on the others."""
    return _agreed(info, work, info.is_main,
                   "rank 0 failed writing the run directory (see its message); this process stops too")


def share_from_main(info: DistInfo, make: Callable[[], bytes]) -> bytes:
    """Rank 0's ``make()`` on every rank (the others wait, long timeout). An exception in ``make``
    is raised on rank 0, and as ``PeerFailed`` with its message on the others."""
    if not info.enabled:
        return make()
    error: BaseException | None = None
    payload = b""
    if info.is_main:
        try:
            payload = b"\x00" + make()  # the first byte says whether make() succeeded
        except BaseException as e:  # noqa: BLE001 -- re-raised below, after telling the others
            error, payload = e, b"\x01" + str(e).encode()
    group = _WAIT_GROUP[0]
    size = torch.tensor([len(payload)], dtype=torch.int64)
    dist.broadcast(size, src=0, group=group)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if info.is_main else \
        torch.empty(int(size.item()), dtype=torch.uint8)
    dist.broadcast(data, src=0, group=group)
    if error is not None:
        raise error
    raw = payload if info.is_main else data.numpy().tobytes()
    if raw[:1] == b"\x01":
        raise PeerFailed(f"rank 0 failed: {raw[1:].decode(errors='replace')}")
    return raw[1:]


def reading_turn(info: DistInfo) -> int:
    """When this process reads the data files in ``in_turns``: 0 for rank 0, 1 for the first process
    of every other machine, 2 for the rest."""
    if info.is_main:
        return 0
    return 1 if info.local_rank == 0 else 2


def in_turns(info: DistInfo, work: Callable[[], T]) -> T:
    """``work()`` on every rank, in three turns (``reading_turn``), each waiting (long timeout) for
    the one before: a file downloaded onto storage the machines share is downloaded once, by rank 0,
    and one on each machine's own disk once per machine. An exception in any rank's ``work`` stops
    every rank (as ``PeerFailed`` on the others)."""
    if not info.enabled:
        return work()
    mine = reading_turn(info)
    result = None
    for turn in range(3):
        done = _agreed(info, work, mine == turn,
                       "another process failed reading the data (see its message); this process stops too")
        if mine == turn:
            result = done
    return result  # type: ignore[return-value]


def shutdown(info: DistInfo) -> None:
    """Leave the process group together: a barrier first, so that no rank tears down its gloo
    connections while a peer is still using them (which aborted a rank with SIGABRT,
    "terminate called without an active exception", about one run in ten on a loaded machine)."""
    if info.enabled and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 -- a peer already failed: tear down anyway
            pass
        _WAIT_GROUP.clear()
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
