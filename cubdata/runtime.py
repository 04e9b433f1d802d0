"""Run-time settings every command shares: torch's CPU thread count, set for a block and restored after."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["torch_threads"]


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
