"""DDP plumbing shared by the training loops and the sharded inference commands (`restoration.restore`,
`analysis.classify`): set-up under torchrun, sharding, gather, broadcast, barrier, tear-down.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper is a no-op on one process: ``shard`` returns
everything, ``gather`` a one-element list. Errors do not leave the other ranks waiting in a collective:
`on_rank0` and `gather_checked` raise on every rank when one rank failed (`RankFailed` on the others).
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

__all__ = ["dist_setup", "dist_teardown", "distributed", "gather", "barrier", "shard", "on_rank0",
           "gather_checked", "RankFailed", "env_rank", "env_world"]

T = TypeVar("T")


class RankFailed(ValueError):
    """Another rank of this torchrun job failed; that rank reports the cause itself (its own exception)."""


def env_rank() -> int:
    """This process's global rank as torchrun sets it (``RANK``; 0 without torchrun). For CLIs deciding
    who prints, before or after the process group exists."""
    return int(os.environ.get("RANK", "0"))


def env_world() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun). For checks that must
    refuse a multi-process run before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def dist_setup(device: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, we_initialised). DDP only when launched by torchrun with WORLD_SIZE > 1
    (gloo on the CPU, nccl on CUDA, each rank on its LOCAL_RANK GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device), False
    import torch.distributed as dist

    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    ours = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        ours = True
    rank = dist.get_rank()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    return rank, dist.get_world_size(), dev, ours


def dist_teardown(ours: bool) -> None:
    """Destroy the process group if `dist_setup` created it."""
    if ours:
        import torch.distributed as dist

        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str) -> Iterator[tuple[int, int, torch.device]]:
    """``with distributed(device) as (rank, world, device):`` set-up and tear-down around a run. Nested use
    is fine: an inner one reuses the process group of the outer one and leaves it alone."""
    rank, world, dev, ours = dist_setup(device)
    try:
        yield rank, world, dev
    finally:
        dist_teardown(ours)


def gather(obj: Any, world: int) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` without DDP). ``obj`` is pickled:
    keep it small (digests, predictions), never tensors of images."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier(world: int) -> None:
    """Wait until every rank is here (nothing without DDP)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def minutes_passed(minutes: float, since: float, world: int, device: torch.device) -> bool:
    """Whether ``minutes`` of wall time have passed since ``since`` (`time.monotonic`); 0 means never. By rank 0's
    clock: under DDP every rank gets rank 0's answer, so all enter a checkpoint's collectives together."""
    if not minutes:
        return False
    due = time.monotonic() - since >= 60.0 * minutes
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor(float(due), device=device if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(flag, src=0)
        due = bool(flag.item())
    return due


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s share of ``items``: every ``world``-th item from position ``rank`` (disjoint shares
    that cover ``items``; ``list(items)`` without DDP). Shard whole batches, not images, when outputs must
    match a one-process run bit for bit: a batch then holds the same images on every world size."""
    return list(items[rank::world])


def _failure(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def on_rank0(fn: Callable[[], T], rank: int, world: int) -> T:
    """``fn()`` run on rank 0 alone, its result broadcast to every rank (checks and decisions that must
    be made once: is the output folder ours, what is already done). If it raises, rank 0 re-raises its
    exception and every other rank raises `RankFailed`."""
    if world == 1:
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    err = None
    if rank == 0:
        try:
            box[0] = (True, fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others have heard of it
            err, box[0] = e, (False, _failure(e))
    dist.broadcast_object_list(box, src=0)
    if err is not None:
        raise err
    ok, value = box[0]
    if not ok:
        raise RankFailed(f"rank 0 of {world} failed: {value}")
    return value


def gather_checked(fn: Callable[[], T], rank: int, world: int) -> list[T]:
    """``fn()`` on every rank, gathered: ``[result of rank 0, result of rank 1, ...]`` on every rank. If it
    raised anywhere, the failing rank re-raises its own exception and the others raise `RankFailed` naming
    the first failed rank, so no rank waits for a collective that will never come."""
    if world == 1:
        return [fn()]
    try:
        mine, err = (True, fn()), None
    except Exception as e:  # noqa: BLE001 - re-raised below, after the others have heard of it
        mine, err = (False, _failure(e)), e
    parts = gather(mine, world)
    if err is not None:
        raise err
    for r, (ok, value) in enumerate(parts):
        if not ok:
            raise RankFailed(f"rank {r} of {world} failed: {value}")
    return [value for _, value in parts]
