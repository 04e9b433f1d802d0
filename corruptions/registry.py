"""The corruption registry: name -> function, five-row severity table and stable id, filled where each
corruption is defined.

    @register_corruption("fog", table=FOG_TABLE, id=1)
    def fog(image, severity, rng): ...

Adding a corruption is that one decorated function (and its table): every default list (`get_corruption_names`,
the builder's ``--corruptions``, the preview grid) reads the registry. Your own module registers the same way
once imported, or is named as ``"pkg.module:function"`` wherever a corruption name is accepted
(`runkit.registry.resolve_name`).
"""
from __future__ import annotations

import inspect
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from runkit.registry import Registry

from corruptions._checks import SEVERITIES, check_image, check_severity

__all__ = [
    "Corruption", "CorruptionRegistry", "CORRUPTIONS", "SEVERITY_TABLES", "CORRUPTION_IDS", "register_corruption",
    "corruption_entry", "get_corruption", "get_corruption_names", "corruption_id", "corruption_parameters",
    "image_rng", "corrupt",
]

CorruptionFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Corruption:
    """One registered corruption. ``fn(image uint8 HxWx3, severity 1..5, rng Generator) -> uint8 HxWx3``;
    ``table``: its five parameter rows (NamedTuples, severity 1 first; None for plug-ins); ``id``: the stable
    integer in every per-image seed (`image_rng`); ``pinned``: the id was given, not derived from the name."""

    name: str
    fn: CorruptionFn = field(repr=False)
    table: Sequence[Any] | None = field(default=None, repr=False)
    id: int = 0
    pinned: bool = False

    def parameters(self, severity: int) -> dict:
        """The parameter row at ``severity`` as a dict (empty without a table)."""
        severity = check_severity(severity)
        return {} if self.table is None else dict(self.table[severity - 1]._asdict())

    def rng(self, seed: int, image_id: int, severity: int) -> np.random.Generator:
        """The generator of one degraded image: ``default_rng([seed, image_id, id, severity])``."""
        return np.random.default_rng([int(seed), int(image_id), self.id, check_severity(severity)])

    def __call__(self, image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        """``fn`` with its input and output checked (``uint8 HxWx3`` in and out, same shape)."""
        check_image(image)
        out = self.fn(image, check_severity(severity), rng)
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != image.shape:
            raise TypeError(
                f"corruption {self.name!r} returned {type(out).__name__} "
                f"{getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}; expected uint8 {image.shape}"
            )
        return out


def name_id(name: str) -> int:
    """The id of a corruption registered without one: CRC-32 of its name (never Python's salted ``hash()``)."""
    return zlib.crc32(name.encode("utf-8"))


def _plugin_entry(spec: str, obj: Any) -> Corruption:
    if not callable(obj):
        raise TypeError(f"corruption {spec!r} is not callable")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # some builtins carry no signature: the first image will tell
        signature = None
    if signature is not None:
        try:
            signature.bind(np.zeros((1, 1, 3), np.uint8), 1, np.random.default_rng(0))
        except TypeError as err:
            raise TypeError(f"corruption {spec!r} cannot be called as fn(image, severity, rng) ({err}); a corruption "
                            "takes a uint8 HxWx3 image, a severity 1..5 and a numpy Generator") from None
    return Corruption(spec, obj, None, name_id(spec))


class CorruptionRegistry(Registry[Corruption]):
    """`runkit.registry.Registry` of `Corruption` entries. Names with a pinned id come first, in id order
    (the built-ins: fog, rain, lowlight), then the others in registration order. ``registry[name]`` is the
    `Corruption` entry, a function ``(image, severity, rng)`` that checks its input and output."""

    def __init__(self) -> None:
        super().__init__("corruption", plugin=_plugin_entry)

    def wrap(self, name: str, obj: Any, *, table: Sequence[Any] | None = None, id: int | None = None) -> Corruption:
        if not callable(obj):
            raise TypeError(f"corruption {name!r} must be a function (image, severity, rng) -> image")
        if table is not None and len(table) != len(SEVERITIES):
            raise ValueError(f"corruption {name!r}: its table has {len(table)} rows, expected one per severity 1..5")
        if id is not None and (isinstance(id, bool) or not isinstance(id, int) or id < 1):
            raise ValueError(f"corruption {name!r}: id must be an integer >= 1, got {id!r}")
        entry = Corruption(name, obj, None if table is None else tuple(table), name_id(name) if id is None else id,
                           pinned=id is not None)
        taken = {e.id: n for n, e in self.items() if n != name}
        if entry.id in taken:
            raise ValueError(f"corruption {name!r}: id {entry.id} is already {taken[entry.id]!r}'s; choose another")
        return entry

    def add(self, name: str, entry: Corruption, *, replace: bool = False) -> Corruption:
        super().add(name, entry, replace=replace)
        order = sorted(self._entries.items(), key=lambda kv: (not kv[1].pinned, kv[1].id if kv[1].pinned else 0))
        self._entries = dict(order)  # sorted() is stable: unpinned ones keep their registration order
        return entry


class _RegistryView(Mapping):
    """A read-only name -> attribute mapping over the registry's entries, current at every access."""

    def __init__(self, registry: CorruptionRegistry, attr: str) -> None:
        self._registry, self._attr = registry, attr

    def _current(self) -> dict[str, Any]:
        values = {n: getattr(e, self._attr) for n, e in self._registry.items()}
        return {n: v for n, v in values.items() if v is not None}

    def __getitem__(self, name: str) -> Any:
        return self._current()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())

    def __repr__(self) -> str:
        return repr(self._current())


CORRUPTIONS = CorruptionRegistry()
#: name -> the five rows (NamedTuples) of the corruption's parameters, severity 1 first (a view of the registry).
SEVERITY_TABLES: Mapping[str, Sequence[Any]] = _RegistryView(CORRUPTIONS, "table")
#: name -> stable integer, part of every per-image seed. Never renumber a built-in (it would change every
#: degraded image); a new corruption takes a new number (or none: CRC-32 of its name).
CORRUPTION_IDS: Mapping[str, int] = _RegistryView(CORRUPTIONS, "id")


def register_corruption(name: str, *, table: Sequence[Any] | None = None, id: int | None = None,
                        replace: bool = False) -> Callable[[CorruptionFn], CorruptionFn]:
    """Decorator registering ``fn(image uint8 HxWx3, severity, rng) -> uint8 HxWx3`` as ``name`` with its
    five-row parameter ``table`` and stable ``id`` (default: CRC-32 of the name). Returns ``fn`` unchanged."""
    return CORRUPTIONS.register(name, replace=replace, table=table, id=id)


def corruption_entry(name: str) -> Corruption:
    """The `Corruption` registered as ``name``, or ``"pkg.module:function"`` imported."""
    return CORRUPTIONS.get(name)


def get_corruption_names() -> list[str]:
    """Names of the registered corruptions: ``['fog', 'rain', 'lowlight']`` and any registered since."""
    return list(CORRUPTIONS.names())


def get_corruption(name: str) -> CorruptionFn:
    """The corruption function registered as ``name``, or ``"pkg.module:function"`` imported."""
    return corruption_entry(name).fn


def corruption_id(name: str) -> int:
    """Stable integer for ``name`` used in per-image seeds: the registered id (fog 1, rain 2, lowlight 3),
    CRC-32 of the name for plug-ins."""
    return corruption_entry(name).id


def corruption_parameters(name: str, severity: int) -> dict:
    """The parameter row of ``name`` at ``severity`` as a dict (empty for plug-in corruptions)."""
    severity = check_severity(severity)
    return corruption_entry(name).parameters(severity)


def image_rng(seed: int, image_id: int, name: str, severity: int) -> np.random.Generator:
    """The generator for one degraded image: a function of (seed, image id, corruption, severity) only,
    so an image's corruption never depends on which worker made it or in what order."""
    return corruption_entry(name).rng(seed, image_id, severity)


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """``rng`` as a Generator: an int seed -> ``default_rng(seed)``, None -> fresh OS entropy."""
    if rng is None or (isinstance(rng, (int, np.integer)) and not isinstance(rng, bool)):
        return np.random.default_rng(rng)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def corrupt(image: np.ndarray, corruption_name: str, severity: int,
            rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Apply ``corruption_name`` at ``severity`` (1..5) to ``image`` (``uint8 HxWx3``) -> ``uint8 HxWx3``.

    ``rng``: a ``numpy.random.Generator``, an int seed (``np.random.default_rng(seed)``), or ``None`` for fresh
    OS entropy (not reproducible). Raises `runkit.registry.UnknownNameError` (a ValueError) for unknown names
    (listing the valid ones), ValueError for bad severities/shapes, TypeError for wrong types.
    """
    entry = corruption_entry(corruption_name)
    check_image(image)
    severity = check_severity(severity)
    return entry(image, severity, as_generator(rng))
