"""diffloss.prior.baselines: the closed-form denoisers the prior's evidence is measured against, checked against
independent dense computations on tiny images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffloss.prior import load_prior
from diffloss.prior.baselines import (BLUR_SIGMAS, MeanImage, PixelWiener, PredictZero, StationaryWiener,
                                      fit_blur, gaussian_blur, one_shot_x0)
from diffloss.prior.sampling import ddim_reconstruct

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def diffusion():
    return load_prior("random", init_seed=0)[1]  # the 1000-step linear schedule, learned sigma


@pytest.fixture(scope="module")
def train():
    """12 smooth, correlated 3 x 4 x 4 'images' in [-1, 1] (colour channels tied, neighbours alike)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(12, 1, 2, 2, generator=g, dtype=torch.float64)
    x = F.interpolate(base, size=(4, 4), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (0.5 * x + 0.1 * torch.randn(12, 3, 4, 4, generator=g, dtype=torch.float64)).clamp(-1, 1)


def _abar(diffusion, t: int) -> float:
    return float(diffusion.alphas_cumprod[t])


def _posterior_mean(mean: torch.Tensor, cov: torch.Tensor, x_t: torch.Tensor, a: float) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(mean, cov) (dense, flattened) and x_t = sqrt(a) x0 + sqrt(1 - a) eps."""
    m, y = mean.reshape(-1), x_t.reshape(x_t.shape[0], -1).double()
    gain = a**0.5 * cov @ torch.linalg.inv(a * cov + (1 - a) * torch.eye(m.numel(), dtype=cov.dtype))
    return (m + (y - a**0.5 * m) @ gain.T).reshape(x_t.shape)


def test_pixel_wiener_is_the_posterior_mean_of_the_diagonal_gaussian(diffusion, train):
    w = PixelWiener(diffusion, train)
    x_t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 600])
    cov = torch.diag(train.var(0, unbiased=True).reshape(-1))
    for i in range(2):
        expect = _posterior_mean(train.mean(0), cov, x_t[i:i + 1], _abar(diffusion, int(t[i])))
        torch.testing.assert_close(w.x0(x_t, t)[i:i + 1].double(), expect, rtol=1e-5, atol=1e-6)


def test_stationary_wiener_is_the_posterior_mean_of_the_shift_averaged_covariance(diffusion, train):
    """The dense covariance, computed without an FFT: the sample covariance of the deviations from the per-pixel
    mean, averaged over all 16 cyclic shifts (a circulant matrix, what the 3 x 3 cross-spectra stand for)."""
    dev = train - train.mean(0)
    shifted = torch.stack([torch.roll(dev, (dy, dx), (2, 3)) for dy in range(4) for dx in range(4)], 1)
    flat = shifted.reshape(-1, 48)
    cov = flat.T @ flat / (16 * (train.shape[0] - 1))
    w = StationaryWiener(diffusion, train)
    x_t = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([50, 700])
    for i in range(2):
        expect = _posterior_mean(train.mean(0), cov, x_t[i:i + 1], _abar(diffusion, int(t[i])))
        torch.testing.assert_close(w.x0(x_t, t)[i:i + 1].double(), expect, rtol=1e-5, atol=1e-6)


def test_eps_and_x0_agree_and_the_unet_signature_holds(diffusion, train):
    x_t = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 400, 999])
    for b in (PixelWiener(diffusion, train), StationaryWiener(diffusion, train), MeanImage(diffusion, train),
              PredictZero(diffusion), fit_blur(diffusion, train, [0, 400, 999], torch.Generator().manual_seed(0))):
        out = b(x_t, t)
        assert out.shape == (3, 6, 4, 4) and out.dtype == torch.float32  # eps, then zeros where the UNet learns sigma
        assert torch.equal(out[:, 3:], torch.zeros_like(out[:, 3:]))
        a = torch.tensor([_abar(diffusion, int(v)) for v in t], dtype=torch.float64).view(-1, 1, 1, 1)
        implied = (x_t.double() - (1 - a).sqrt() * out[:, :3].double()) / a.sqrt()
        torch.testing.assert_close(implied.float(), b.x0(x_t, t), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(one_shot_x0(b, diffusion, x_t, t), b.x0(x_t, t).clamp(-1, 1), rtol=1e-4, atol=1e-4)
    assert torch.equal(PredictZero(diffusion)(x_t, t), torch.zeros(3, 6, 4, 4))
    assert torch.equal(MeanImage(diffusion, train).x0(x_t, t)[1], train.mean(0).float())
    # the samplers take a baseline where they take the UNet
    rec = ddim_reconstruct(StationaryWiener(diffusion, train), diffusion, train[:2].float(), 200, 5,
                           generator=torch.Generator().manual_seed(0))
    assert rec.shape == (2, 3, 4, 4) and rec.abs().max() <= 1


def test_gaussian_blur_is_a_mirrored_convolution_of_any_width():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(gaussian_blur(x, 0.0), x)
    sigma, r = 1.5, 6
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(3, 1, 1, -1)
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (r, r), (r, r)), mode="symmetric"))
    direct = F.conv2d(F.conv2d(padded, k, groups=3), k.transpose(2, 3), groups=3)
    torch.testing.assert_close(gaussian_blur(x, sigma), direct, rtol=0, atol=1e-4)
    # far wider than the image: each channel's mean
    torch.testing.assert_close(gaussian_blur(x, 1e4), x.mean((2, 3), keepdim=True).expand_as(x), rtol=0, atol=1e-9)


def test_fit_blur_picks_the_width_a_direct_search_picks(diffusion, train):
    ts = [10, 300, 700]
    blur = fit_blur(diffusion, train, ts, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    for t in ts:
        noise = torch.randn(train.shape, generator=g, dtype=torch.float64)
        a = _abar(diffusion, t)
        scaled = train + ((1 - a) / a) ** 0.5 * noise
        errors = [float(((gaussian_blur(scaled, s) - train) ** 2).mean()) for s in BLUR_SIGMAS]
        # the width with the least error (wide blurs of a 4 px image tie up to rounding: compare the errors)
        assert errors[BLUR_SIGMAS.index(blur.sigma_at(t))] <= min(errors) * (1 + 1e-9)
    assert blur.sigma_at(10) < blur.sigma_at(700)  # more noise, wider blur
    assert blur.sigma_at(290) == blur.sigma_at(300)  # the nearest fitted timestep


def test_fitting_needs_two_images(diffusion):
    with pytest.raises(ValueError, match="at least 2 training images"):
        PixelWiener(diffusion, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="NCHW"):
        StationaryWiener(diffusion, torch.zeros(3, 4, 4))
