"""PSNR and SSIM of ``[0, 1] NCHW float`` batches, per image (the functional core of `analysis.quality`)."""
from __future__ import annotations

import torch

from restoration.metrics import psnr as _psnr

__all__ = ["psnr", "ssim", "check_pair"]


def check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """TypeError/ValueError (quoting what was seen) unless both are ``[0, 1] NCHW float`` of one shape."""
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
            raise TypeError(f"{name} must be a [0, 1] NCHW float tensor with 3 channels, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    lo, hi = float(torch.minimum(pred.min(), target.min())), float(torch.maximum(pred.max(), target.max()))
    if lo < 0 or hi > 1:
        raise ValueError(f"images must be in [0, 1], found values in [{lo:.4g}, {hi:.4g}] (uint8 images: x / 255)")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``[0, 1] NCHW float`` batches (`restoration.metrics.psnr`, after the range check)."""
    check_pair(pred, target)
    return _psnr(pred, target)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> list[float]:
    """torchmetrics' 1-D SSIM window (11 taps, sigma 1.5, normalised; `torchmetrics...utils._gaussian`) as floats."""
    dist = torch.arange(start=-5.0, end=6.0, step=1, dtype=dtype, device=device)
    gauss = torch.exp(-torch.pow(dist / 1.5, 2) / 2)
    return (gauss / gauss.sum()).tolist()


def _gaussian_filter_valid(x: torch.Tensor, window: list[float]) -> torch.Tensor:
    """'Valid' 2-D filtering of ``x [..., H+10, W+10]`` with the separable window ``outer(window, window)``
    -> ``[..., H, W]``: 22 multiply-adds per pixel instead of the 121 of torchmetrics' dense depthwise conv2d,
    which on CPU in float64 builds a 121 x H*W im2col buffer per plane (most of its time)."""
    k = len(window)
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = x[..., :, 0:w] * window[0]
    for i in range(1, k):
        rows.add_(x[..., :, i:i + w], alpha=window[i])
    out = rows[..., 0:h, :] * window[0]
    for i in range(1, k):
        out.add_(rows[..., i:i + h, :], alpha=window[i])
    return out


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1) of
    ``[0, 1] NCHW float`` batches (H, W >= 6). -> ``[N]``.

    The computation of torchmetrics' ``structural_similarity_index_measure(..., data_range=1.0, reduction="none")``
    in float64 (reflect padding, the same window, the same formula), with the window applied separably; equal to
    torchmetrics' values (tests pin it) and independent of how images are batched."""
    check_pair(pred, target)
    if min(pred.shape[-2:]) < 6:
        raise ValueError(f"SSIM needs images of at least 6x6 pixels (11x11 window), got {pred.shape[-1]}x{pred.shape[-2]}")
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    p = torch.nn.functional.pad(pred.double(), (5, 5, 5, 5), mode="reflect")
    t = torch.nn.functional.pad(target.double(), (5, 5, 5, 5), mode="reflect")
    mu_p, mu_t, e_pp, e_tt, e_pt = _gaussian_filter_valid(torch.cat((p, t, p * p, t * t, p * t)),
                                                          _gaussian_window(p.dtype, p.device)).split(p.shape[0])
    mu_pp, mu_tt, mu_pt = mu_p.pow(2), mu_t.pow(2), mu_p * mu_t
    sigma_pp = torch.clamp(e_pp - mu_pp, min=0.0)  # variances are non-negative (rounding can make them < 0)
    sigma_tt = torch.clamp(e_tt - mu_tt, min=0.0)
    upper = 2 * (e_pt - mu_pt) + c2
    lower = (sigma_pp + sigma_tt) + c2
    full = ((2 * mu_pt + c1) * upper) / ((mu_pp + mu_tt + c1) * lower)
    return full.reshape(full.shape[0], -1).mean(-1).float()
