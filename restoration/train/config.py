"""The settings of a restoration training run: `TrainConfig`, one field per option of ``python -m restoration.train``
(its flag, default and help text live on the field, see `runkit.cli.option`), its checks, and what a resumed
run must agree on with its checkpoint (`config_diff`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from runkit.cli import option

from diffloss.criterion import TARGETS
from restoration.nets import DEFAULT_NET, NETS
from diffloss.prior.configs import PRIOR_CONFIGS
from runkit.checks import check_choice, check_int_fields, check_positive_number

__all__ = ["TrainConfig", "FIT_MODES", "config_diff", "as_config"]

#: How crops of another size than the prior's are fitted to it for the DiffLoss terms (`fit_to_prior`).
FIT_MODES = ("resize", "crop", "none")
#: Config fields that change what is computed: a resumed run must agree with the checkpoint on them.
RESULT_FIELDS = ("net", "net_kwargs", "pairs", "diffloss", "prior", "prior_config", "gamma", "lam", "target",
                 "diffloss_fit", "autocast", "batch", "crop", "lr", "seed", "flip", "init", "init_optimizer")
#: Settings that only matter with DiffLoss on: two runs without it agree whatever these say.
DIFFLOSS_FIELDS = ("prior", "prior_config", "gamma", "lam", "target", "diffloss_fit", "autocast")
#: The autocast choices of the DiffLoss terms.
AUTOCAST_CHOICES = ("fp32", "bf16", "fp16")
#: Values a config saved before a field existed is read with (so older runs still resume).
FIELD_ADDED_DEFAULTS = {"autocast": "fp32"}


def _on_off(value: str) -> bool:
    return value == "on"


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in ``config.json`` and the checkpoint).

    ``prior``: ``"builtin"`` (the trained prior shipped with the toolkit), ``"random"`` (random weights of
    ``prior_config``, default tiny, for timing) or a checkpoint path (a self-describing ``prior.pt`` carries
    its config; a bare guided-diffusion state dict is read as ``prior_config``, default ``adm256-uncond``).
    ``"tiny"`` is the old spelling of ``"random"`` with the tiny config.
    ``init``: a ``ckpt.pt`` whose network weights start this run (same net and kwargs); with
    ``init_optimizer`` its Adam moments too (at this run's lr), so a fine-tuning phase continues smoothly
    instead of restarting Adam, whose first steps move every weight by about lr.
    ``val_every``/``ckpt_every`` 0: only at the end. ``val_images``: first N pairs of the val split.
    """

    out: str = option(help="run folder (ckpt.pt, log.csv, val.csv, loss_curve.png)")
    pairs: str = option("synthetic:lowlight:3", help="paired data: a LOL/Rain/Haze folder, LOW_DIR:HIGH_DIR, or "
                        "synthetic:CORRUPTION:SEVERITY[:CUB_ROOT]")
    val_pairs: str | None = option(None, help="validation pairs spec (default: the val split of --pairs)")
    net: str = option(DEFAULT_NET, help=f"restoration network: one of {', '.join(NETS.names())} or pkg.module:factory")
    # the CLI passes the JSON text on; restoration.train decodes it, so a malformed value is one error line
    net_kwargs: dict = option(default_factory=dict, parse=str, cli_default="{}", metavar="JSON",
                              help="JSON dict of keyword arguments for the network factory")
    diffloss: bool = option(False, choices=("on", "off"), parse=_on_off, cli_default="off",
                            help="add DiffLoss to the L2 loss")
    prior: str = option("builtin", help="'builtin' (the trained 64 px prior shipped with the toolkit), 'random' "
                        "(untrained weights of --prior-config, for timing) or a checkpoint path: a prior.pt of "
                        "diffloss.prior.train or guided-diffusion's 256x256_diffusion_uncond.pt")
    prior_config: str | None = option(None, choices=sorted(PRIOR_CONFIGS),
                                      help="prior architecture (default: tiny for --prior random; a prior.pt's own; "
                                           "adm256-uncond for a bare guided-diffusion state dict)")
    gamma: float = option(1e-3, help="DiffLoss weight of the diffusion terms")
    lam: float = option(1e-2, help="DiffLoss weight of the semantic (h-space) term")
    target: str = option("eps", choices=TARGETS, help="DiffLoss naturalness target (Table 4 ablation)")
    diffloss_fit: str = option("resize", choices=FIT_MODES,
                               help="how crops of another size are fitted to the prior's size for the DiffLoss terms")
    autocast: str = option("fp32", choices=AUTOCAST_CHOICES,
                           help="precision of the prior's UNet calls in the DiffLoss terms (bf16 on recent GPUs; fp16 "
                                "is scaled internally so DiffLoss' small gradients survive); the net trains in fp32")
    steps: int = option(1000, help="total optimisation steps")
    batch: int = option(4, flag="--batch-size", help="batch size (per process under torchrun)")
    crop: int = option(256, help="random crop size (smaller images are padded)")
    lr: float = option(1e-4, help="Adam learning rate")
    seed: int = option(0, help="seed of data order, crops, network init and DiffLoss draws")
    flip: bool = option(True, help="random horizontal flips", negative_help="disable random horizontal flips (on by default)")
    init: str | None = option(None, help="start from this ckpt.pt's network weights")
    init_optimizer: bool = option(False, help="with --init, also continue its Adam state")
    val_every: int = option(500, help="validate every N steps (0: only at the end)")
    val_images: int = option(16, help="number of validation pairs (0: no validation)")
    ckpt_every: int = option(500, help="checkpoint every N steps (0: only at the end)")
    workers: int = option(0, help="DataLoader worker processes")
    device: str = option("cpu", cli_default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    resume: bool = option(False, help="continue from RUN_DIR/ckpt.pt if it exists")
    progress: bool = option(True, help="show a progress bar", negative_help="hide the progress bar (shown by default)")
    plot: bool = option(True, help="write loss_curve.png", negative_help="do not write loss_curve.png (written by default)")

    def validate(self) -> "TrainConfig":
        check_int_fields(self, ("steps", "batch", "crop"), minimum=1)
        check_int_fields(self, ("val_every", "val_images", "ckpt_every", "workers"), minimum=0)
        check_positive_number("lr", self.lr)
        check_choice("diffloss_fit", self.diffloss_fit, FIT_MODES)
        check_choice("autocast", self.autocast, AUTOCAST_CHOICES)
        if not isinstance(self.net_kwargs, dict):
            raise TypeError(f"net_kwargs must be a dict, got {type(self.net_kwargs).__name__}")
        return self

    def prior_spec(self) -> tuple[str, str | None]:
        """(``--prior`` value for `diffloss.prior.load_prior`, config or None for the file's own)."""
        if self.prior in ("tiny", "random"):
            return "random", self.prior_config or "tiny"
        return self.prior, self.prior_config


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


def config_diff(saved: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    """The settings in which the config ``saved`` with a checkpoint and ``cfg`` differ in what they compute,
    as ``"name: checkpoint X vs now Y"`` lines (empty: ``cfg`` may resume or reuse that run)."""
    now = dataclasses.asdict(cfg)
    fields = RESULT_FIELDS
    if not now["diffloss"] and not saved.get("diffloss"):
        fields = tuple(k for k in fields if k not in DIFFLOSS_FIELDS)
    saved = {**FIELD_ADDED_DEFAULTS, **saved}
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in fields if saved.get(k) != now[k]]
