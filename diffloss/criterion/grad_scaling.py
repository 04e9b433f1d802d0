"""Gradient scaling through a float16 UNet, inside the criterion (AMP's loss scaling, where it is needed).

At the paper's weights the gradient reaching the UNet's output is gamma * 2 * (pred_z - pred_x) / N
(N = B*C*H*W): ~1e-8 at 32 px, below float16's smallest subnormal (6e-8), so an fp16 backward turns it
into exactly 0. The pair below works like AMP's loss scaling: on the way into the UNet the gradients of its
outputs (eps prediction and h-space, both float32 there) are multiplied by a power of two S that brings
their largest magnitude to ~1; on the way out the gradient of the UNet's input is divided by the same S.
Powers of two make both steps exact, so the value of ``total`` and the gradient the caller sees are
unchanged; only the float16 arithmetic in between sees well-scaled numbers.

Overflow. Scaling the largest output gradient to ~1 leaves 16 binades of float16 headroom, but a backward
pass that amplifies gradients more than that (or an inf/NaN already in the forward pass) gives a non-finite
gradient where unscaled float16 might have stayed finite (and underflowed). As torch's GradScaler does, the
unscaled gradient is checked (one device sync per backward pass): if it is not finite, a warning is logged,
``holder.on_overflow`` is called (`DiffLoss` counts it in ``grad_overflows``) and the non-finite gradient is
passed on unchanged, so that the caller's gradient check skips the optimisation step (``restoration.train``
does; in your own loop torch's ``GradScaler.step`` does, or check the gradients before ``optimizer.step()``).
The scale is chosen afresh from each pass's own gradients, so unlike GradScaler's carried-over scale it has
no state to back off.

    holder = GradScale(on_overflow=callback)   # callback optional
    x_in = UnscaleGradOutOfUNet.apply(holder, x_t)          # before the UNet
    out, h = ScaleGradIntoUNet.apply(holder, out, h)       # after it (float32 outputs)
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["GradScale", "ScaleGradIntoUNet", "UnscaleGradOutOfUNet", "unet_backward_in_float16"]

_GRAD_TARGET = 1.0  # largest |gradient| entering the UNet after scaling: ample headroom below 65504


class GradScale:
    """The scale chosen by :class:`ScaleGradIntoUNet` for one backward pass, read by :class:`UnscaleGradOutOfUNet`,
    and ``on_overflow``: called (no arguments) when the unscaled gradient is not finite."""

    __slots__ = ("scale", "on_overflow")

    def __init__(self, on_overflow: Callable[[], None] | None = None) -> None:
        self.scale: torch.Tensor | None = None
        self.on_overflow = on_overflow


def _power_of_two_scale(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    # No host sync: a zero, Inf or NaN maximum gives scale 1 (nothing to rescue, or nothing to protect).
    amax = torch.stack([g.detach().abs().amax().float() for g in grads]).amax()
    exponent = torch.floor(torch.log2(_GRAD_TARGET / amax))
    ok = torch.isfinite(exponent)
    return torch.where(ok, torch.exp2(torch.where(ok, exponent, 0.0).clamp(-100.0, 100.0)), 1.0)


class ScaleGradIntoUNet(torch.autograd.Function):
    """Identity on the UNet's (float32) outputs; backward multiplies all their gradients by one power of two."""

    @staticmethod
    def forward(ctx, holder: GradScale, *tensors: torch.Tensor):
        ctx.holder = holder
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        present = [g for g in grads if g is not None]
        if not present:
            return (None, *grads)
        scale = _power_of_two_scale(present)
        ctx.holder.scale = scale
        return (None, *(None if g is None else g * scale.to(g.dtype) for g in grads))


class UnscaleGradOutOfUNet(torch.autograd.Function):
    """Identity on the UNet's (float32) input; backward divides its gradient by the scale applied at the outputs
    and reports a non-finite result (`GradScale.on_overflow`, a warning); the gradient is passed on as it is."""

    @staticmethod
    def forward(ctx, holder: GradScale, x: torch.Tensor) -> torch.Tensor:
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        holder = ctx.holder
        if holder.scale is None:
            return None, grad
        grad = grad / holder.scale.to(grad.dtype)
        if not bool(torch.isfinite(grad).all()):
            _report_overflow(grad, holder)
        return None, grad


def _report_overflow(grad: torch.Tensor, holder: GradScale) -> None:
    bad = int((~torch.isfinite(grad)).sum())
    log.warning(
        "DiffLoss: the float16 UNet's backward pass overflowed: %d of %d input-gradient values are inf/NaN after "
        "unscaling (scale 2^%d). The gradient is passed on as it is, so skip this optimisation step (restoration.train "
        "does; in your own loop use torch's GradScaler or check the gradients before optimizer.step()); "
        "autocast='bf16' has float32's range", bad, grad.numel(), int(torch.log2(holder.scale).item()))
    if holder.on_overflow is not None:
        holder.on_overflow()


def unet_backward_in_float16(model: nn.Module, device_type: str, autocast_dtype: torch.dtype | None) -> bool:
    """Whether the UNet's backward would run in float16 (autocast to fp16, the option or an outer region, or
    float16 weights), with frozen weights (scaling would change parameter gradients otherwise)."""
    if autocast_dtype is not None:
        fp16 = autocast_dtype == torch.float16
    else:
        fp16 = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
    params = list(model.parameters())
    fp16 = fp16 or any(p.dtype == torch.float16 for p in params)
    if fp16 and any(p.requires_grad for p in params):
        log.debug("UNet parameters require grad: no float16 gradient scaling inside DiffLoss")
        return False
    return fp16
