"""Gradient scaling through a float16 UNet, inside the criterion (AMP's loss scaling, where it is needed).

At the paper's weights the gradient reaching the UNet's output is gamma * 2 * (pred_z - pred_x) / N
(N = B*C*H*W): ~1e-8 at 32 px, below float16's smallest subnormal (6e-8), so an fp16 backward turns it
into exactly 0. The pair below works like AMP's loss scaling: on the way into the UNet the gradients of its
outputs (eps prediction and h-space, both float32 there) are multiplied by a power of two S that brings
their largest magnitude to ~1; on the way out the gradient of the UNet's input is divided by the same S.
Powers of two make both steps exact, so the value of ``total`` and the gradient the caller sees are
unchanged; only the float16 arithmetic in between sees well-scaled numbers.

    holder = GradScale()
    x_in = UnscaleGradOutOfUNet.apply(holder, x_t)          # before the UNet
    out, h = ScaleGradIntoUNet.apply(holder, out, h)       # after it (float32 outputs)
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["GradScale", "ScaleGradIntoUNet", "UnscaleGradOutOfUNet", "unet_backward_in_float16"]

_GRAD_TARGET = 1.0  # largest |gradient| entering the UNet after scaling: ample headroom below 65504


class GradScale:
    """The scale chosen by :class:`ScaleGradIntoUNet` for one backward pass, read by :class:`UnscaleGradOutOfUNet`."""

    __slots__ = ("scale",)

    def __init__(self) -> None:
        self.scale: torch.Tensor | None = None


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
    """Identity on the UNet's (float32) input; backward divides its gradient by the scale applied at the outputs."""

    @staticmethod
    def forward(ctx, holder: GradScale, x: torch.Tensor) -> torch.Tensor:
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scale = ctx.holder.scale
        return None, (grad if scale is None else grad / scale.to(grad.dtype))


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
