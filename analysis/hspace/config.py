"""The study's protocol, `HSpaceConfig`: one field per setting, each also a command-line option (its help text
is the one ``python -m analysis.hspace --help`` shows, its check runs when a config is made), and the quick-mode
defaults."""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from typing import Sequence

from runkit.checks import nonnegative_int, positive_int
from runkit.options import Options, option

from analysis.hspace.perturbation import SVD_MODES, check_svd_mode, make_alphas
from analysis.hspace.sampling import START_MODES

__all__ = ["HSpaceConfig", "QUICK_DEFAULTS", "make_config"]

#: Quick mode's defaults (the built-in prior on mini-CUB, `analysis.demo.hspace_quick`). The paper's edit, calibrated
#: on mini-CUB's validation draw with ``python -m analysis.hspace.calibrate`` (docs/hspace.md, "Calibrating the
#: quick mode's edit"): the built-in prior's decoder nearly ignores h, so the edit acts at every step (t_edit 0)
#: and the top level multiplies s1 by 51 (alphas 12.5 .. 50); 4 DDIM steps move the generations as far as 25
#: and keep the class of the unperturbed generations as often as 6. 4 images (20 samples) per UNet batch are
#: faster per sample on a CPU than 8 (measured).
QUICK_DEFAULTS = dict(t0=500, steps=4, t_edit=0, svd_mode="sample", scale=12.5, images_per_group=40, grid_images=2,
                      batch_images=4, feature_size=64)


def _parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _quick(name: str, paper) -> str:
    return f"default {paper}; {QUICK_DEFAULTS[name]} with --quick"


@dataclass(kw_only=True)
class HSpaceConfig(Options):
    """The protocol. Defaults are the paper-mode defaults (docs/hspace.md); the options whose quick-mode default
    differs (`QUICK_DEFAULTS`) default to None on the command line (`make_config` fills them in). Every value is
    checked when the config is made (`Options.validate`), before anything is computed or written."""

    _options_title = "protocol"  # its --help heading

    t0: int = option(500, check=positive_int, cli_default=None,
                     help=f"start timestep (of the prior's 1000): x_t0 from the image ({_quick('t0', 500)})")
    steps: int = option(50, check=positive_int, cli_default=None,
                        help=f"DDIM timesteps in [0, t0] ({_quick('steps', 50)})")
    t_edit: int = option(200, check=nonnegative_int, cli_default=None,
                         help=f"edit at the steps with t >= t_edit ({_quick('t_edit', 200)}; pullback with "
                              "t_edit = t0 moves x_t0 once)")
    alphas: tuple[float, ...] = option((0.5, 1.0, 1.5, 2.0), cli_default=None, parse=_parse_floats,
                                       help="explicit comma-separated alpha_1..alpha_K (overrides --levels/--scale)")
    svd_mode: str = option(
        "sample", choices=SVD_MODES,
        help="sample (default, also --quick's): per-sample SVD of h (C x HW), h + alpha s1 u1 v1^T, the paper's "
             "edit; batch-svd: h moved along the first principal component of the flattened h of the current batch's "
             "2..--batch-size unperturbed samples, recomputed at each edited step -- not Haas et al.'s global "
             "per-timestep direction, so results depend on how images are batched; pullback: x_t "
             "moved along the gradient of h's top singular value, by alpha times the noise's norm (for priors "
             "whose decoder ignores h, docs/hspace.md)")
    start: str = option("noise", choices=START_MODES, help="how to reach x_t0: seeded q_sample noise or DDIM inversion")
    seed: int = option(0, check=nonnegative_int, help="seed of the image selection and the q_sample noise")
    images_per_group: int = option(32, cli_default=None,
                                   help=f"images per group, <= 0 for all ({_quick('images_per_group', 32)})")
    split: str = option("test", choices=("train", "test", "all"), help="split of CUB-root groups")
    batch_images: int = option(1, flag="--batch-size", check=positive_int, cli_default=None,
                               help=f"images per UNet batch, each with 1+K samples ({_quick('batch_images', 1)})")
    grid_images: int = option(3, check=nonnegative_int, cli_default=None,
                              help=f"images per group in the level grid ({_quick('grid_images', 3)})")

    def __post_init__(self) -> None:
        self.alphas = make_alphas(alphas=self.alphas)
        self.validate()

    def check(self) -> None:
        check_svd_mode(self.svd_mode)
        if self.start not in START_MODES:
            raise ValueError(f"unknown start {self.start!r}; valid: {', '.join(START_MODES)}")
        if not isinstance(self.images_per_group, int) or isinstance(self.images_per_group, bool):
            raise ValueError(f"--images-per-group must be an integer, got {self.images_per_group!r}")
        if int(self.steps) > int(self.t0) + 1:
            raise ValueError(f"--steps must be in 1..t0+1={self.t0 + 1} (distinct timesteps in [0, t0]), got "
                             f"{self.steps}")
        if not 0 <= int(self.t_edit) <= int(self.t0):
            raise ValueError(f"--t-edit must be in 0..t0={self.t0}, got {self.t_edit}")
        if self.svd_mode == "batch-svd" and int(self.batch_images) < 2:
            raise ValueError("--svd-mode batch-svd needs --batch-size >= 2 (the PCA runs over a batch's images)")

    def check_prior(self, num_timesteps: int) -> None:
        """t0 against the prior's diffusion (``num_timesteps``, 1000 for every prior of this toolkit)."""
        if not 0 < int(self.t0) < int(num_timesteps):
            raise ValueError(f"--t0 must be in 1..{int(num_timesteps) - 1} (the prior has {num_timesteps} "
                             f"diffusion steps), got {self.t0}")

    @property
    def levels(self) -> int:
        return len(self.alphas)

    def protocol(self) -> dict:
        """What determines the numbers (used to decide whether a manifest can be resumed)."""
        d = asdict(self)
        for k in ("batch_images", "grid_images"):
            d.pop(k)
        if self.svd_mode == "batch-svd":  # its direction depends on the batch
            d["batch_images"] = int(self.batch_images)
        d["alphas"] = list(self.alphas)
        return d


def make_config(quick: bool = False, *, levels: int = 4, scale: float | None = None,
                alphas: Sequence[float] | None = None, **overrides) -> HSpaceConfig:
    """An `HSpaceConfig` with the paper-mode defaults, or the quick-mode ones (`QUICK_DEFAULTS`) for
    ``quick``; ``overrides`` (HSpaceConfig fields) that are None keep the default. The alphas are
    ``make_alphas(levels, scale, alphas)`` (``scale`` None: 0.5, or quick mode's)."""
    fields = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(fields) - set(HSpaceConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown protocol setting(s) {unknown}; valid: {sorted(HSpaceConfig.__dataclass_fields__)}")
    if quick:
        for k, v in QUICK_DEFAULTS.items():
            if k in HSpaceConfig.__dataclass_fields__:
                fields.setdefault(k, v)
    if scale is None:
        scale = QUICK_DEFAULTS["scale"] if quick else 0.5
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"--scale must be a finite number, got {scale!r}")
    return HSpaceConfig(alphas=make_alphas(levels, scale, alphas), **fields)
