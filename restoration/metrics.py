"""Image metrics on ``[0, 1] NCHW float`` batches, data range 1: the toolkit's one PSNR (torchmetrics'
functional implementation) and SSIM. `analysis.quality` and the training loop's validation use these;
`corruptions.preview` keeps a NumPy PSNR of its own because the corruptions package stays torch-free."""
from __future__ import annotations

import torch

__all__ = ["psnr", "psnr_ssim"]


def _check_shapes(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"pred and target must be NCHW of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, ``10 log10(1 / MSE)``, computed in float64. -> ``[N]`` float32."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_shapes(pred, target)
    return peak_signal_noise_ratio(pred.double(), target.double(), data_range=1.0, reduction="none",
                                   dim=(1, 2, 3)).reshape(-1).float()


def psnr_ssim(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB, `psnr`) and SSIM (Gaussian 11x11, sigma 1.5). Returns two ``[N]`` tensors."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_shapes(pred, target)
    ssim = structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0, reduction="none")
    return psnr(pred, target), ssim.reshape(-1)
