"""The functional core of DiffLoss (Tan & Zhao 2024, Sec. 3.3): plain functions of tensors.

For a restored image z and its clean target x, both in [-1, 1], one t and one e per sample:

    z_t = sqrt(abar_t) z + sqrt(1 - abar_t) e,   x_t likewise                  (:func:`diffuse`)
    pixel = MSE(z, x)
    nat   = MSE(P(z_t, t), P(x_t, t))     P: eps, x0 or x_{t-1} implied by the UNet (:func:`prior_prediction`)
    sem   = MSE(h(z_t, t), h(x_t, t))     h: the UNet's middle_block output (h-space)
    total = pixel + gamma * (nat + lam * sem)                                    (:func:`diffloss`)

The x branch is a constant target; the z branch is differentiated through the frozen UNet. No input
validation here (``diffloss.criterion.checks`` and :class:`diffloss.DiffLoss` do it).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffloss.criterion.grad_scaling import GradScale, ScaleGradIntoUNet, UnscaleGradOutOfUNet, unet_backward_in_float16
from diffloss.prior.hspace import hspace_hook
from diffloss.prior.runtime import activation_checkpointing_mode

__all__ = ["TARGETS", "DiffLossOutput", "diffuse", "model_timesteps", "prior_prediction", "diffloss_terms",
           "diffloss"]

TARGETS = ("eps", "x0", "xprev")


class DiffLossOutput(NamedTuple):
    """Result of one DiffLoss evaluation: scalar tensors and the timesteps used.

    ``total`` is what you backpropagate; ``pixel``, ``nat``, ``sem`` are the unweighted terms (log them).
    ``t``: LongTensor [B].
    """

    total: torch.Tensor
    pixel: torch.Tensor
    nat: torch.Tensor
    sem: torch.Tensor
    t: torch.Tensor

    def scalars(self) -> dict[str, float]:
        """``{"total", "pixel", "nat", "sem"}`` as Python floats, for logging (synchronises CUDA)."""
        return {k: float(getattr(self, k).detach()) for k in ("total", "pixel", "nat", "sem")}


def _coef(arr: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    # Same arithmetic as guided-diffusion's _extract_into_tensor: float64 table, indexed, then float32.
    return torch.from_numpy(np.asarray(arr)).to(device=t.device)[t].float().view(-1, 1, 1, 1)


def diffuse(diffusion: Any, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; ``x0`` in [-1, 1] NCHW, ``t`` LongTensor [B]."""
    return _coef(diffusion.sqrt_alphas_cumprod, t) * x0 + _coef(diffusion.sqrt_one_minus_alphas_cumprod, t) * noise


def model_timesteps(diffusion: Any, t: torch.Tensor) -> torch.Tensor:
    """The timestep values the UNet sees for diffusion steps ``t``: guided-diffusion's
    ``_scale_timesteps`` and, for a respaced ``SpacedDiffusion``, its ``timestep_map`` (as its
    ``_WrappedModel`` does)."""
    timestep_map = getattr(diffusion, "timestep_map", None)
    if timestep_map is not None:
        mapped = torch.tensor(timestep_map, device=t.device, dtype=t.dtype)[t]
        if diffusion.rescale_timesteps:
            mapped = mapped.float() * (1000.0 / diffusion.original_num_steps)
        return mapped
    return diffusion._scale_timesteps(t)


def prior_prediction(
    diffusion: Any, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, target: str = "eps"
) -> torch.Tensor:
    """The quantity ``target`` ("eps" | "x0" | "xprev") implied by the UNet's output, float32.

    Handles learned-sigma outputs (the first C channels are the mean part) and all three of
    guided-diffusion's ``model_mean_type`` (EPSILON for ADM, START_X, PREVIOUS_X). ``x0`` is not clipped
    (clipping would cut the gradient); ``xprev`` is the posterior mean q(x_{t-1} | x_t, x0_pred).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid: {list(TARGETS)}")
    c = x_t.shape[1]
    out = model_output.float()
    if out.shape[1] == 2 * c:
        out = out[:, :c]
    elif out.shape[1] != c:
        raise ValueError(f"UNet output has {out.shape[1]} channels for {c}-channel input; expected {c} or {2 * c}")
    kind = diffusion.model_mean_type.name
    recip = _coef(diffusion.sqrt_recip_alphas_cumprod, t)
    recipm1 = _coef(diffusion.sqrt_recipm1_alphas_cumprod, t)
    coef1 = _coef(diffusion.posterior_mean_coef1, t)
    coef2 = _coef(diffusion.posterior_mean_coef2, t)
    if kind == "EPSILON":
        if target == "eps":
            return out
        x0 = recip * x_t - recipm1 * out
    elif kind == "START_X":
        x0 = out
    elif kind == "PREVIOUS_X":
        if target == "xprev":
            return out
        x0 = (out - coef2 * x_t) / coef1
    else:
        raise ValueError(f"unsupported model_mean_type {kind}")
    if target == "x0":
        return x0
    if target == "eps":
        return (recip * x_t - x0) / recipm1
    return coef1 * x0 + coef2 * x_t


def _weighted_mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return F.mse_loss(a, b)
    per_sample = (a - b).pow(2).flatten(1).mean(dim=1)
    return (weights.to(per_sample.dtype) * per_sample).mean()


def _double_kwargs(model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in model_kwargs.items()}



def diffloss_terms(
    model: nn.Module,
    diffusion: Any,
    restored: torch.Tensor,
    clean: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    target: str = "eps",
    weights: torch.Tensor | None = None,
    batch_branches: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
    on_grad_overflow: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pixel, nat, sem)`` scalar float32 tensors; no input validation (see :class:`DiffLoss`).

    Args:
        model, diffusion: a frozen guided-diffusion UNet and its GaussianDiffusion.
        restored: [0, 1] NCHW float, differentiable; clean: [0, 1] NCHW float, treated as a constant.
        t: LongTensor [B] of diffusion steps; noise: [B, C, H, W] standard normal, shared by both branches.
        target: "eps" | "x0" | "xprev" (see :func:`prior_prediction`).
        weights: optional per-sample weights [B] of ``nat`` and ``sem`` (mean of weight * per-sample MSE).
        batch_branches: one UNet call on the concatenated batch (the clean half detached) instead of a
            no-grad call for the clean branch plus a call for the restored branch. Same numbers.
        model_kwargs: extra UNet arguments, e.g. ``{"y": labels}`` for class-conditional priors.
        autocast_dtype: run the UNet calls (only them) under ``torch.autocast`` with this dtype
            (bfloat16/float16); the diffusion arithmetic and the MSEs stay float32. Whenever the UNet runs
            in float16 (this option, an outer fp16 autocast region or float16 weights), the gradient through
            it is scaled by a power of two and unscaled again (see ``diffloss.criterion.grad_scaling``): at the paper's
            weights it would otherwise underflow to 0. Values and the returned gradient are unchanged.
        on_grad_overflow: called (no arguments) in the backward pass when that scaled float16 gradient is not
            finite after unscaling (an overflow; a warning is logged too). The non-finite gradient is passed on,
            so the caller's gradient check can skip the step, as torch's GradScaler does.
    """
    device_type = restored.device.type
    _refuse_gd_checkpointing_under_cpu_autocast(model, device_type, autocast_dtype)
    z = restored.float() * 2 - 1
    x = clean.detach().float() * 2 - 1
    noise = noise.float()
    pixel = F.mse_loss(z, x)
    z_t = diffuse(diffusion, z, t, noise)
    x_t = diffuse(diffusion, x, t, noise)
    # fp16 UNet: scale the gradient through it (diffloss.criterion.grad_scaling); the z branch only, in both modes
    fp16 = z_t.requires_grad and unet_backward_in_float16(model, device_type, autocast_dtype)
    holder = GradScale(on_grad_overflow) if fp16 else None
    z_in = z_t if holder is None else UnscaleGradOutOfUNet.apply(holder, z_t)
    amp = (contextlib.nullcontext if autocast_dtype is None
           else lambda: torch.autocast(device_type, dtype=autocast_dtype))
    out_z, out_x, h_z, h_x = _unet_branches(model, z_in, x_t, model_timesteps(diffusion, t), dict(model_kwargs or {}),
                                            batch_branches, amp)
    if holder is not None:
        out_z, h_z = ScaleGradIntoUNet.apply(holder, out_z, h_z)
    pred_z = prior_prediction(diffusion, out_z, z_t, t, target)
    pred_x = prior_prediction(diffusion, out_x, x_t, t, target)
    nat = _weighted_mse(pred_z, pred_x, weights)
    sem = _weighted_mse(h_z, h_x.float(), weights)
    return pixel, nat, sem


def _refuse_gd_checkpointing_under_cpu_autocast(model: nn.Module, device_type: str,
                                                autocast_dtype: torch.dtype | None) -> None:
    if (
        device_type == "cpu"
        and (autocast_dtype is not None or torch.is_autocast_enabled("cpu"))
        and torch.is_grad_enabled()
        and activation_checkpointing_mode(model) == "guided-diffusion"
    ):
        raise ValueError(
            "guided-diffusion's own activation checkpointing (use_checkpoint) does not replay CPU autocast in "
            "the backward pass and fails there; use set_activation_checkpointing(model, impl='torch') "
            "(DiffLoss(checkpointing=True)) or run without autocast"
        )


def _unet_branches(model: nn.Module, z_in: torch.Tensor, x_t: torch.Tensor, ts: torch.Tensor,
                   model_kwargs: dict[str, Any], batch_branches: bool, amp) -> tuple[torch.Tensor, ...]:
    """``(out_z, out_x, h_z, h_x)``: the UNet's output and h-space for both branches, the x branch detached;
    ``out_z``, ``h_z`` float32. One call on the concatenated batch, or a no-grad call then a grad call."""
    n = z_in.shape[0]
    if batch_branches:
        with amp(), hspace_hook(model) as hs:
            out = model(torch.cat([z_in, x_t]), torch.cat([ts, ts]), **_double_kwargs(model_kwargs))
        out_z, out_x = out[:n], out[n:].detach()
        h_z, h_x = (None, None) if hs.h is None else (hs.h[:n], hs.h[n:].detach())
    else:
        with torch.no_grad(), amp(), hspace_hook(model) as hs:
            out_x = model(x_t, ts, **model_kwargs)
        h_x = hs.h
        with amp(), hspace_hook(model) as hs:
            out_z = model(z_in, ts, **model_kwargs)
        h_z = hs.h
    if h_z is None:
        raise RuntimeError("the UNet's middle_block did not run; cannot read h-space")
    return out_z.float(), out_x, h_z.float(), h_x


def diffloss(model: nn.Module, diffusion: Any, restored: torch.Tensor, clean: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor, *, gamma: float = 1e-3, lam: float = 1e-2, target: str = "eps",
             weights: torch.Tensor | None = None, batch_branches: bool = True,
             model_kwargs: Mapping[str, Any] | None = None, autocast_dtype: torch.dtype | None = None,
             on_grad_overflow: Callable[[], None] | None = None) -> DiffLossOutput:
    """The full criterion for given ``t`` and ``noise``: ``total = pixel + gamma * (nat + lam * sem)``; the
    other keywords are those of :func:`diffloss_terms`."""
    pixel, nat, sem = diffloss_terms(model, diffusion, restored, clean, t, noise, target=target, weights=weights,
                                     batch_branches=batch_branches, model_kwargs=model_kwargs,
                                     autocast_dtype=autocast_dtype, on_grad_overflow=on_grad_overflow)
    total = pixel + gamma * (nat + lam * sem)
    return DiffLossOutput(total, pixel, nat, sem, t)
