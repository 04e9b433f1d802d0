"""Rain: streak layers plus a rain-accumulation veil, after the Rain100L/H synthesis model.

Neither ImageNet-C nor ``imagecorruptions`` has rain. The usual synthetic-deraining model (Yang et al.,
"Deep Joint Rain Detection and Removal from a Single Image", CVPR 2017, the Rain100L/H data; streaks after
Garg & Nayar 2006) writes a rainy image as ``O = a (B + sum_t S_t) + (1 - a) A``: background B, streak
layers S_t, and an atmospheric veil (rain accumulation) of light A. We implement it in numpy/scipy
(albumentations' RandomRain and imgaug's Rain were not used: unmaintained / broken on NumPy 2).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from corruptions._checks import check_image, check_rng, check_severity
from corruptions.registry import register_corruption

__all__ = ["rain", "RainParams", "RAIN_TABLE", "rain_streak_kernel", "REFERENCE_SHORT_SIDE", "VEIL_LIGHT"]

#: Lengths, densities and blur radii of `RAIN_TABLE` are defined for an image whose short side is 224 px
#: and scaled by ``s = short_side / 224`` so that a rained image looks the same at any resolution.
REFERENCE_SHORT_SIDE = 224.0
#: Atmospheric light A of the veil (grey-white sky light), in [0, 1].
VEIL_LIGHT = 0.8


class RainParams(NamedTuple):
    density: float  #: streak seeds per pixel at the 224-px reference size (Bernoulli p = density / s**2)
    length: float  #: streak length in px at the reference size (times s)
    angle: float  #: max |tilt| from vertical in degrees; one tilt per image, uniform in [-angle, angle]
    opacity: float  #: streak brightness multiplier (seed brightness is uniform in [0.6, 1])
    veil: float  #: rain-accumulation weight v in O = (1 - v) B' + v A
    blur: float  #: Gaussian blur sigma in px at the reference size (times s), applied after the streaks


RAIN_TABLE = (
    RainParams(density=0.003, length=10, angle=10, opacity=0.60, veil=0.00, blur=0.0),
    RainParams(density=0.005, length=13, angle=15, opacity=0.65, veil=0.03, blur=0.3),
    RainParams(density=0.007, length=16, angle=20, opacity=0.70, veil=0.06, blur=0.5),
    RainParams(density=0.010, length=20, angle=25, opacity=0.75, veil=0.10, blur=0.7),
    RainParams(density=0.014, length=24, angle=30, opacity=0.80, veil=0.15, blur=1.0),
)


def rain_streak_kernel(length: float, angle_deg: float, sigma: float) -> np.ndarray:
    """A float32 line kernel of ``length`` px tilted ``angle_deg`` from vertical, anti-aliased by a Gaussian
    of ``sigma`` px and normalised to peak 1 (so a streak is as bright as its seed)."""
    length = max(float(length), 1.0)
    sigma = max(float(sigma), 0.3)
    half = int(math.ceil(length / 2 + 3 * sigma)) + 1
    size = 2 * half + 1
    theta = math.radians(angle_deg)
    n = int(math.ceil(length * 4)) + 1
    t = np.linspace(-length / 2, length / 2, n)
    xs = half + t * math.sin(theta)
    ys = half + t * math.cos(theta)
    kernel = np.zeros((size, size), np.float64)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    # bilinear splat of the sample points (sub-pixel accurate line before anti-aliasing)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(kernel, (y0 + dy, x0 + dx), wy * wx)
    kernel = ndimage.gaussian_filter(kernel, sigma, mode="constant")
    return (kernel / kernel.max()).astype(np.float32)


def _convolve_same(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D convolution of ``a`` with an odd-sized ``kernel`` by real FFT, cropped to ``a``'s shape (what
    ``scipy.signal.fftconvolve(mode="same")`` computes, without importing scipy.signal: 2 s of start-up)."""
    full = [n + m - 1 for n, m in zip(a.shape, kernel.shape)]
    shape = [sp_fft.next_fast_len(n, real=True) for n in full]
    spec = sp_fft.rfft2(a, shape) * sp_fft.rfft2(kernel, shape)
    out = sp_fft.irfft2(spec, shape)
    top, left = (kernel.shape[0] - 1) // 2, (kernel.shape[1] - 1) // 2
    return out[top : top + a.shape[0], left : left + a.shape[1]]


@register_corruption("rain", table=RAIN_TABLE, id=2)
def rain(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic rain on ``image`` (``uint8 HxWx3``, any size) at ``severity`` 1..5 -> ``uint8 HxWx3``.

    With ``s = min(H, W) / 224``: (1) streak seeds ~ Bernoulli(density / s**2) x U(0.6, 1); (2) convolved
    with one line kernel per image (length ``length * s``, tilt ~ U(-angle, angle) from vertical,
    anti-aliased with a Gaussian of sigma ``0.5 s``), times ``opacity``, clipped to [0, 1] -> streak layer S;
    (3) screen blend ``B' = 1 - (1 - B)(1 - S)`` (streaks lighten, never darken), Gaussian blur of sigma
    ``blur * s`` truncated at 3 sigma (rain-induced loss of sharpness); (4) veil ``O = (1 - v) B' + v A``
    with ``A = 0.8``.
    Seed density falls with s**2 so the streak count, and the look, match a 224-px image.
    Reference: W. Yang et al., "Deep Joint Rain Detection and Removal from a Single Image", CVPR 2017
    (Rain100L/H synthesis model with rain accumulation). All randomness comes from ``rng``.
    """
    p = RAIN_TABLE[check_severity(severity) - 1]
    check_image(image)
    check_rng(rng)
    h, w = image.shape[:2]
    s = min(h, w) / REFERENCE_SHORT_SIDE

    prob = min(p.density / s**2, 1.0)
    hit = rng.random((h, w), dtype=np.float32) < prob
    seeds = np.zeros((h, w), np.float32)
    seeds[hit] = rng.uniform(0.6, 1.0, int(hit.sum()))
    theta = rng.uniform(-p.angle, p.angle)
    kernel = rain_streak_kernel(p.length * s, theta, 0.5 * s)
    streaks = _convolve_same(seeds, kernel)
    streaks = np.clip(streaks * p.opacity, 0.0, 1.0)

    x = image.astype(np.float32) / 255.0
    x = 1.0 - (1.0 - x) * (1.0 - streaks[..., None])
    if p.blur > 0:
        x = ndimage.gaussian_filter(x, sigma=(p.blur * s, p.blur * s, 0.0), mode="reflect", truncate=3.0)
    x = (1.0 - p.veil) * x + p.veil * VEIL_LIGHT
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
