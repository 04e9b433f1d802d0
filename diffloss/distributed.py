"""DDP plumbing shared by the training loops: set-up under torchrun, gather, barrier, tear-down."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

__all__ = ["dist_setup", "dist_teardown", "distributed", "gather", "barrier"]


def dist_setup(device: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, we_initialised). DDP only when launched by torchrun with WORLD_SIZE > 1
    (gloo on the CPU, nccl on CUDA, each rank on its LOCAL_RANK GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device), False
    import torch.distributed as dist

    cuda = device.startswith("cuda") and torch.cuda.is_available()
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
    """``with distributed(device) as (rank, world, device):`` set-up and tear-down around a training run."""
    rank, world, dev, ours = dist_setup(device)
    try:
        yield rank, world, dev
    finally:
        dist_teardown(ours)


def gather(obj: Any, world: int) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` without DDP)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
