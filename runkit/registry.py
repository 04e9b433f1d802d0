"""One registry per extension point (corruptions, restoration nets, classifiers, prior configs, t-weightings).

Each family keeps one `Registry`, fills it where each entry is defined (``@REGISTRY.register("name")`` or
``REGISTRY.add("name", obj)``) and reads every default list from it (``REGISTRY.names()``), so adding an
entry is one decorator. Outside the registry, ``"pkg.module:attr"`` names any importable object
(`resolve_name`, the standard library's `pkgutil.resolve_name`): the way to plug in your own without
editing the toolkit. The registry's ``plugin`` adapter turns that object into an entry of the family, so a
plug-in is used exactly as a registered entry is.

The contract, the same for every family (``tests/test_registries.py`` holds it):

- ``r[name]`` and ``r.get(name)`` return the same entry, for registered names and for plug-ins;
- an unknown name raises `UnknownNameError` (a ValueError) listing the valid names;
  ``r.get(name, default)`` returns ``default`` instead.
"""
from __future__ import annotations

import pkgutil
from typing import Any, Callable, Generic, ItemsView, Iterator, TypeVar

__all__ = ["Registry", "UnknownNameError", "resolve_name", "is_plugin_spec"]

T = TypeVar("T")
_RAISE = object()  # get() without a default raises UnknownNameError


class UnknownNameError(ValueError):
    """A name that is neither registered nor an importable ``"pkg.module:attr"``; the message lists the valid names."""


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
    """Named entries of one family, in registration order.

    Write with ``register`` (decorator) / ``add`` / ``remove``; read with ``r[name]`` or ``get(name, default)``,
    ``name in r``, ``names()``, ``items()``, iteration (the names) and ``len``. With a ``plugin`` adapter
    (``plugin(spec, imported_object) -> entry``), every read also accepts ``"pkg.module:attr"``.
    """

    def __init__(self, family: str, plugin: Callable[[str, Any], T] | None = None) -> None:
        self.family = family
        self._entries: dict[str, T] = {}
        self._plugin = plugin

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Register ``entry`` as ``name``; ValueError if the name is taken (unless ``replace``)."""
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
        """The entry stored for ``obj`` registered as ``name`` (the object itself unless a family overrides it)."""
        if extra:
            raise TypeError(f"{self.family} registry takes no extra fields: {sorted(extra)}")
        return obj

    def remove(self, name: str) -> T:
        """Unregister ``name`` and return its entry (`UnknownNameError` if it is not registered)."""
        if name not in self._entries:
            raise UnknownNameError(self._unknown_message(name))
        return self._entries.pop(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> ItemsView[str, T]:
        return self._entries.items()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, default: Any = _RAISE) -> Any:
        """The entry called ``name``, or the plug-in ``"pkg.module:attr"`` made into one. Unknown (or a plug-in
        that cannot be imported): `UnknownNameError` listing the valid names, or ``default`` when one is given."""
        if not isinstance(name, str):
            raise TypeError(f"{self.family} name must be a str, got {type(name).__name__}")
        if name in self._entries:
            return self._entries[name]
        if self._plugin is not None and is_plugin_spec(name):
            try:
                obj = resolve_name(name, self.family)
            except ValueError as err:
                if default is not _RAISE:
                    return default
                raise UnknownNameError(f"{err}; registered names: {', '.join(self._entries)}") from None
            return self._plugin(name, obj)
        if default is not _RAISE:
            return default
        raise UnknownNameError(self._unknown_message(name))

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def _unknown_message(self, name: str) -> str:
        return (f"unknown {self.family} {name!r}; valid names: {', '.join(self._entries)}"
                + (" (or 'pkg.module:attr')" if self._plugin is not None else ""))

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {list(self._entries)})"
