"""Closed-form denoisers to measure a trained prior against (convention 18: the strongest simple baseline).

Each baseline is built from the prior's diffusion (its noise schedule) and clean ``[-1, 1] NCHW`` training
images, and is called like the UNet: ``baseline(x_t, t)`` (``x_t`` ``[-1, 1]``-scaled ``[B, C, H, W]`` at
diffusion steps ``t``, LongTensor [B] of the full process) returns the predicted noise ``[B, C, H, W]``
float32, followed by C zero channels where the diffusion learns sigma (as the UNet's output), so the samplers
of ``diffloss.prior.sampling`` run it as they run the UNet; ``baseline.x0(x_t, t)`` is the clean-image
estimate it implies (unclipped). With ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``
the two are tied by ``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)``, so a better x0 is a lower noise error.

- `PredictZero`: eps = 0, so x0 = x_t / sqrt(abar) (the noise error is exactly E[eps^2] = 1);
- `MeanImage`: x0 = the per-pixel mean of the training images, whatever x_t is;
- `PixelWiener`: the MMSE estimate under a Gaussian prior with the training images' per-pixel mean and
  per-pixel variance (independent pixels);
- `StationaryWiener`: the MMSE estimate under a Gaussian prior with the per-pixel mean and a translation-
  invariant covariance, i.e. the classical Fourier-domain Wiener filter: per spatial frequency, the 3 x 3
  colour cross-spectrum of the training images' deviations from the mean (a circulant covariance: a
  12,288 x 12,288 sample covariance from a few dozen images has rank below their number, the circulant one
  is estimated from every position of every image);
- `GaussianBlur`: x0 = Gaussian blur of x_t / sqrt(abar), one sigma per timestep chosen on the training
  images (`fit_blur`).

The two Wiener filters are the exact posterior means E[x0 | x_t] under their Gaussian priors: no linear
denoiser with those second-order statistics does better in mean squared error.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["ClosedFormDenoiser", "PredictZero", "MeanImage", "PixelWiener", "StationaryWiener", "GaussianBlur",
           "gaussian_blur", "fit_blur", "one_shot_x0", "BLUR_SIGMAS"]

#: Candidate blur widths (pixels; 0 = no blur) that `fit_blur` chooses from: steps of 1/4 px up to 4 px,
#: then wider steps up to 64 px (where a 64 px image is blurred to nearly its mean colour).
BLUR_SIGMAS = tuple([i / 4 for i in range(17)] + [4.5 + i / 2 for i in range(24)] + [18.0, 20.0, 24.0, 32.0, 48.0, 64.0])


def one_shot_x0(model: Any, diffusion: Any, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean image any noise predictor (a UNet or a baseline here) implies from ``x_t`` in one call:
    ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)``, clipped to [-1, 1] as the DDIM sampler clips it. ``x_t``
    ``[-1, 1]``-scaled NCHW, ``t`` LongTensor [B] of the full process; returns ``[-1, 1] NCHW`` float32."""
    abar = torch.as_tensor(np.asarray(diffusion.alphas_cumprod, dtype=np.float64))[t.cpu()].view(-1, 1, 1, 1)
    with torch.no_grad():
        eps = model(x_t, t)[:, : x_t.shape[1]].double().cpu()
    x0 = (x_t.double().cpu() - (1 - abar).sqrt() * eps) / abar.sqrt()
    return x0.clamp(-1, 1).float().to(x_t.device)


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float [-1, 1] NCHW tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: at least 2 training images are needed to fit a variance, got {x.shape[0]}")


class ClosedFormDenoiser:
    """A noise predictor defined by an x0 estimate, for ``diffusion`` (a guided-diffusion GaussianDiffusion of
    the full process: its ``alphas_cumprod`` and whether it learns sigma)."""

    def __init__(self, diffusion: Any) -> None:
        self.abar = torch.as_tensor(np.asarray(diffusion.alphas_cumprod, dtype=np.float64))
        self.learn_sigma = diffusion.model_var_type.name in ("LEARNED", "LEARNED_RANGE")

    def _coefs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.abar[t.cpu().long()].view(-1, 1, 1, 1)
        return a.sqrt(), (1 - a).sqrt()

    def x0(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean-image estimate, ``[-1, 1]``-scaled (unclipped) ``[B, C, H, W]`` float32."""
        raise NotImplementedError

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The predicted noise ``[B, C, H, W]`` float32: ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)``."""
        sa, s1 = self._coefs(t)
        return ((x_t.double().cpu() - sa * self.x0(x_t, t).double().cpu()) / s1).float().to(x_t.device)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **_: Any) -> torch.Tensor:
        eps = self.eps(x_t, t)
        return torch.cat([eps, torch.zeros_like(eps)], 1) if self.learn_sigma else eps


class PredictZero(ClosedFormDenoiser):
    """eps = 0: the trivial noise predictor (its noise error is E[eps^2] = 1)."""

    def x0(self, x_t, t):
        sa, _ = self._coefs(t)
        return (x_t.double().cpu() / sa).float().to(x_t.device)

    def eps(self, x_t, t):
        return torch.zeros_like(x_t)


class MeanImage(ClosedFormDenoiser):
    """x0 = the per-pixel mean of the training images ``x_train`` (``[-1, 1] NCHW``)."""

    def __init__(self, diffusion: Any, x_train: torch.Tensor) -> None:
        super().__init__(diffusion)
        _check_images(x_train, "x_train")
        self.mean = x_train.double().mean(0)

    def x0(self, x_t, t):
        return self.mean.expand(x_t.shape).float().to(x_t.device)


class PixelWiener(ClosedFormDenoiser):
    """E[x0 | x_t] under x0 ~ N(mean, diag(var)), both per pixel and channel of ``x_train``:
    ``x0 = mean + sqrt(abar) var / (abar var + 1 - abar) * (x_t - sqrt(abar) mean)``."""

    def __init__(self, diffusion: Any, x_train: torch.Tensor) -> None:
        super().__init__(diffusion)
        _check_images(x_train, "x_train")
        self.mean = x_train.double().mean(0)
        self.var = x_train.double().var(0, unbiased=True)

    def x0(self, x_t, t):
        sa, _ = self._coefs(t)
        a = sa**2
        gain = sa * self.var / (a * self.var + 1 - a)
        return (self.mean + gain * (x_t.double().cpu() - sa * self.mean)).float().to(x_t.device)


class StationaryWiener(ClosedFormDenoiser):
    """E[x0 | x_t] under x0 ~ N(mean, Sigma) with the per-pixel ``mean`` of ``x_train`` and a circulant
    (translation-invariant) ``Sigma``: per 2-D frequency k, the 3 x 3 colour cross-spectrum P_k of the
    training images' deviations from the mean (orthonormal FFT, so white noise stays white). Per frequency
    ``X0_k = sqrt(abar) P_k (abar P_k + (1 - abar) I)^-1 Y_k`` with ``Y = FFT(x_t - sqrt(abar) mean)``."""

    def __init__(self, diffusion: Any, x_train: torch.Tensor) -> None:
        super().__init__(diffusion)
        _check_images(x_train, "x_train")
        self.mean = x_train.double().mean(0)
        f = torch.fft.fft2(x_train.double() - self.mean, norm="ortho")  # N, C, H, W
        self.spectrum = torch.einsum("nchw,ndhw->hwcd", f, f.conj()) / (x_train.shape[0] - 1)  # H, W, C, C

    def x0(self, x_t, t):
        sa, _ = self._coefs(t)
        a = (sa**2).view(-1, 1, 1, 1, 1)
        c = x_t.shape[1]
        y = torch.fft.fft2(x_t.double().cpu() - sa * self.mean, norm="ortho").permute(0, 2, 3, 1)[..., None]
        p = self.spectrum[None]
        system = a * p + (1 - a) * torch.eye(c, dtype=p.dtype)
        x0_f = sa.view(-1, 1, 1, 1, 1) * (p @ torch.linalg.solve(system, y))
        dev = torch.fft.ifft2(x0_f[..., 0].permute(0, 3, 1, 2), norm="ortho").real
        return (self.mean + dev).float().to(x_t.device)


def _gaussian_transfer(h: int, w: int, sigma: float) -> torch.Tensor:
    """The Gaussian's frequency response on the 2h x 2w grid of the symmetric extension (float64)."""
    fy = torch.fft.fftfreq(2 * h, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(2 * w, dtype=torch.float64).view(1, -1)
    return torch.exp(-2 * np.pi**2 * sigma**2 * (fy**2 + fx**2))


def _symmetric_rfft(x: torch.Tensor) -> torch.Tensor:
    """rFFT of ``NCHW`` ``x`` mirrored to 2H x 2W (half-sample symmetric), so a product with a transfer
    function is a convolution with mirrored borders, for any kernel width."""
    x = torch.cat([x, x.flip(-2)], -2)
    return torch.fft.rfft2(torch.cat([x, x.flip(-1)], -1))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``NCHW`` float ``x`` with standard deviation ``sigma`` pixels, borders mirrored
    (half-sample symmetric; computed in the Fourier domain, so any width works); sigma 0 returns ``x``."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    out = torch.fft.irfft2(_symmetric_rfft(x.double()) * _gaussian_transfer(h, w, sigma).to(x.device), s=(2 * h, 2 * w))
    return out[..., :h, :w].to(x.dtype)


class GaussianBlur(ClosedFormDenoiser):
    """x0 = Gaussian blur of x_t / sqrt(abar_t) with width ``sigmas[j]`` for the fitted timestep
    ``timesteps[j]`` nearest to t (`fit_blur` chooses them)."""

    def __init__(self, diffusion: Any, timesteps: Sequence[int], sigmas: Sequence[float]) -> None:
        super().__init__(diffusion)
        if len(timesteps) != len(sigmas) or not len(timesteps):
            raise ValueError(f"timesteps and sigmas must be non-empty and of one length, got {len(timesteps)} "
                             f"and {len(sigmas)}")
        self.timesteps = torch.as_tensor(list(timesteps), dtype=torch.long)
        self.sigmas = [float(s) for s in sigmas]

    def sigma_at(self, t: int) -> float:
        """The blur width used at diffusion step ``t`` (that of the nearest fitted timestep)."""
        return self.sigmas[int((self.timesteps - int(t)).abs().argmin())]

    def x0(self, x_t, t):
        sa, _ = self._coefs(t)
        scaled = x_t.double().cpu() / sa
        widths = [self.sigma_at(v) for v in t.tolist()]
        out = torch.empty_like(scaled)
        for s in sorted(set(widths)):
            rows = [i for i, w in enumerate(widths) if w == s]
            out[rows] = gaussian_blur(scaled[rows], s)
        return out.float().to(x_t.device)


def fit_blur(diffusion: Any, x_train: torch.Tensor, timesteps: Sequence[int], generator: torch.Generator,
             sigmas: Sequence[float] = BLUR_SIGMAS) -> GaussianBlur:
    """The `GaussianBlur` whose width at each of ``timesteps`` minimises the mean squared error of x0 on the
    training images ``x_train`` (``[-1, 1] NCHW``), noised to that timestep with noise from ``generator``
    (one draw per timestep). The same width minimises the noise error and maximises the PSNR of x0 there."""
    _check_images(x_train, "x_train")
    abar = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
    x0 = x_train.double().cpu()
    h, w = x0.shape[-2:]
    transfers = [_gaussian_transfer(h, w, s) for s in sigmas]
    # rfft weights: the columns that stand for a conjugate pair count twice (Parseval)
    weight = torch.full((w + 1,), 2.0, dtype=torch.float64)
    weight[0] = weight[-1] = 1.0
    target = _symmetric_rfft(x0)
    chosen = []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        spectrum = _symmetric_rfft(x0 + np.sqrt((1 - abar[t]) / abar[t]) * noise)  # of x_t / sqrt(abar)
        # The blurred mirror image is mirror-symmetric, like the target's, so its squared error is 4 times the
        # image's and can be summed over frequencies: sum_f weight |T_f S_f - X_f|^2 over images and channels
        # = sum_f weight (T_f^2 |S_f|^2 - 2 T_f Re(S_f conj X_f) + |X_f|^2), T real.
        power = (spectrum.abs() ** 2).sum((0, 1)) * weight
        cross = (spectrum * target.conj()).real.sum((0, 1)) * weight
        errors = [float((tf**2 * power - 2 * tf * cross).sum()) for tf in transfers]
        chosen.append(float(sigmas[int(np.argmin(errors))]))
    return GaussianBlur(diffusion, list(timesteps), chosen)
