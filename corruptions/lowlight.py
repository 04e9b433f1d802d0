"""Low light: an exposure drop in linear light with Poisson-Gaussian (shot + read) sensor noise.

ImageNet-C's ``brightness`` only brightens. We model a shorter exposure the way raw-denoising work does:
go back to linear light, scale it, add heteroscedastic noise whose variance is ``shot * y + read**2``
(the Poisson-Gaussian model with the Gaussian approximation of Brooks et al. 2019), and re-encode as sRGB.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from corruptions._checks import check_image, check_rng, check_severity
from corruptions.registry import register_corruption

__all__ = ["lowlight", "LowLightParams", "LOWLIGHT_TABLE", "srgb_to_linear", "linear_to_srgb", "encode_srgb8"]


class LowLightParams(NamedTuple):
    exposure: float  #: k: linear-light gain (0.25 = two stops darker)
    shot: float  #: a: shot-noise gain, variance term a * y (y linear, in [0, 1])
    read: float  #: read-noise standard deviation (linear units), variance term read**2


LOWLIGHT_TABLE = (
    LowLightParams(exposure=0.25, shot=1e-3, read=0.0010),
    LowLightParams(exposure=0.12, shot=2e-3, read=0.0021),
    LowLightParams(exposure=0.06, shot=4e-3, read=0.0044),
    LowLightParams(exposure=0.03, shot=8e-3, read=0.0094),
    LowLightParams(exposure=0.015, shot=1.2e-2, read=0.0147),
)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding of ``x`` in [0, 1] (any shape) to linear light in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(y: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB encoding of linear ``y`` (any shape; clipped to [0, 1]) to [0, 1]. float32 input
    stays float32 (about 2x faster), anything else is computed in float64."""
    y = np.asarray(y)
    dtype = np.float32 if y.dtype == np.float32 else np.float64
    y = np.clip(y.astype(dtype, copy=False), 0.0, 1.0)
    out = np.power(y, dtype(1.0 / 2.4), out=np.empty_like(y))  # an array even for 0-d input
    out *= dtype(1.055)
    out -= dtype(0.055)
    np.putmask(out, y <= 0.0031308, y * dtype(12.92))
    return out


# sRGB decoding of the 256 uint8 codes, in float64
_LINEAR_LUT = srgb_to_linear(np.arange(256) / 255.0)
# sRGB encoding + rounding to uint8 as a table over u = sqrt(y) in 65,536 steps: u is nearly uniform in
# perceptual terms, so a step moves the sRGB value by at most 0.006 code values (checked in the tests);
# 2x faster than evaluating the power function per pixel.
_SQRT_STEPS = 65535
_SRGB8_FROM_SQRT = np.rint(linear_to_srgb((np.arange(_SQRT_STEPS + 1) / _SQRT_STEPS) ** 2) * 255.0).astype(np.uint8)


def encode_srgb8(y: np.ndarray) -> np.ndarray:
    """Linear light ``y`` (float, any shape; clipped to [0, 1]) -> sRGB ``uint8`` via the sqrt-domain table."""
    u = np.sqrt(np.clip(np.asarray(y, dtype=np.float32), 0.0, 1.0))
    u *= np.float32(_SQRT_STEPS)
    u += np.float32(0.5)
    return np.take(_SRGB8_FROM_SQRT, u.astype(np.uint16))


@register_corruption("lowlight", table=LOWLIGHT_TABLE, id=3)
def lowlight(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Low-light version of ``image`` (``uint8 HxWx3``, any size) at ``severity`` 1..5 -> ``uint8 HxWx3``.

    ``x = srgb_to_linear(image / 255)``; ``y = exposure * x``; ``y += N(0, 1) * sqrt(shot * y + read**2)``
    (independent per pixel and channel); clip to [0, 1]; sRGB-encode and round to uint8 (float32 math,
    `encode_srgb8`). The shot/read ranges follow Brooks et al., "Unprocessing Images for Learned Raw
    Denoising", CVPR 2019 (google-research/unprocessing: shot in [1e-4, 0.012] log-uniform, log read variance
    = 2.18 log shot + 1.20, so read = sqrt of that); the dark-image formation follows MAET (Cui et al.,
    ICCV 2021). All randomness comes from ``rng``.
    """
    p = LOWLIGHT_TABLE[check_severity(severity) - 1]
    check_image(image)
    check_rng(rng)
    y = np.take((_LINEAR_LUT * p.exposure).astype(np.float32), image)
    noise = rng.standard_normal(y.shape, dtype=np.float32)
    noise *= np.sqrt(np.float32(p.shot) * y + np.float32(p.read**2))
    y += noise
    return encode_srgb8(y)
