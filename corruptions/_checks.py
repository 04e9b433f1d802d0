"""Input validation shared by every corruption function (one place, one wording of the errors)."""
from __future__ import annotations

import numbers

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)


def check_image(image) -> np.ndarray:
    """Return ``image`` if it is a ``uint8 HxWx3`` array with H, W >= 1; else raise TypeError/ValueError."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy.ndarray (uint8 HxWx3), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"image must have dtype uint8 (values 0..255, HxWx3), got dtype {image.dtype} "
            f"(min {image.min() if image.size else 'n/a'}, max {image.max() if image.size else 'n/a'}); "
            "convert float [0, 1] images with (x * 255).round().astype(np.uint8)"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must have shape HxWx3 (RGB, channels last), got shape {image.shape}; "
            "expand grayscale with np.repeat(x[..., None], 3, axis=2)"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be at least 1x1 pixels, got shape {image.shape}")
    return image


def check_severity(severity) -> int:
    """Return ``severity`` as an int if it is an integer in 1..5; else raise TypeError/ValueError."""
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
        raise TypeError(f"severity must be an integer in 1..5, got {severity!r} ({type(severity).__name__})")
    severity = int(severity)
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    return severity


def check_rng(rng) -> np.random.Generator:
    """Return ``rng`` if it is a ``numpy.random.Generator``; else raise TypeError."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng
