"""One registry per extension point (corruptions, restoration nets, classifiers, prior configs).

Each family keeps one `Registry`, fills it where each entry is defined (``@REGISTRY.register("name")`` or
``REGISTRY.add("name", obj)``) and reads every default list from it (``REGISTRY.names()``), so adding an
entry is one decorator. Outside the registry, ``"pkg.module:attr"`` names any importable object
(`resolve_name`, the standard library's `pkgutil.resolve_name`): the way to plug in your own without
editing the toolkit.
"""
from __future__ import annotations

import pkgutil
from typing import Any, Callable, Generic, Iterator, TypeVar

__all__ = ["Registry", "resolve_name", "is_plugin_spec"]

T = TypeVar("T")
_RAISE = object()  # get() without a default raises KeyError


def is_plugin_spec(name: str) -> bool:
    """True for ``"pkg.module:attr"`` (a colon after a dotted module name), the plugin spelling."""
    module, sep, attr = str(name).partition(":")
    return bool(sep and module and attr and all(p.isidentifier() for p in module.split(".")))


def resolve_name(spec: str, what: str = "object") -> Any:
    """Import ``"pkg.module:attr"`` and return the attribute; a ValueError in one line when it cannot."""
    if not is_plugin_spec(spec):
        raise ValueError(f"{what} {spec!r}: expected 'pkg.module:attr'")
    try:
        return pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import {what} {spec!r}: {err}") from None


class Registry(Generic[T]):
    """Named entries of one family, in registration order. Reads and writes like the dict it replaces
    (``r[name]``, ``r[name] = entry``, ``del r[name]``, ``keys()``, ``values()``, ``items()``, ``get(name, default)``).

    ``get(name)`` also accepts ``"pkg.module:attr"`` when the registry has a ``plugin`` adapter (which
    turns the imported object into an entry).
    """

    def __init__(self, family: str, plugin: Callable[[str, Any], T] | None = None) -> None:
        self.family = family
        self._entries: dict[str, T] = {}
        self._plugin = plugin

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        if name in self._entries and not replace:
            raise ValueError(f"{self.family} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str, *, replace: bool = False, **extra: Any) -> Callable[[Any], Any]:
        """Decorator: ``@REGISTRY.register("name")`` above the definition. Extra keywords go to the
        registry's ``wrap`` (a family that stores more than the object itself overrides it)."""
        def deco(obj: Any) -> Any:
            self.add(name, self.wrap(name, obj, **extra), replace=replace)
            return obj
        return deco

    def wrap(self, name: str, obj: Any, **extra: Any) -> T:
        if extra:
            raise TypeError(f"{self.family} registry takes no extra fields: {sorted(extra)}")
        return obj

    def remove(self, name: str) -> T:
        return self._entries.pop(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def get(self, name: str, default: Any = _RAISE) -> Any:
        """The entry called ``name``, or a plugin ``"pkg.module:attr"``. Unknown: KeyError naming the choices,
        or ``default`` when one is given (``registry.get(name, None)`` works as on a dict)."""
        if name in self._entries:
            return self._entries[name]
        if self._plugin is not None and is_plugin_spec(name):
            return self._plugin(name, resolve_name(name, self.family))
        if default is not _RAISE:
            return default
        raise KeyError(f"unknown {self.family} {name!r}; valid names: {', '.join(self._entries)}"
                       + (" (or 'pkg.module:attr')" if self._plugin is not None else ""))

    # the dict the registries replaced: item access, assignment and deletion, keys/values/items
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, entry: T) -> None:
        self.add(name, entry, replace=True)

    def __delitem__(self, name: str) -> None:
        self.remove(name)

    def keys(self) -> tuple[str, ...]:
        return self.names()

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {list(self._entries)})"
