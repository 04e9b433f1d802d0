"""Checks of option values, written once for every command. Each takes the name to quote (the flag, as
`runkit.options.Options.validate` passes it) and the value, and raises ValueError saying what was expected and
what was found: ``--steps must be a positive integer, got 0``.

Fields declare their check on the option (``option(1000, check=positive_int, help=...)``); the parametrised
ones (`int_at_least`, `fraction`, `one_of`) return such a check.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

__all__ = ["Check", "int_at_least", "positive_int", "nonnegative_int", "positive_number", "nonnegative_number",
           "fraction", "one_of"]

#: ``check(name, value)``: raises ValueError naming ``name`` when ``value`` is wrong; returns the value.
Check = Callable[[str, Any], Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_at_least(minimum: int) -> Check:
    """A check: an int (not a bool) >= ``minimum``."""
    def check(name: str, value: Any) -> int:
        if not _is_int(value) or value < minimum:
            what = {1: "a positive integer", 0: "an integer >= 0"}.get(minimum, f"an integer >= {minimum}")
            raise ValueError(f"{name} must be {what}, got {value!r}")
        return value
    return check


positive_int: Check = int_at_least(1)
nonnegative_int: Check = int_at_least(0)


def positive_number(name: str, value: Any) -> float:
    """A finite int or float > 0."""
    if not _is_number(value) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def nonnegative_number(name: str, value: Any) -> float:
    """A finite int or float >= 0."""
    if not _is_number(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return value


def fraction(*, zero: bool, one: bool) -> Check:
    """A check: a number in the unit interval, 0 and 1 included as ``zero`` / ``one`` say ("in [0, 1)")."""
    interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"

    def check(name: str, value: Any) -> float:
        ok = _is_number(value) and 0 <= value <= 1
        if not ok or (value == 0 and not zero) or (value == 1 and not one):
            raise ValueError(f"{name} must be in {interval}, got {value!r}")
        return value
    return check


def one_of(choices: Iterable[Any]) -> Check:
    """A check: one of ``choices``."""
    choices = tuple(choices)

    def check(name: str, value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    return check
