"""What a degraded-CUB build is asked to do: one dataclass that checks its values and generates the CLI.

Each field of `BuildSettings` is both a keyword of `corruptions.degrade.build_degraded_cub` and, through
`runkit.cli.option`, a flag of ``python -m corruptions.degrade``: a new option is one field with its help.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from runkit.cli import option

from corruptions.registry import get_corruption, get_corruption_names
from corruptions._checks import SEVERITIES, check_severity

__all__ = ["BuildSettings", "DEFAULT_OUT", "corruption_list", "severity_list", "positive_int"]

DEFAULT_OUT = "degraded-cub"
SPLITS = ("test", "train", "all")


def corruption_list(text: str) -> tuple[str, ...]:
    """``"fog,rain"`` -> ``("fog", "rain")``, each a registered name or ``pkg.module:function``."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one corruption, e.g. fog,rain,lowlight")
    for n in names:
        try:
            get_corruption(n)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return names


def severity_list(text: str) -> tuple[int, ...]:
    """``"1,3,5"`` -> ``(1, 3, 5)``, each in 1..5."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            sev = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"severities must be integers in 1..5 like 1,3,5; got {part!r}") from None
        if sev not in SEVERITIES:
            raise argparse.ArgumentTypeError(f"severity must be in 1..5, got {sev}")
        out.append(sev)
    return tuple(out)


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _as_tuple(value, what: str) -> tuple:
    if isinstance(value, (str, int)):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be a sequence, got {type(value).__name__}") from None
    if not items:
        raise ValueError(f"{what} must not be empty")
    return tuple(dict.fromkeys(items))  # de-duplicate, keep order


def _is_int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass
class BuildSettings:
    """The arguments of one build, checked on creation (ValueError/TypeError naming the bad one).

    ``corruptions``: registry names or ``"pkg.module:function"`` (None: every registered corruption).
    ``fmt``: ``"jpeg"`` (``quality`` 1..100) or ``"png"``. ``flush_seconds``: the longest wait between two
    saves of a manifest."""

    cub_root: str | None = option(None, help="CUB_200_2011 folder (default: the built-in mini benchmark)")
    out: str = option(DEFAULT_OUT, help="output folder; receives <corruption>/<severity>/ CUB roots")
    corruptions: tuple[str, ...] | None = option(
        None, parse=corruption_list, help="comma-separated names of registered corruptions or pkg.module:function")
    severities: tuple[int, ...] = option(SEVERITIES, parse=severity_list, cli_default="1,2,3,4,5",
                                         help="comma-separated, each in 1..5")
    split: str = option("test", choices=SPLITS, help="which images to degrade")
    workers: int = option(1, parse=positive_int, help="worker processes (1: this process only)")
    seed: int = option(0, help="base seed (>= 0) of every per-image generator")
    fmt: str = option("jpeg", flag="--format", choices=("jpeg", "png"), help="output image format")
    quality: int = option(95, help="JPEG quality 1..100 (ignored for png)")
    overwrite: bool = option(False, help="write into an --out folder holding other files, and rebuild variants "
                                         "made with other settings")
    progress: bool = True  # the CLI's --no-progress (a switch of its own: argparse shows no default for it)
    flush_seconds: float = 30.0

    def __post_init__(self) -> None:
        names = get_corruption_names() if self.corruptions is None else self.corruptions
        self.corruptions = _as_tuple(names, "corruptions")
        for name in self.corruptions:
            get_corruption(name)  # unknown name -> ValueError listing the valid ones
        self.severities = tuple(check_severity(s) for s in _as_tuple(self.severities, "severities"))
        if self.split not in SPLITS:
            raise ValueError(f"split must be 'train', 'test' or 'all', got {self.split!r}")
        if not _is_int(self.workers, 1):
            raise ValueError(f"workers must be an integer >= 1, got {self.workers!r}")
        if not _is_int(self.seed, 0):
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        fmt = str(self.fmt).lower()
        self.fmt = "jpeg" if fmt == "jpg" else fmt
        if self.fmt not in ("jpeg", "png"):
            raise ValueError(f"fmt must be 'jpeg' or 'png', got {self.fmt!r}")
        if self.fmt == "jpeg" and not (_is_int(self.quality, 1) and self.quality <= 100):
            raise ValueError(f"quality must be an integer in 1..100, got {self.quality!r}")

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def jpeg_quality(self) -> int | None:
        """The quality that decides the bytes: None for PNG."""
        return self.quality if self.fmt == "jpeg" else None
