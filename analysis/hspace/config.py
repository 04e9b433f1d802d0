"""The study's protocol, `HSpaceConfig`: one field per setting, each also a command-line option (its help text
is the one ``python -m analysis.hspace --help`` shows), and the quick-mode defaults."""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Sequence

from runkit.options import option

from analysis.hspace.perturbation import SVD_MODES, check_svd_mode, make_alphas
from analysis.hspace.sampling import START_MODES

__all__ = ["HSpaceConfig", "QUICK_DEFAULTS", "make_config"]

#: quick mode's defaults (the built-in prior on mini-CUB, `analysis.demo.hspace_quick`)
QUICK_DEFAULTS = dict(steps=25, images_per_group=4, grid_images=2, batch_images=4, feature_size=64)


def _parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _quick(name: str, paper) -> str:
    return f"default {paper}; {QUICK_DEFAULTS[name]} with --quick"


@dataclass
class HSpaceConfig:
    """The protocol. Defaults are the paper-mode defaults (README: "h-space study"); the options whose
    quick-mode default differs (`QUICK_DEFAULTS`) default to None on the command line (`make_config` fills
    them in)."""

    _options_title = "protocol"  # its --help heading

    t0: int = option(500, help="start timestep (of 1000): x_t0 from the image")
    steps: int = option(50, cli_default=None, help=f"DDIM timesteps in [0, t0] ({_quick('steps', 50)})")
    t_edit: int = option(200, help="edit h at the steps with t >= t_edit")
    alphas: tuple[float, ...] = option((0.5, 1.0, 1.5, 2.0), cli_default=None, parse=_parse_floats,
                                       help="explicit comma-separated alpha_1..alpha_K (overrides --levels/--scale)")
    svd_mode: str = option(
        "sample", choices=SVD_MODES,
        help="sample: per-sample SVD of h (C x HW), the paper's edit; batch-svd: h moved along the first "
             "principal component of the flattened h of the current batch's 2..--batch-size unperturbed "
             "samples, recomputed at each edited step -- not Haas et al.'s global per-timestep direction "
             "from a reference set, so results depend on how images are batched")
    start: str = option("noise", choices=START_MODES, help="how to reach x_t0: seeded q_sample noise or DDIM inversion")
    seed: int = option(0, help="seed of the image selection and the q_sample noise")
    images_per_group: int = option(32, cli_default=None,
                                   help=f"images per group, <= 0 for all ({_quick('images_per_group', 32)})")
    split: str = option("test", choices=("train", "test", "all"), help="split of CUB-root groups")
    batch_images: int = option(1, flag="--batch-size", cli_default=None,
                               help=f"images per UNet batch, each with 1+K samples ({_quick('batch_images', 1)})")
    grid_images: int = option(3, cli_default=None,
                              help=f"images per group in the level grid ({_quick('grid_images', 3)})")

    def __post_init__(self) -> None:
        self.alphas = make_alphas(alphas=self.alphas)
        self.svd_mode = check_svd_mode(self.svd_mode)
        if self.start not in START_MODES:
            raise ValueError(f"unknown start {self.start!r}; valid: {', '.join(START_MODES)}")
        if not 0 <= int(self.t_edit) <= int(self.t0):
            raise ValueError(f"t_edit must be in 0..t0={self.t0}, got {self.t_edit}")
        if int(self.batch_images) < 1:
            raise ValueError(f"batch_images must be >= 1, got {self.batch_images}")
        if self.svd_mode == "batch-svd" and int(self.batch_images) < 2:
            raise ValueError("--svd-mode batch-svd needs --batch-size >= 2 (the PCA runs over a batch's images)")

    @property
    def levels(self) -> int:
        return len(self.alphas)

    def protocol(self) -> dict:
        """What determines the numbers (used to decide whether a manifest can be resumed)."""
        d = asdict(self)
        for k in ("batch_images", "grid_images"):
            d.pop(k)
        d["alphas"] = list(self.alphas)
        return d


def make_config(quick: bool = False, *, levels: int = 4, scale: float = 0.5,
                alphas: Sequence[float] | None = None, **overrides) -> HSpaceConfig:
    """An `HSpaceConfig` with the paper-mode defaults, or the quick-mode ones (`QUICK_DEFAULTS`) for
    ``quick``; ``overrides`` (HSpaceConfig fields) that are None keep the default. The alphas are
    ``make_alphas(levels, scale, alphas)``."""
    fields = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(fields) - set(HSpaceConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown protocol setting(s) {unknown}; valid: {sorted(HSpaceConfig.__dataclass_fields__)}")
    if quick:
        for k, v in QUICK_DEFAULTS.items():
            if k in HSpaceConfig.__dataclass_fields__:
                fields.setdefault(k, v)
    return HSpaceConfig(alphas=make_alphas(levels, scale, alphas), **fields)
