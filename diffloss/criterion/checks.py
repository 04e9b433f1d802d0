"""Input and option checks of DiffLoss: what it takes, with errors that say what was found.

Images are ``[0, 1] NCHW float`` on the prior's device, of a size the UNet takes; NaN/Inf raise, values far
outside [0, 1] (a [-1, 1] or [0, 255] mix-up) are reported as notes for one warning. The option parsers turn
``DiffLoss(...)`` arguments into the values the functional core takes.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch
from torch import nn

from diffloss.criterion.functional import TARGETS
from diffloss.prior.runtime import CHECKPOINT_IMPLS, describe_valid_sizes, size_multiple

__all__ = ["AUTOCAST_DTYPES", "RANGE_MARGIN", "check_images", "range_message", "parse_autocast",
           "check_prior_pair", "check_weights", "check_target", "parse_t_range", "make_generator",
           "parse_checkpointing", "check_timesteps", "check_noise", "class_label_kwargs"]

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,  # fp32 = no autocast
}
RANGE_MARGIN = 0.25  # values outside [-0.25, 1.25] are "far outside [0, 1]": a [-1, 1] or [0, 255] mix-up


# ---------------------------------------------------------------------------------------------------
# Images
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
    pair = (("restored", restored), ("clean", clean))
    for name, x in pair:
        _check_tensor(name, x)
    if restored.shape != clean.shape:
        raise ValueError(f"restored {tuple(restored.shape)} and clean {tuple(clean.shape)} must have the same shape")
    _check_fits_prior(restored.shape, model)
    device = _model_device(model)
    for name, x in pair:
        if device is not None and x.device != device:
            raise ValueError(f"{name} is on {x.device} but the prior is on {device}; move one (criterion.to(...))")
    bad = _range_notes(pair)
    if bad and warn:
        warnings.warn(range_message(bad), UserWarning, stacklevel=3)
    return bad


def _check_tensor(name: str, x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor ([0, 1] NCHW float), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a float tensor in [0, 1], got dtype {x.dtype} (uint8 images: x.float() / 255)"
        )
    if x.ndim != 4:
        raise ValueError(f"{name} must be NCHW (4-D), got shape {tuple(x.shape)}")


def _check_fits_prior(shape: torch.Size, model: nn.Module) -> None:
    b, c, h, w = shape
    if b == 0:
        raise ValueError("empty batch (B = 0)")
    if c != model.in_channels:
        raise ValueError(
            f"the prior takes {model.in_channels}-channel RGB images, got {c} channels (shape "
            f"{tuple(shape)}); convert grey/RGBA images to RGB first"
        )
    m = size_multiple(model)
    if h % m or w % m:
        raise ValueError(f"image size {h}x{w} does not fit the prior: {describe_valid_sizes(model)}")


def _range_notes(pair: Sequence[tuple[str, torch.Tensor]]) -> list[str]:
    # one device sync for both tensors' min and max
    bad: list[str] = []
    stats = torch.stack([torch.stack(torch.aminmax(x.detach().float())) for _, x in pair]).tolist()
    for (name, x), (lo, hi) in zip(pair, stats):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            xd = x.detach()
            raise ValueError(
                f"{name} contains {int(torch.isnan(xd).sum())} NaN and {int(torch.isinf(xd).sum())} Inf values "
                "(restoration network diverged? check its learning rate and inputs)"
            )
        if lo < -RANGE_MARGIN or hi > 1 + RANGE_MARGIN:
            bad.append(f"{name} spans [{lo:.3g}, {hi:.3g}]")
    return bad


def range_message(bad: Sequence[str]) -> str:
    """The one warning about images outside [0, 1] (``bad``: the notes of `check_images`)."""
    return (
        "DiffLoss expects images in [0, 1]; " + ", ".join(bad)
        + ". [-1, 1] images: pass (x + 1) / 2; [0, 255]: pass x / 255. (Warned once per DiffLoss.)"
    )


# ---------------------------------------------------------------------------------------------------
# Per-call arguments
# ---------------------------------------------------------------------------------------------------
def check_timesteps(t: Any, batch: int, num_timesteps: int, device: torch.device) -> torch.Tensor:
    """``t``: an integer tensor [B] in [0, num_timesteps - 1]; returned as a LongTensor on ``device``."""
    if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"t must be an integer tensor [B], got {t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= num_timesteps:
        raise ValueError(f"t must lie in [0, {num_timesteps - 1}], got values in [{lo}, {hi}]")
    return t.to(device=device, dtype=torch.long)


def check_noise(noise: Any, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """``noise``: a tensor of the image shape; returned on ``device``."""
    if not isinstance(noise, torch.Tensor) or noise.shape != shape:
        raise ValueError(
            f"noise must be a tensor of the image shape {tuple(shape)}, got "
            f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}"
        )
    return noise.to(device)


def class_label_kwargs(model: nn.Module, y: torch.Tensor | None, device: torch.device) -> dict[str, Any]:
    """The UNet's extra arguments: ``{"y": labels}`` for a class-conditional prior (required there), else {}."""
    if getattr(model, "num_classes", None) is not None:
        if y is None:
            raise ValueError("this prior is class-conditional: pass class labels y (LongTensor [B])")
        return {"y": y.to(device)}
    if y is not None:
        raise ValueError("y (class labels) given but the prior is unconditional")
    return {}


# ---------------------------------------------------------------------------------------------------
# DiffLoss options
# ---------------------------------------------------------------------------------------------------
def check_prior_pair(model: Any, diffusion: Any) -> None:
    """TypeError unless ``model`` looks like a guided-diffusion UNetModel and ``diffusion`` its GaussianDiffusion."""
    for attr in ("middle_block", "in_channels", "channel_mult", "image_size"):
        if not hasattr(model, attr):
            raise TypeError(f"model must be a guided-diffusion UNetModel (no `{attr}` on {type(model).__name__})")
    for attr in ("num_timesteps", "sqrt_alphas_cumprod", "model_mean_type"):
        if not hasattr(diffusion, attr):
            raise TypeError(f"diffusion must be a guided-diffusion GaussianDiffusion (no `{attr}`)")


def check_weights(**weights: Any) -> None:
    """Each weight (``gamma=..., lam=...``) a finite number >= 0."""
    for name, value in weights.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid: {list(TARGETS)}")
    return target


def parse_t_range(t_range: Any, num_timesteps: int) -> tuple[int, int]:
    """``(lo, hi)`` with 0 <= lo < hi <= num_timesteps (half-open); None: all steps."""
    if t_range is None:
        t_range = (0, num_timesteps)
    try:
        lo, hi = (int(v) for v in t_range)
    except (TypeError, ValueError):
        raise ValueError(f"t_range must be (lo, hi) integers, got {t_range!r}") from None
    if not 0 <= lo < hi <= num_timesteps:
        raise ValueError(f"t_range must satisfy 0 <= lo < hi <= {num_timesteps} (half-open), got {t_range!r}")
    return lo, hi


def make_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A ``torch.Generator`` as given, seeded with an int, or seeded 0 for None (never the global RNG)."""
    if isinstance(generator, bool) or not (generator is None or isinstance(generator, (int, torch.Generator))):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(0 if generator is None else int(generator))


def parse_autocast(autocast: str | torch.dtype | None) -> torch.dtype | None:
    """``"fp32"``/None/float32 -> None (no autocast); ``"bf16"``, ``"fp16"`` or the dtype -> the dtype."""
    if autocast is None or autocast is torch.float32:
        return None
    if isinstance(autocast, torch.dtype):
        if autocast not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be bfloat16 or float16, got {autocast}")
        return autocast
    if isinstance(autocast, str) and autocast in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[autocast]
    raise ValueError(f"autocast must be one of {list(AUTOCAST_DTYPES)}, a torch dtype or None, got {autocast!r}")


def parse_checkpointing(checkpointing: bool | str) -> str | bool:
    """False, or the `set_activation_checkpointing` impl (True means "torch")."""
    if checkpointing is True:
        return "torch"
    if checkpointing is not False and checkpointing not in CHECKPOINT_IMPLS:
        raise ValueError(
            f"checkpointing must be False, True or one of {list(CHECKPOINT_IMPLS)}, got {checkpointing!r}"
        )
    return checkpointing
