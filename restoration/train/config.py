"""The settings of a restoration training run: `TrainConfig`, one field per option of ``python -m restoration.train``
(its flag, default, help, check and whether it changes the result live on the field, see
`runkit.options.option`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from runkit.checks import fraction, nonnegative_int, nonnegative_number, one_of, positive_int, positive_number
from runkit.options import LoaderOptions, RunOptions, option

from cubdata import VAL_FRACTION
from diffloss.criterion import TARGETS
from diffloss.prior.spec import PriorOptions
from restoration.nets import DEFAULT_NET, NETS

__all__ = ["TrainConfig", "FIT_MODES", "AUTOCAST_CHOICES", "as_config"]

#: How crops of another size than the prior's are fitted to it for the DiffLoss terms (`fit_to_prior`).
FIT_MODES = ("resize", "crop", "none")
#: Settings that only matter with DiffLoss on: two runs without it agree whatever these say.
DIFFLOSS_FIELDS = ("prior", "prior_config", "gamma", "lam", "target", "diffloss_fit", "autocast")
#: The autocast choices of the DiffLoss terms.
AUTOCAST_CHOICES = ("fp32", "bf16", "fp16")


def _on_off(value: str) -> bool:
    return value == "on"


def _net_kwargs(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON dict, got {text!r}: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON dict, got {text!r}")
    return value


@dataclass(kw_only=True)
class TrainConfig(RunOptions, LoaderOptions, PriorOptions):
    """Everything a training run depends on (saved in ``config.json`` and the checkpoint).

    ``prior``/``prior_config``: the `PriorOptions` (``--prior``, ``--prior-config``); ``prior_spec()`` resolves
    them (`diffloss.prior.resolve_prior`).
    ``init``: a ``ckpt.pt`` whose network weights start this run (same net and kwargs); with
    ``init_optimizer`` its Adam moments too (at this run's lr), so a fine-tuning phase continues smoothly
    instead of restarting Adam, whose first steps move every weight by about lr.
    ``val_every``/``ckpt_every`` 0: only at the end; ``ckpt_minutes`` also checkpoints after that much wall time
    since the last checkpoint (0: off). ``val_images``: first N pairs of the val split (synthetic
    CUB pairs: ``val_fraction`` of the train split, `cubdata.train_val_split`).
    """

    out: str = option(help="run folder (ckpt.pt, log.csv, val.csv, loss_curve.png)")
    pairs: str = option("synthetic:lowlight:3", result=True,
                        help="paired data: a LOL/Rain/Haze folder, LOW_DIR:HIGH_DIR, or "
                             "synthetic:CORRUPTION:SEVERITY[:CUB_ROOT]")
    val_pairs: str | None = option(None, help="validation pairs spec (default: the val split of --pairs)")
    net: str = option(DEFAULT_NET, result=True,
                      help=f"restoration network: one of {', '.join(NETS.names())} or pkg.module:factory")
    net_kwargs: dict = option(default_factory=dict, parse=_net_kwargs, cli_default="{}", metavar="JSON", result=True,
                              help="JSON dict of keyword arguments for the network factory")
    diffloss: bool = option(False, choices=("on", "off"), parse=_on_off, cli_default="off", result=True,
                            help="add DiffLoss to the L2 loss")
    gamma: float = option(1e-3, check=positive_number, result=True, help="DiffLoss weight of the diffusion terms")
    lam: float = option(1e-2, check=positive_number, result=True,
                        help="DiffLoss weight of the semantic (h-space) term")
    target: str = option("eps", choices=TARGETS, result=True, help="DiffLoss naturalness target (Table 4 ablation)")
    diffloss_fit: str = option("resize", choices=FIT_MODES, check=one_of(FIT_MODES), result=True,
                               help="how crops of another size are fitted to the prior's size for the DiffLoss terms")
    autocast: str = option("fp32", choices=AUTOCAST_CHOICES, check=one_of(AUTOCAST_CHOICES), result=True,
                           help="precision of the prior's UNet calls in the DiffLoss terms (bf16 on recent GPUs; fp16 "
                                "is scaled internally so DiffLoss' small gradients survive); the net trains in fp32")
    steps: int = option(1000, check=positive_int, help="total optimisation steps (a finished run can be extended)")
    batch_size: int = option(4, check=positive_int, result=True, help="batch size (per process under torchrun)")
    crop: int = option(256, check=positive_int, result=True, help="random crop size (smaller images are padded)")
    lr: float = option(1e-4, check=positive_number, result=True, help="Adam learning rate")
    seed: int = option(0, check=nonnegative_int, result=True,
                       help="seed of data order, crops, network init and DiffLoss draws")
    flip: bool = option(True, result=True, help="random horizontal flips",
                        negative_help="disable random horizontal flips (on by default)")
    init: str | None = option(None, result=True, help="start from this ckpt.pt's network weights")
    init_optimizer: bool = option(False, result=True, help="with --init, also continue its Adam state")
    val_every: int = option(500, check=nonnegative_int, help="validate every N steps (0: only at the end)")
    val_images: int = option(16, check=nonnegative_int, help="number of validation pairs (0: no validation)")
    val_fraction: float = option(VAL_FRACTION, check=fraction(zero=True, one=False), result=True,
                                 help="synthetic CUB pairs: share of each class's train images held out for "
                                      "validation (a seeded, class-stratified draw; the test split is never read)")
    ckpt_every: int = option(500, check=nonnegative_int, help="checkpoint every N steps (0: only at the end and by "
                                                                 "--ckpt-minutes)")
    ckpt_minutes: float = option(10.0, check=nonnegative_number,
                                 help="also checkpoint when this many minutes of wall time have passed since the last "
                                      "checkpoint (0: off), so slow steps or --ckpt-every 0 never risk more than that")
    loader_workers: int = option(0, check=nonnegative_int, help="DataLoader worker processes")
    plot: bool = option(True, help="write loss_curve.png", negative_help="do not write loss_curve.png (written by default)")

    def check(self) -> None:
        if not isinstance(self.net_kwargs, dict):
            raise TypeError(f"--net-kwargs must be a dict, got {type(self.net_kwargs).__name__}")
        if self.init_optimizer and not self.init:
            raise ValueError("--init-optimizer continues the Adam state of --init's checkpoint; pass --init CKPT too")

    def result_settings(self) -> dict[str, Any]:
        """The settings that change the trained weights; the DiffLoss ones only with DiffLoss on."""
        key = super().result_settings()
        if not self.diffloss:
            for name in DIFFLOSS_FIELDS:
                key.pop(name, None)
        return key


def as_config(config: TrainConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """A validated `TrainConfig` from a config, a dict of its fields or None, updated with ``overrides``."""
    if config is None:
        cfg = TrainConfig(**overrides)
    elif isinstance(config, TrainConfig):
        cfg = dataclasses.replace(config, **overrides)
    elif isinstance(config, Mapping):
        valid = [f.name for f in dataclasses.fields(TrainConfig)]
        unknown = set(config) - set(valid)
        if unknown:
            raise ValueError(f"unknown training option(s) {sorted(unknown)}; valid: {valid}")
        cfg = TrainConfig(**{**dict(config), **overrides})
    else:
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    return cfg.validate()
