"""DiffLoss (Tan & Zhao 2024, Sec. 3.3): a frozen diffusion prior as a training criterion.

For a restored image z = g(y) and its clean target x, both mapped from [0, 1] to [-1, 1]:

    t ~ U{lo .. hi-1},  e ~ N(0, I)                (one t and one e per sample, shared by both branches)
    z_t = sqrt(abar_t) z + sqrt(1 - abar_t) e,   x_t likewise
    pixel = MSE(z, x)
    nat   = MSE(P(z_t, t), P(x_t, t))     P = predicted noise ("eps", default), predicted x_0 ("x0")
                                            or posterior mean of x_{t-1} ("xprev"): Table 4's ablation
    sem   = MSE(h(z_t, t), h(x_t, t))     h = output of the UNet's middle_block (h-space)
    total = pixel + gamma * (nat + lam * sem)

The x branch is a constant target (no gradient). The z branch is differentiated through the frozen
UNet down to ``restored``: gradients reach the restoration network, which the authors' public code
prevents by running both branches under ``torch.no_grad()``.

The math lives in plain functions (:func:`diffuse`, :func:`prior_prediction`, :func:`diffloss_terms`,
:func:`diffloss`); :class:`DiffLoss` holds the configuration and the random generator, and validates
its inputs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .hooks import hspace_hook
from .prior import (
    CHECKPOINT_IMPLS,
    activation_checkpointing_mode,
    compile_prior_,
    describe_valid_sizes,
    freeze_,
    set_activation_checkpointing,
    size_multiple,
)

log = logging.getLogger(__name__)

__all__ = [
    "TARGETS", "T_WEIGHTINGS", "DiffLossOutput", "DiffLoss", "diffloss", "diffloss_terms", "diffuse",
    "prior_prediction", "model_timesteps", "timestep_weight_table", "check_images", "AUTOCAST_DTYPES",
]

TARGETS = ("eps", "x0", "xprev")
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,  # fp32 = no autocast
}
RANGE_MARGIN = 0.25  # values outside [-0.25, 1.25] are "far outside [0, 1]": a [-1, 1] or [0, 255] mix-up


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


# ---------------------------------------------------------------------------------------------------
# Timestep weighting: name -> function(diffusion) -> np.ndarray[T] (normalised later over t_range)
# ---------------------------------------------------------------------------------------------------
def _weights_none(diffusion: Any) -> np.ndarray:
    return np.ones(diffusion.num_timesteps, dtype=np.float64)


def _weights_alpha_bar(diffusion: Any) -> np.ndarray:
    # signal fraction abar_t: trust the comparison more where the image dominates the noise
    return np.asarray(diffusion.alphas_cumprod, dtype=np.float64)


def _weights_min_snr(diffusion: Any, cap: float = 5.0) -> np.ndarray:
    # Min-SNR-5 (Hang et al. 2023) for noise prediction: min(SNR, 5) / SNR, i.e. 1 at high noise,
    # down-weighting the nearly clean steps where small input changes dominate eps differences.
    abar = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
    snr = abar / (1.0 - abar)
    return np.minimum(snr, cap) / snr


T_WEIGHTINGS: dict[str, Callable[[Any], np.ndarray]] = {
    "none": _weights_none,
    "alpha_bar": _weights_alpha_bar,
    "min_snr": _weights_min_snr,
}


def timestep_weight_table(
    diffusion: Any, scheme: str | Callable[[Any], Sequence[float]], t_range: tuple[int, int]
) -> np.ndarray:
    """Per-timestep weights [T] of ``nat`` and ``sem``, scaled so their mean over ``t_range`` is 1
    (so ``gamma`` keeps its meaning). ``scheme``: a :data:`T_WEIGHTINGS` name or ``fn(diffusion)``."""
    if isinstance(scheme, str):
        if scheme not in T_WEIGHTINGS:
            raise ValueError(f"unknown t_weighting {scheme!r}; valid: {sorted(T_WEIGHTINGS)} or a callable")
        table = T_WEIGHTINGS[scheme](diffusion)
    elif callable(scheme):
        table = np.asarray(scheme(diffusion), dtype=np.float64)
    else:
        raise TypeError(f"t_weighting must be a name or a callable, got {type(scheme).__name__}")
    table = np.asarray(table, dtype=np.float64)
    if table.shape != (diffusion.num_timesteps,) or not np.all(np.isfinite(table)) or np.any(table < 0):
        raise ValueError(
            f"t_weighting must give {diffusion.num_timesteps} finite non-negative weights, got shape "
            f"{table.shape} with min {np.nanmin(table) if table.size else 'n/a'}"
        )
    lo, hi = t_range
    mean = table[lo:hi].mean()
    if mean <= 0:
        raise ValueError(f"t_weighting is zero on the whole t_range {t_range}")
    return table / mean


# ---------------------------------------------------------------------------------------------------
# Functional core
# ---------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# Gradient scaling through a float16 UNet
# ---------------------------------------------------------------------------------------------------
# At the paper's weights the gradient reaching the UNet's output is gamma * 2 * (pred_z - pred_x) / N
# (N = B*C*H*W): ~1e-8 at 32 px, below float16's smallest subnormal (6e-8), so an fp16 backward turns it
# into exactly 0. The pair below works like AMP's loss scaling, inside the criterion: on the way into the
# UNet the gradients of its outputs (eps prediction and h-space, both float32 there) are multiplied by a
# power of two S that brings their largest magnitude to ~1; on the way out the gradient of the UNet's input
# is divided by the same S. Powers of two make both steps exact, so the value of ``total`` and the gradient
# the caller sees are unchanged; only the float16 arithmetic in between sees well-scaled numbers.
_GRAD_TARGET = 1.0  # largest |gradient| entering the UNet after scaling: ample headroom below 65504


class _GradScale:
    """The scale chosen by :class:`_ScaleGradIntoUNet` for one backward pass, read by :class:`_UnscaleGradOutOfUNet`."""

    __slots__ = ("scale",)

    def __init__(self) -> None:
        self.scale: torch.Tensor | None = None


def _power_of_two_scale(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    # No host sync: a zero, Inf or NaN maximum gives scale 1 (nothing to rescue, or nothing to protect).
    amax = torch.stack([g.detach().abs().amax().float() for g in grads]).amax()
    exponent = torch.floor(torch.log2(_GRAD_TARGET / amax))
    ok = torch.isfinite(exponent)
    return torch.where(ok, torch.exp2(torch.where(ok, exponent, 0.0).clamp(-100.0, 100.0)), 1.0)


class _ScaleGradIntoUNet(torch.autograd.Function):
    """Identity on the UNet's (float32) outputs; backward multiplies all their gradients by one power of two."""

    @staticmethod
    def forward(ctx, holder: _GradScale, *tensors: torch.Tensor):
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


class _UnscaleGradOutOfUNet(torch.autograd.Function):
    """Identity on the UNet's (float32) input; backward divides its gradient by the scale applied at the outputs."""

    @staticmethod
    def forward(ctx, holder: _GradScale, x: torch.Tensor) -> torch.Tensor:
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        scale = ctx.holder.scale
        return None, (grad if scale is None else grad / scale.to(grad.dtype))


def _unet_backward_in_float16(model: nn.Module, device_type: str, autocast_dtype: torch.dtype | None) -> bool:
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
            it is scaled by a power of two and unscaled again (see ``_ScaleGradIntoUNet``): at the paper's
            weights it would otherwise underflow to 0. Values and the returned gradient are unchanged.
    """
    model_kwargs = dict(model_kwargs or {})
    device_type = restored.device.type

    def amp():
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=autocast_dtype)

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
    z = restored.float() * 2 - 1
    x = clean.detach().float() * 2 - 1
    noise = noise.float()
    pixel = F.mse_loss(z, x)
    z_t = diffuse(diffusion, z, t, noise)
    x_t = diffuse(diffusion, x, t, noise)
    ts = model_timesteps(diffusion, t)
    n = z.shape[0]
    # fp16 UNet: scale the gradient through it (see _ScaleGradIntoUNet); the z branch only, in both modes
    holder = _GradScale() if z_t.requires_grad and _unet_backward_in_float16(model, device_type, autocast_dtype) else None
    z_in = z_t if holder is None else _UnscaleGradOutOfUNet.apply(holder, z_t)
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
    out_z, h_z = out_z.float(), h_z.float()
    if holder is not None:
        out_z, h_z = _ScaleGradIntoUNet.apply(holder, out_z, h_z)
    pred_z = prior_prediction(diffusion, out_z, z_t, t, target)
    pred_x = prior_prediction(diffusion, out_x, x_t, t, target)
    nat = _weighted_mse(pred_z, pred_x, weights)
    sem = _weighted_mse(h_z, h_x.float(), weights)
    return pixel, nat, sem


def diffloss(
    model: nn.Module,
    diffusion: Any,
    restored: torch.Tensor,
    clean: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    *,
    gamma: float = 1e-3,
    lam: float = 1e-2,
    target: str = "eps",
    weights: torch.Tensor | None = None,
    batch_branches: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> DiffLossOutput:
    """The full criterion for given ``t`` and ``noise``: ``total = pixel + gamma * (nat + lam * sem)``.
    Arguments as :func:`diffloss_terms`."""
    pixel, nat, sem = diffloss_terms(
        model, diffusion, restored, clean, t, noise, target=target, weights=weights,
        batch_branches=batch_branches, model_kwargs=model_kwargs, autocast_dtype=autocast_dtype,
    )
    total = pixel + gamma * (nat + lam * sem)
    return DiffLossOutput(total, pixel, nat, sem, t)


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device | None:
    for p in model.parameters():
        return p.device
    return None


def check_images(restored: torch.Tensor, clean: torch.Tensor, model: nn.Module, warn: bool = True) -> list[str]:
    """Validate DiffLoss inputs against the UNet: [0, 1] NCHW float tensors of equal shape, the UNet's
    channel count, a size it can take, finite values, its device. Raises TypeError/ValueError saying
    what was found. Values far outside [0, 1] (below -0.25 or above 1.25: a [-1, 1] or [0, 255] mix-up)
    are returned as notes (``["restored spans [-1, 1]"]``) and, if ``warn``, reported in one warning."""
    for name, x in (("restored", restored), ("clean", clean)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor ([0, 1] NCHW float), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"{name} must be a float tensor in [0, 1], got dtype {x.dtype} (uint8 images: x.float() / 255)"
            )
        if x.ndim != 4:
            raise ValueError(f"{name} must be NCHW (4-D), got shape {tuple(x.shape)}")
    if restored.shape != clean.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and clean {tuple(clean.shape)} must have the same shape")
    b, c, h, w = restored.shape
    if b == 0:
        raise ValueError("empty batch (B = 0)")
    if c != model.in_channels:
        raise ValueError(
            f"the prior takes {model.in_channels}-channel RGB images, got {c} channels (shape "
            f"{tuple(restored.shape)}); convert grey/RGBA images to RGB first"
        )
    m = size_multiple(model)
    if h % m or w % m:
        raise ValueError(f"image size {h}x{w} does not fit the prior: {describe_valid_sizes(model)}")
    device = _model_device(model)
    for name, x in (("restored", restored), ("clean", clean)):
        if device is not None and x.device != device:
            raise ValueError(f"{name} is on {x.device} but the prior is on {device}; move one (criterion.to(...))")
    bad: list[str] = []
    stats = torch.stack([torch.stack(torch.aminmax(x.detach().float())) for x in (restored, clean)]).tolist()
    for name, x, (lo, hi) in zip(("restored", "clean"), (restored, clean), stats):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            xd = x.detach()
            raise ValueError(
                f"{name} contains {int(torch.isnan(xd).sum())} NaN and {int(torch.isinf(xd).sum())} Inf values "
                "(restoration network diverged? check its learning rate and inputs)"
            )
        if lo < -RANGE_MARGIN or hi > 1 + RANGE_MARGIN:
            bad.append(f"{name} spans [{lo:.3g}, {hi:.3g}]")
    if bad and warn:
        warnings.warn(_range_message(bad), UserWarning, stacklevel=3)
    return bad


def _range_message(bad: Sequence[str]) -> str:
    return (
        "DiffLoss expects images in [0, 1]; " + ", ".join(bad)
        + ". [-1, 1] images: pass (x + 1) / 2; [0, 255]: pass x / 255. (Warned once per DiffLoss.)"
    )


# ---------------------------------------------------------------------------------------------------
# Module
# ---------------------------------------------------------------------------------------------------
def _autocast_dtype(autocast: str | torch.dtype | None) -> torch.dtype | None:
    if autocast is None or autocast is torch.float32:
        return None
    if isinstance(autocast, torch.dtype):
        if autocast not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be bfloat16 or float16, got {autocast}")
        return autocast
    if isinstance(autocast, str) and autocast in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[autocast]
    raise ValueError(f"autocast must be one of {list(AUTOCAST_DTYPES)}, a torch dtype or None, got {autocast!r}")


class DiffLoss(nn.Module):
    """DiffLoss as an ``nn.Module`` criterion (the frozen prior is a submodule, so ``.to()`` moves it).

    Args:
        model, diffusion: any pair from guided-diffusion's ``create_model_and_diffusion`` /
            :func:`diffloss.load_adm`; the UNet is frozen here (eval, no parameter gradients).
        gamma: weight of the diffusion terms (paper: 1e-3; good range 5e-4 .. 5e-3, Fig. 7).
        lam: weight of ``sem`` inside them (paper: 1e-2).
        target: "eps" (default, paper variant c), "x0" (variant a) or "xprev" (variant b).
        t_range: ``(lo, hi)``: t ~ U{lo, ..., hi - 1} (half-open like ``range``); None: all steps.
        t_weighting: a :data:`T_WEIGHTINGS` name ("none" = paper; "alpha_bar"; "min_snr") or
            ``fn(diffusion) -> weights[T]``; weights are rescaled to mean 1 over ``t_range``.
        batch_branches: run both branches in one UNet call (faster for small images/batches on GPU);
            False: a no-grad call for the clean image then one for the restored image (less memory).
        generator: ``torch.Generator`` (or int seed) drawing t and noise; None: a generator seeded 0.
            The global RNG is never used. A CPU generator works with CUDA inputs.

    Speed/memory options (keyword-only; they change ``model`` in place, like the freezing does):
        autocast: "bf16" | "fp16" | a torch dtype | None ("fp32"): run the UNet calls under
            ``torch.autocast`` (the diffusion arithmetic and the MSEs stay float32). An autocast region
            around the whole criterion works too. Under fp16 the gradient through the UNet is scaled
            internally (a power of two, divided out again), so it does not underflow at the paper's weights.
        channels_last: convert the UNet's conv weights and the UNet inputs to ``torch.channels_last``.
        checkpointing: False (leave the model as it is), True or "torch" (``torch.utils.checkpoint``
            around every ResBlock/AttentionBlock, works with frozen weights under any autocast), or
            "guided-diffusion" (its own ``use_checkpoint``; float32 or CUDA autocast only). See
            :func:`diffloss.prior.set_activation_checkpointing`.
        compile: False, True, or a dict of ``torch.compile`` kwargs: compile the UNet's blocks
            (:func:`diffloss.prior.compile_prior_`; the middle block stays eager for the h-space hook).
        validate: check inputs each call (costs one device sync); see :func:`check_images`. Values far
            outside [0, 1] give one warning per DiffLoss instance; NaN/Inf raise ValueError.

    ``forward(restored, clean, t=None, noise=None, y=None)``: ``restored``, ``clean`` are [0, 1] NCHW
    float on the prior's device (mapped to [-1, 1] inside); ``t`` LongTensor [B] and ``noise``
    [B, 3, H, W] override the random draw; ``y`` are class labels for class-conditional priors.
    Returns :class:`DiffLossOutput`.
    """

    def __init__(
        self,
        model: nn.Module,
        diffusion: Any,
        gamma: float = 1e-3,
        lam: float = 1e-2,
        target: str = "eps",
        t_range: tuple[int, int] | None = None,
        t_weighting: str | Callable[[Any], Sequence[float]] = "none",
        batch_branches: bool = True,
        generator: torch.Generator | int | None = None,
        *,
        autocast: str | torch.dtype | None = None,
        channels_last: bool = False,
        checkpointing: bool | str = False,
        compile: bool | Mapping[str, Any] = False,
        validate: bool = True,
    ) -> None:
        super().__init__()
        for attr in ("middle_block", "in_channels", "channel_mult", "image_size"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a guided-diffusion UNetModel (no `{attr}` on {type(model).__name__})")
        for attr in ("num_timesteps", "sqrt_alphas_cumprod", "model_mean_type"):
            if not hasattr(diffusion, attr):
                raise TypeError(f"diffusion must be a guided-diffusion GaussianDiffusion (no `{attr}`)")
        for name, value in (("gamma", gamma), ("lam", lam)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; valid: {list(TARGETS)}")
        n_steps = int(diffusion.num_timesteps)
        if t_range is None:
            t_range = (0, n_steps)
        try:
            lo, hi = (int(v) for v in t_range)
        except (TypeError, ValueError):
            raise ValueError(f"t_range must be (lo, hi) integers, got {t_range!r}") from None
        if not 0 <= lo < hi <= n_steps:
            raise ValueError(f"t_range must satisfy 0 <= lo < hi <= {n_steps} (half-open), got {t_range!r}")
        if isinstance(generator, bool) or not (generator is None or isinstance(generator, (int, torch.Generator))):
            raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
        if not isinstance(generator, torch.Generator):
            generator = torch.Generator().manual_seed(0 if generator is None else int(generator))
        autocast_dtype = _autocast_dtype(autocast)
        if checkpointing is True:
            checkpointing = "torch"
        if checkpointing is not False and checkpointing not in CHECKPOINT_IMPLS:
            raise ValueError(
                f"checkpointing must be False, True or one of {list(CHECKPOINT_IMPLS)}, got {checkpointing!r}"
            )
        if not isinstance(compile, (bool, Mapping)):
            raise TypeError(f"compile must be a bool or a dict of torch.compile kwargs, got {type(compile).__name__}")

        self.model = freeze_(model)
        self.diffusion = diffusion
        self.gamma = float(gamma)
        self.lam = float(lam)
        self.target = target
        self.t_range = (lo, hi)
        self.t_weighting = t_weighting
        self.batch_branches = bool(batch_branches)
        self.generator = generator
        self.validate = bool(validate)
        self.autocast_dtype = autocast_dtype
        self.channels_last = bool(channels_last)
        if checkpointing:
            set_activation_checkpointing(self.model, True, impl=checkpointing)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            compile_prior_(self.model, **(dict(compile) if isinstance(compile, Mapping) else {}))
        self._range_warned = False
        table = timestep_weight_table(diffusion, t_weighting, self.t_range)
        self._weight_table = None if np.all(table == 1.0) else table
        self._size_noted: set[tuple[int, int]] = set()

    def train(self, mode: bool = True) -> "DiffLoss":
        super().train(mode)
        self.model.eval()  # the prior stays frozen in eval mode
        return self

    def extra_repr(self) -> str:
        scheme = self.t_weighting if isinstance(self.t_weighting, str) else getattr(self.t_weighting, "__name__", "custom")
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]
        return (
            f"gamma={self.gamma:g}, lam={self.lam:g}, target={self.target!r}, t_range={self.t_range}, "
            f"t_weighting={scheme!r}, batch_branches={self.batch_branches}, autocast={amp!r}, "
            f"channels_last={self.channels_last}, checkpointing={activation_checkpointing_mode(self.model)!r}"
        )

    @property
    def num_timesteps(self) -> int:
        return int(self.diffusion.num_timesteps)

    def sample_timesteps(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """t ~ U{lo..hi-1}, LongTensor [batch_size] on ``device``, drawn from ``self.generator``."""
        lo, hi = self.t_range
        t = torch.randint(lo, hi, (batch_size,), generator=self.generator, device=self.generator.device)
        return t.to(device)

    def sample_noise(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """Standard normal float32 noise of ``shape`` on ``device``, drawn from ``self.generator``."""
        e = torch.randn(tuple(shape), generator=self.generator, device=self.generator.device, dtype=torch.float32)
        return e.to(device)

    def _check_t(self, t: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"t must be an integer tensor [B], got {t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= self.num_timesteps:
            raise ValueError(f"t must lie in [0, {self.num_timesteps - 1}], got values in [{lo}, {hi}]")
        return t.to(device=device, dtype=torch.long)

    def _note_size(self, h: int, w: int) -> None:
        s = self.model.image_size
        if (h, w) != (s, s) and (h, w) not in self._size_noted:
            self._size_noted.add((h, w))
            log.warning(
                "DiffLoss on %dx%d images with a prior trained at %dx%d: it runs, but the prior's noise and "
                "h-space statistics are off-distribution; train on %dx%d crops for the paper's setting",
                h, w, s, s, s, s,
            )

    def forward(
        self,
        restored: torch.Tensor,
        clean: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> DiffLossOutput:
        if self.validate:
            bad = check_images(restored, clean, self.model, warn=False)
            if bad and not self._range_warned:
                self._range_warned = True
                warnings.warn(_range_message(bad), UserWarning, stacklevel=4)  # 4: the caller of crit(...)
            self._note_size(*restored.shape[-2:])
        batch, device = restored.shape[0], restored.device
        if t is None:
            t = self.sample_timesteps(batch, device)
        else:
            t = self._check_t(t, batch, device)
        if noise is None:
            noise = self.sample_noise(restored.shape, device)
        elif not isinstance(noise, torch.Tensor) or noise.shape != restored.shape:
            raise ValueError(
                f"noise must be a tensor of the image shape {tuple(restored.shape)}, got "
                f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}"
            )
        else:
            noise = noise.to(device)
        if self.channels_last:
            restored, clean, noise = (v.contiguous(memory_format=torch.channels_last) for v in (restored, clean, noise))
        model_kwargs = {}
        if getattr(self.model, "num_classes", None) is not None:
            if y is None:
                raise ValueError("this prior is class-conditional: pass class labels y (LongTensor [B])")
            model_kwargs["y"] = y.to(device)
        elif y is not None:
            raise ValueError("y (class labels) given but the prior is unconditional")
        weights = None
        if self._weight_table is not None:
            weights = torch.from_numpy(self._weight_table).to(device)[t].float()
        return diffloss(
            self.model, self.diffusion, restored, clean, t, noise, gamma=self.gamma, lam=self.lam,
            target=self.target, weights=weights, batch_branches=self.batch_branches, model_kwargs=model_kwargs,
            autocast_dtype=self.autocast_dtype,
        )
