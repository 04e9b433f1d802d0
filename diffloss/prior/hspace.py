"""Read (and optionally replace) h-space, the output of a guided-diffusion UNet's ``middle_block``.

A forward hook on ``model.middle_block``: guided-diffusion's code is not forked and ``model(x, t)``
keeps returning a tensor, so its samplers (``p_mean_variance``, ``ddim_sample``) work unchanged.

    with hspace_hook(model) as hs:
        eps = model(x_t, t)
    hs.h            # [B, C, H, W]: 1024 x 8 x 8 for ADM at 256 px, 64 x 8 x 8 for "tiny"

    with hspace_hook(model, edit=lambda h: h + delta) as hs:   # generation with edited h-space
        sample = diffusion.ddim_sample_loop(model, shape)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["HSpace", "hspace_hook", "find_middle_block"]


def find_middle_block(model: nn.Module | object) -> nn.Module:
    """``model.middle_block``, looking through the wrappers that hold a UNet: guided-diffusion's
    ``_WrappedModel`` (``.model``), ``torch.compile``'s ``OptimizedModule`` (``._orig_mod``) and
    ``DataParallel``/DDP (``.module``)."""
    seen = model
    for _ in range(4):
        block = getattr(seen, "middle_block", None)
        if isinstance(block, nn.Module):
            return block
        for attr in ("_orig_mod", "module", "model"):
            inner = getattr(seen, attr, None)
            if inner is not None:
                seen = inner
                break
        else:
            break
    raise TypeError(
        f"{type(model).__name__} has no `middle_block`; hspace_hook expects a guided-diffusion UNetModel "
        "(or a wrapper around one)"
    )


@dataclass
class HSpace:
    """What :func:`hspace_hook` records on each UNet call.

    Attributes:
        h: the last ``middle_block`` output ``[B, C, H, W]`` as computed by the UNet (before ``edit``),
            still attached to the autograd graph (DiffLoss differentiates through it).
        h_edited: what the middle block returned after ``edit`` (``None`` without an edit).
        calls: how many UNet forwards the hook has seen.
    """

    h: torch.Tensor | None = None
    h_edited: torch.Tensor | None = None
    calls: int = 0
    edit: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)


@contextlib.contextmanager
def hspace_hook(
    model: nn.Module, edit: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Iterator[HSpace]:
    """Context manager yielding an :class:`HSpace` whose ``.h`` is the last middle-block output.

    Args:
        model: a guided-diffusion ``UNetModel`` (or a wrapper, see :func:`find_middle_block`).
        edit: optional ``h -> h'`` (same shape); the middle block then returns ``edit(h)``, i.e. the
            rest of the UNet sees the edited h-space. ``hs.h`` keeps the unedited tensor.

    The hook is removed on exit, also when the body raises.
    """
    block = find_middle_block(model)
    record = HSpace(edit=edit)

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor):
        record.h = output
        record.calls += 1
        if edit is None:
            return None
        edited = edit(output)
        if not isinstance(edited, torch.Tensor) or edited.shape != output.shape:
            raise ValueError(
                f"hspace_hook edit must return a tensor of the h-space shape {tuple(output.shape)}, got "
                f"{tuple(edited.shape) if isinstance(edited, torch.Tensor) else type(edited).__name__}"
            )
        record.h_edited = edited
        return edited

    handle = block.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()
