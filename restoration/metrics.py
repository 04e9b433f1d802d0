"""Image metrics on ``[0, 1] NCHW float`` batches, data range 1, per image: the toolkit's one PSNR and one
SSIM. `analysis.quality` and the training loop's validation both use these, so a validation score and a
report score of the same image agree; `corruptions.preview` keeps a NumPy PSNR of its own because the
corruptions package stays torch-free."""
from __future__ import annotations

import torch

__all__ = ["check_pair", "psnr", "ssim", "psnr_ssim"]


def check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """TypeError/ValueError (quoting what was seen) unless both are ``[0, 1] NCHW float`` of one shape."""
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            raise TypeError(f"{name} must be a [0, 1] NCHW float tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    lo, hi = float(torch.minimum(pred.min(), target.min())), float(torch.maximum(pred.max(), target.max()))
    if lo < 0 or hi > 1:
        raise ValueError(f"images must be in [0, 1], found values in [{lo:.4g}, {hi:.4g}] (uint8 images: x / 255)")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, ``10 log10(1 / MSE)`` (torchmetrics' functional implementation, data range 1, in
    float64) of ``[0, 1] NCHW float`` batches. -> ``[N]`` float32; identical images give ``inf``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    check_pair(pred, target)
    return peak_signal_noise_ratio(pred.double(), target.double(), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3)).reshape(-1).float()


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> list[float]:
    """torchmetrics' 1-D SSIM window (11 taps, sigma 1.5, normalised; `torchmetrics...utils._gaussian`) as floats."""
    dist = torch.arange(start=-5.0, end=6.0, step=1, dtype=dtype, device=device)
    gauss = torch.exp(-torch.pow(dist / 1.5, 2) / 2)
    return (gauss / gauss.sum()).tolist()


def _gaussian_filter_valid(x: torch.Tensor, window: list[float]) -> torch.Tensor:
    """'Valid' 2-D filtering of ``x [..., H+10, W+10]`` with the separable window ``outer(window, window)``
    -> ``[..., H, W]``: 22 multiply-adds per pixel instead of the 121 of torchmetrics' dense depthwise conv2d."""
    k = len(window)
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = x[..., :, 0:w] * window[0]
    for i in range(1, k):
        rows.add_(x[..., :, i:i + w], alpha=window[i])
    out = rows[..., 0:h, :] * window[0]
    for i in range(1, k):
        out.add_(rows[..., i:i + h, :], alpha=window[i])
    return out


def _ssim_one(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of one ``[1, C, H, W]`` pair in float64 -> ``[1]`` (torchmetrics' formula, see `ssim`)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    p = torch.nn.functional.pad(pred.double(), (5, 5, 5, 5), mode="reflect")
    t = torch.nn.functional.pad(target.double(), (5, 5, 5, 5), mode="reflect")
    mu_p, mu_t, e_pp, e_tt, e_pt = _gaussian_filter_valid(torch.cat((p, t, p * p, t * t, p * t)),
                                                          _gaussian_window(p.dtype, p.device)).split(1)
    mu_pp, mu_tt, mu_pt = mu_p.pow(2), mu_t.pow(2), mu_p * mu_t
    sigma_pp = torch.clamp(e_pp - mu_pp, min=0.0)  # variances are non-negative (rounding can make them < 0)
    sigma_tt = torch.clamp(e_tt - mu_tt, min=0.0)
    upper = 2 * (e_pt - mu_pt) + c2
    lower = (sigma_pp + sigma_tt) + c2
    return (((2 * mu_pt + c1) * upper) / ((mu_pp + mu_tt + c1) * lower)).mean().reshape(1)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, data range 1) of
    ``[0, 1] NCHW float`` batches (H, W >= 6). -> ``[N]`` float32.

    torchmetrics' ``structural_similarity_index_measure(..., data_range=1.0, reduction="none")`` computed in
    float64 (reflect padding, the same window and formula; the SSIM map averaged over the whole image), with
    the window applied as two 1-D passes. Why not torchmetrics itself (benchmarks/quality_throughput.py,
    docs/restoration.md): in float32 it is 1.3-1.7x slower on CPU and off by ~1e-5 on smooth images (its
    E[x^2] - mu^2 cancels in float32); in float64 it is about 20x slower. Images are scored one at a time (a batch of large images
    outgrows the CPU caches and runs slower); the values do not depend on the batching."""
    check_pair(pred, target)
    if min(pred.shape[-2:]) < 6:
        raise ValueError(f"SSIM needs images of at least 6x6 pixels (11x11 window), got {pred.shape[-1]}x{pred.shape[-2]}")
    return torch.cat([_ssim_one(pred[i:i + 1], target[i:i + 1]) for i in range(pred.shape[0])]).float()


def psnr_ssim(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB, `psnr`) and SSIM (`ssim`) of ``[0, 1] NCHW float`` batches. -> two ``[N]`` tensors."""
    return psnr(pred, target), ssim(pred, target)
