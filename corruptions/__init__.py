"""Fog, rain and low-light corruptions at five severities, and the degraded-CUB benchmark builder.

Shaped like bethgelab/imagecorruptions: each corruption is a plain function
``fn(image uint8 HxWx3, severity 1..5, rng: numpy.random.Generator) -> uint8 HxWx3`` (same shape, any size),
registered where it is defined with its five-row parameter table right above it
(``@register_corruption("fog", table=FOG_TABLE, id=1)``); the registry `CORRUPTIONS` maps the names users type
to the functions, `corrupt` validates and dispatches. Unlike imagecorruptions, randomness is explicit: the same
(image, severity, rng seed) always gives the same bytes.

    from corruptions import corrupt, get_corruption_names
    out = corrupt(img, "rain", 3, rng=0)            # rng: int seed, numpy Generator, or None (fresh entropy)

A user-defined corruption registers with the same decorator from its own module, or plugs in as
``"pkg.module:function"`` wherever a name is accepted.
"""
from __future__ import annotations

import importlib
import pkgutil

from corruptions._checks import SEVERITIES, check_image, check_rng, check_severity
from corruptions.registry import (
    CORRUPTION_IDS,
    CORRUPTIONS,
    SEVERITY_TABLES,
    Corruption,
    corrupt,
    corruption_entry,
    corruption_id,
    corruption_parameters,
    get_corruption,
    get_corruption_names,
    image_rng,
    register_corruption,
)

#: Modules of this package that are tools, not corruption definitions (never imported here).
_TOOL_MODULES = frozenset({"degrade", "preview", "registry"})


def _register_builtins() -> None:
    """Import every corruption module of this package: each registers its corruptions where they are defined,
    so a new one (in a new module too) needs no edit here."""
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name not in _TOOL_MODULES:
            importlib.import_module(f"{__name__}.{mod.name}")


_register_builtins()

__all__ = [
    "CORRUPTIONS",
    "SEVERITY_TABLES",
    "CORRUPTION_IDS",
    "SEVERITIES",
    "Corruption",
    "register_corruption",
    "corrupt",
    "corruption_entry",
    "get_corruption",
    "get_corruption_names",
    "corruption_id",
    "corruption_parameters",
    "image_rng",
    "check_image",
    "check_severity",
    "check_rng",
]
