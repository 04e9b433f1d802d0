"""Fog, rain and low-light corruptions at five severities, and the degraded-CUB benchmark builder.

Shaped like bethgelab/imagecorruptions: each corruption is a plain function
``fn(image uint8 HxWx3, severity 1..5, rng: numpy.random.Generator) -> uint8 HxWx3`` (same shape, any size),
its five-row parameter table sits right above it (``FOG_TABLE``, ``RAIN_TABLE``, ``LOWLIGHT_TABLE``), the
registry `CORRUPTIONS` maps the names users type to the functions, `corrupt` validates and dispatches. Unlike
imagecorruptions, randomness is explicit: the same (image, severity, rng seed) always gives the same bytes.

    from corruptions import corrupt, get_corruption_names
    out = corrupt(img, "rain", 3, rng=0)            # rng: int seed, numpy Generator, or None (fresh entropy)

A user-defined corruption plugs in as ``"pkg.module:function"`` wherever a name is accepted.
"""
from __future__ import annotations

import importlib
import zlib
from typing import Callable

import numpy as np

from ._checks import SEVERITIES, check_image, check_severity
from .fog import FOG_TABLE, fog
from .lowlight import LOWLIGHT_TABLE, lowlight
from .rain import RAIN_TABLE, rain

__all__ = [
    "CORRUPTIONS",
    "SEVERITY_TABLES",
    "CORRUPTION_IDS",
    "SEVERITIES",
    "corrupt",
    "get_corruption",
    "get_corruption_names",
    "corruption_id",
    "corruption_parameters",
    "image_rng",
    "fog",
    "rain",
    "lowlight",
]

CorruptionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

CORRUPTIONS: dict[str, CorruptionFn] = {f.__name__: f for f in (fog, rain, lowlight)}
#: name -> the five rows (NamedTuples) of the corruption's parameters, severity 1 first.
SEVERITY_TABLES = {"fog": FOG_TABLE, "rain": RAIN_TABLE, "lowlight": LOWLIGHT_TABLE}
#: Stable integer per built-in corruption, part of every per-image seed. Never renumber (it would change
#: every degraded image); append new names with new numbers.
CORRUPTION_IDS = {"fog": 1, "rain": 2, "lowlight": 3}


def get_corruption_names() -> list[str]:
    """Names of the registered corruptions, in registry order: ``['fog', 'rain', 'lowlight']``."""
    return list(CORRUPTIONS)


def get_corruption(name: str) -> CorruptionFn:
    """The corruption function registered as ``name``, or ``"pkg.module:function"`` imported."""
    if not isinstance(name, str):
        raise TypeError(f"corruption name must be a str, got {type(name).__name__}")
    if name in CORRUPTIONS:
        return CORRUPTIONS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import corruption {name!r} (expected 'pkg.module:function'): {err}") from err
        if not callable(fn):
            raise TypeError(f"corruption {name!r} is not callable")
        return fn
    raise ValueError(
        f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)} (or 'pkg.module:function')"
    )


def corruption_id(name: str) -> int:
    """Stable integer for ``name`` used in per-image seeds: `CORRUPTION_IDS` for built-ins, else CRC-32 of
    the name (never Python's ``hash()``, which is salted per process)."""
    get_corruption(name)
    return CORRUPTION_IDS.get(name, zlib.crc32(name.encode("utf-8")))


def corruption_parameters(name: str, severity: int) -> dict:
    """The parameter row of ``name`` at ``severity`` as a dict (empty for plug-in corruptions)."""
    severity = check_severity(severity)
    get_corruption(name)
    table = SEVERITY_TABLES.get(name)
    return {} if table is None else dict(table[severity - 1]._asdict())


def image_rng(seed: int, image_id: int, name: str, severity: int) -> np.random.Generator:
    """The generator for one degraded image: a function of (seed, image id, corruption, severity) only,
    so an image's corruption never depends on which worker made it or in what order."""
    return np.random.default_rng([int(seed), int(image_id), corruption_id(name), check_severity(severity)])


def corrupt(
    image: np.ndarray,
    corruption_name: str,
    severity: int,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Apply ``corruption_name`` at ``severity`` (1..5) to ``image`` (``uint8 HxWx3``) -> ``uint8 HxWx3``.

    ``rng``: a ``numpy.random.Generator``, an int seed (``np.random.default_rng(seed)``), or ``None`` for fresh
    OS entropy (not reproducible). Raises ValueError for unknown names (listing the valid ones) or bad
    severities/shapes, TypeError for wrong types.
    """
    fn = get_corruption(corruption_name)
    check_image(image)
    severity = check_severity(severity)
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        rng = np.random.default_rng(rng)
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")
    out = fn(image, severity, rng)
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != image.shape:
        raise TypeError(
            f"corruption {corruption_name!r} returned {type(out).__name__} "
            f"{getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}; expected uint8 {image.shape}"
        )
    return out
