"""Checks of config values, written once for every config dataclass of the package (``validate()`` methods).

Each raises ValueError naming the field and quoting the value, e.g. "steps must be a positive integer, got 0".
"""
from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["check_int", "check_positive_int", "check_nonnegative_int", "check_int_fields", "check_positive_number",
           "check_fraction", "check_choice"]


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` is an int (not a bool) >= ``minimum``; returned unchanged."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    return check_int(name, value, 1)


def check_nonnegative_int(name: str, value: Any) -> int:
    return check_int(name, value, 0)


def check_int_fields(obj: Any, names: Iterable[str], minimum: int = 1) -> None:
    """`check_int` on each attribute ``names`` of ``obj`` (a config dataclass)."""
    for name in names:
        check_int(name, getattr(obj, name), minimum)


def check_positive_number(name: str, value: Any) -> float:
    """``value`` is a finite int or float > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def check_fraction(name: str, value: Any, *, zero: bool, one: bool) -> float:
    """``value`` in the unit interval, with 0 and 1 included as ``zero`` / ``one`` say ("in [0, 1)")."""
    interval = f"{'[' if zero else '('}0, 1{']' if one else ')'}"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (0 <= value <= 1)
    if not ok or (value == 0 and not zero) or (value == 1 and not one):
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value
