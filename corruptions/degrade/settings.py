"""What a degraded-CUB build is asked to do: one dataclass that checks its values and generates the CLI.

Each field of `DegradeConfig` is both a keyword of `corruptions.degrade.build_degraded_cub` and, through
`runkit.options.option`, a flag of ``python -m corruptions.degrade``: a new option is one field with its help.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from runkit.checks import nonnegative_int, positive_int
from runkit.options import RunOptions, option

from corruptions.registry import get_corruption, get_corruption_names
from corruptions._checks import SEVERITIES, check_severity

__all__ = ["DegradeConfig", "DEFAULT_OUT", "corruption_list", "severity_list"]

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


@dataclass(kw_only=True)
class DegradeConfig(RunOptions):
    """The arguments of one build; `validate` checks them (ValueError/TypeError naming the flag).

    ``corruptions``: registry names or ``"pkg.module:function"`` (None: every registered corruption).
    ``fmt``: ``"jpeg"`` (``quality`` 1..100) or ``"png"``. ``flush_seconds``: the longest wait between two
    saves of a manifest."""

    cub_root: str | None = option(None, help="the CUB root to degrade (default: the built-in mini benchmark)")
    out: str = option(DEFAULT_OUT, help="output folder; receives <corruption>/<severity>/ CUB roots")
    corruptions: tuple[str, ...] | None = option(
        None, parse=corruption_list, help="comma-separated names of registered corruptions or pkg.module:function")
    severities: tuple[int, ...] = option(SEVERITIES, parse=severity_list, cli_default="1,2,3,4,5",
                                         help="comma-separated, each in 1..5")
    split: str = option("test", choices=SPLITS, help="which images to degrade")
    workers: int = option(1, check=positive_int, help="worker processes (1: this process only)")
    seed: int = option(0, check=nonnegative_int, help="base seed of every per-image generator")
    fmt: str = option("jpeg", flag="--format", choices=("jpeg", "png"), help="output image format")
    quality: int = option(95, help="JPEG quality 1..100 (ignored for png)")
    overwrite: bool = option(False, help="write into an --out folder holding other files, and rebuild variants "
                                         "made with other settings")
    flush_seconds: float = 30.0

    def __post_init__(self) -> None:
        names = get_corruption_names() if self.corruptions is None else self.corruptions
        self.corruptions = _as_tuple(names, "--corruptions")
        self.severities = _as_tuple(self.severities, "--severities")
        fmt = str(self.fmt).lower()
        self.fmt = "jpeg" if fmt == "jpg" else fmt

    def check(self) -> None:
        for name in self.corruptions:
            get_corruption(name)  # unknown name -> ValueError listing the valid ones
        self.severities = tuple(check_severity(s) for s in self.severities)
        if self.split not in SPLITS:
            raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.fmt not in ("jpeg", "png"):
            raise ValueError(f"--format must be 'jpeg' or 'png', got {self.fmt!r}")
        if self.fmt == "jpeg" and not (positive_int("--quality", self.quality) and self.quality <= 100):
            raise ValueError(f"--quality must be an integer in 1..100, got {self.quality!r}")

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def jpeg_quality(self) -> int | None:
        """The quality that decides the bytes: None for PNG."""
        return self.quality if self.fmt == "jpeg" else None
