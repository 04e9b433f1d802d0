"""The settings of a prior-training run: `PriorTrainConfig`, one field per option of
``python -m diffloss.prior.train`` (flag, default, help, check and whether it changes the weights on the field)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from runkit.checks import fraction, nonnegative_int, nonnegative_number, one_of, positive_int, positive_number
from runkit.options import LoaderOptions, RunOptions, option

from diffloss.prior.configs import PRIOR_CONFIGS

__all__ = ["PriorTrainConfig", "as_config"]


@dataclass(kw_only=True)
class PriorTrainConfig(RunOptions, LoaderOptions):
    """Everything a prior-training run depends on (saved in ``config.json`` and ``train_state.pt``); each field
    is also the command-line option of the same name (``batch_size`` -> ``--batch-size``).

    ``cub_root``: a CUB root (its train split is used, never its test split) or a folder of images; None: the
    built-in mini-CUB. ``batch_size`` is the global batch (split over torchrun ranks). ``ema_rate``: the
    EMA decay, warmed up as ``min(ema_rate, (1 + s) / (10 + s))`` so early steps are not frozen at init (at
    step s the rate in force is the smaller of the two: 0.9978 at step 4,000 for 0.999, which is reached only
    from step 8,991 on; the EMA then averages over roughly the last 1 / (1 - rate) steps: 445 at step 4,000).
    ``steps`` is not a result setting: the schedule is constant after warm-up, so a finished run can be
    extended. ``ckpt_every``/``sample_every`` 0: only at the end (``ckpt_minutes`` still checkpoints after that much
    wall time).
    """

    out: str = option(help="run folder (prior.safetensors + prior.json, train_state.pt, log.csv, samples/)")
    cub_root: str | None = option(None, result=True, help="a CUB root (its train split) or a folder of images "
                                                          "(default: the built-in mini-CUB)")
    prior_config: str = option("tiny64", choices=sorted(PRIOR_CONFIGS), result=True, help="prior architecture")
    steps: int = option(20000, check=positive_int, help="optimisation steps (a finished run can be extended)")
    batch_size: int = option(16, check=positive_int, result=True, help="global batch size, split over torchrun "
                                                                       "processes")
    lr: float = option(5e-4, check=positive_number, result=True, help="AdamW learning rate")
    weight_decay: float = option(0.0, check=nonnegative_number, result=True, help="AdamW weight decay")
    warmup_steps: int = option(200, check=nonnegative_int, result=True, help="linear lr warm-up")
    grad_clip: float = option(1.0, check=nonnegative_number, result=True, help="gradient-norm clip (0: off)")
    ema_rate: float = option(0.999, check=fraction(zero=True, one=False), result=True,
                             help="EMA decay of the saved weights, a cap: the rate of step s is min(rate, (1+s)/(10+s)); "
                                  "for 0.999 that is 0.9978 at step 4,000 and 0.999 from step 8,991 on")
    seed: int = option(0, check=nonnegative_int, result=True, help="seed of init, data, timesteps and noise")
    min_scale: float = option(0.5, check=fraction(zero=False, one=True), result=True,
                              help="smallest crop area as a fraction of the image")
    flip: bool = option(True, result=True, help="random horizontal flips",
                        negative_help="disable random horizontal flips")
    ckpt_every: int = option(250, check=nonnegative_int,
                             help="write train_state.pt and prior.safetensors every N steps (0: only at the end and "
                                  "by --ckpt-minutes)")
    ckpt_minutes: float = option(10.0, check=nonnegative_number,
                                 help="also checkpoint whenever this many minutes of wall time have passed since the "
                                      "last checkpoint (0: off), so slow steps never risk more than that")
    sample_every: int = option(1000, check=nonnegative_int, help="write a DDIM sample grid every N steps (0: at "
                                                                 "the end)")
    sample_images: int = option(16, check=positive_int, help="images per grid")
    sample_steps: int = option(50, check=positive_int, help="DDIM steps per grid")
    export_dtype: str = option("float16", choices=("float16", "float32"), check=one_of(("float16", "float32")),
                               help="precision of the weights in prior.safetensors")
    loader_workers: int = option(0, check=nonnegative_int, help="DataLoader worker processes")

    def check(self) -> None:
        PRIOR_CONFIGS[self.prior_config]  # an unknown name: the valid ones


def as_config(settings: "PriorTrainConfig | Mapping[str, Any] | None", overrides: Mapping[str, Any]) -> PriorTrainConfig:
    """A validated `PriorTrainConfig` from a config, a dict of its fields or None, updated with ``overrides``."""
    names = {f.name for f in dataclasses.fields(PriorTrainConfig)}
    if settings is None:
        settings = {}
    if isinstance(settings, PriorTrainConfig):
        settings = dataclasses.asdict(settings)
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a PriorTrainConfig or a dict, got {type(settings).__name__}")
    merged = {**dict(settings), **overrides}
    unknown = set(merged) - names
    if unknown:
        raise ValueError(f"unknown prior-training option(s) {sorted(unknown)}; valid: {sorted(names)}")
    return PriorTrainConfig(**merged).validate()
