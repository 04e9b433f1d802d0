"""The files of a training run besides the checkpoint: the loss and validation tables (``log.csv``,
``val.csv``) and the JSON records (``config.json``, ``done.json``), all written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from runkit.files import atomic_write_text, read_csv, write_csv

__all__ = ["LOG_FIELDS", "VAL_FIELDS", "read_log", "write_log", "write_json", "rows_up_to"]

#: Columns of ``log.csv``: one row per optimisation step (``nat``/``sem`` empty without DiffLoss).
LOG_FIELDS = ("step", "pixel", "nat", "sem", "total", "seconds")
#: Columns of ``val.csv``: one row per validation.
VAL_FIELDS = ("step", "psnr", "ssim", "n")


def _number(value: str | None) -> int | float:
    if value in ("", None):
        return float("nan")
    try:
        return int(value)
    except ValueError:
        return float(value)


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``log.csv`` / ``val.csv`` as dicts of numbers (integers stay int; empty cells -> NaN)."""
    return [{k: _number(v) for k, v in row.items()} for row in read_csv(path)]


def write_log(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> Path:
    """Atomically write ``rows`` as CSV with the columns ``fields`` (NaN and missing values: empty cells)."""
    return write_csv(path, rows, fields)


def rows_up_to(path: Path, step: int) -> list[dict[str, float]]:
    """The rows of the table at ``path`` up to and including ``step`` (none when the file is absent): what
    a run resumed at ``step`` keeps of its earlier log."""
    return [r for r in read_log(path) if r["step"] <= step] if path.is_file() else []


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
