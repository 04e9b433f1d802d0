"""Run-time helpers every command shares: torch's CPU thread count, set for a block and restored after, and
parameter counts."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["torch_threads", "count_parameters"]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` and restore the previous count after.

    ``threads`` of ``None`` or ``0`` leaves torch's choice alone. Yields the count in force.
    """
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def count_parameters(net: "torch.nn.Module", trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``net``: all of them (frozen ones included, as for the prior), or only
    those that require grad with ``trainable_only``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
