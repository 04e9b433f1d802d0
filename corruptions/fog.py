"""Fog: ImageNet-C's fog (Hendrycks & Dietterich, ICLR 2019) through the ``imagecorruptions`` package.

``imagecorruptions`` (installed as ``imagecorruptions-imaug``, Apache-2.0) draws its diamond-square plasma
fractal from NumPy's *global* RNG (``np.random.uniform``; fog uses no numba code and no other RNG). We seed
that global state right before the call from the ``Generator`` we are given and restore the previous state
afterwards, so the output depends only on (image, severity, rng) — not on worker count, order, or whatever
else used the global RNG. Because the global state is process-wide, do not call `fog` from several threads
at once (the builder uses processes).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np

from corruptions._checks import check_image, check_rng, check_severity
from corruptions.registry import register_corruption

__all__ = ["fog", "FogParams", "FOG_TABLE", "seeded_global_numpy"]


class FogParams(NamedTuple):
    amount: float  #: c0: strength of the added fractal haze (image + c0 * plasma, rescaled by max/(max + c0))
    decay: float  #: c1: wibble decay of the diamond-square fractal (smaller = more fine-grained, patchier fog)


# ImageNet-C's own table (imagecorruptions.corruptions.fog: c = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5),
# (3., 1.4)]); kept here for the manifest and README, and tests check it still matches the library.
FOG_TABLE = (FogParams(1.5, 2.0), FogParams(2.0, 2.0), FogParams(2.5, 1.7), FogParams(2.5, 1.5), FogParams(3.0, 1.4))


@contextlib.contextmanager
def seeded_global_numpy(seed: int):
    """Seed NumPy's legacy global RNG with ``seed`` for the ``with`` body, then restore the previous state.

    For wrapping third-party code that draws from ``np.random.*`` (our own code never does).
    """
    state = np.random.get_state()
    np.random.seed(int(seed))
    try:
        yield
    finally:
        np.random.set_state(state)


@register_corruption("fog", table=FOG_TABLE, id=1)
def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-C fog of ``image`` (``uint8 HxWx3``, any size) at ``severity`` 1..5 -> ``uint8 HxWx3``.

    ``x = x / 255 + amount * plasma_fractal(decay)``, then ``x * max / (max + amount)``, clipped to [0, 1] and
    truncated to uint8 (ImageNet-C's conversion). The fractal map is the next power of two of the longest
    side, cropped to the image. Reference: D. Hendrycks, T. Dietterich, "Benchmarking Neural Network
    Robustness to Common Corruptions and Perturbations", ICLR 2019 (ImageNet-C); code: bethgelab /
    imagecorruptions (Michaelis et al. 2019) as packaged by ``imagecorruptions-imaug``.
    """
    severity = check_severity(severity)  # parameters: FOG_TABLE[severity - 1], applied inside imagecorruptions
    check_image(image)
    check_rng(rng)
    import imagecorruptions  # local: pulls in cv2/skimage/numba, only needed here
    from imagecorruptions.corruptions import fog as _ic_fog
    from PIL import Image

    seed = int(rng.integers(0, 2**32))
    with seeded_global_numpy(seed):
        if min(image.shape[:2]) >= 32:
            out = imagecorruptions.corrupt(image, severity=severity, corruption_name="fog")
        else:
            # imagecorruptions.corrupt refuses sides < 32 px; its fog function itself handles any size
            # (same code path corrupt() would take, including the final np.uint8 truncation).
            out = np.uint8(_ic_fog(Image.fromarray(image), severity))
    return np.ascontiguousarray(out, dtype=np.uint8)
