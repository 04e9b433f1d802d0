"""Train a guided-diffusion prior (ADM family) on clean images: a CUB root's train split or any image folder.

    python -m diffloss.prior.train --config tiny64 --data CUB_200_2011 --out runs/prior-cub64 --steps 50000
    python -m diffloss.prior.train --config tiny64 --out runs/prior-mini      # mini-CUB's train split
    torchrun --nproc_per_node 4 -m diffloss.prior.train --config adm64 --data CUB_200_2011 --out runs/p64

The UNet and its diffusion come from guided-diffusion's own ``create_model_and_diffusion`` (a named config
of ``diffloss.PRIOR_CONFIGS``: learned sigma, so the loss is guided-diffusion's hybrid ``training_losses``,
MSE on the noise plus the variational bound for the variance). Data: random resized crops (area
``--min-scale``..1, aspect 3/4..4/3) and horizontal flips at the prior's size, [-1, 1]. AdamW with a linear
warm-up, gradient clipping, and an exponential moving average (EMA) of the weights, which is what is saved.

Every random draw of step ``s`` (which images, crops, flips, timesteps, noise) comes from a generator
seeded with ``(seed, s)``, so a run stopped and resumed (``--resume``) gives the same weights as an
uninterrupted one, and under torchrun the global batch is the same as in one process (``--batch-size`` is
the global batch, split over the ranks).

Outputs in ``--out``:
    ``prior.pt``        the EMA weights (float16 unless ``--export-dtype float32``) with their
                        ``create_model_and_diffusion`` config: ``diffloss.load_adm("prior.pt")`` and every
                        ``--prior PATH`` take it as they take ``256x256_diffusion_uncond.pt``, no flags needed;
    ``train_state.pt``  model, EMA, optimizer and step, for ``--resume`` (atomic, every ``--ckpt-every``);
    ``log.csv``, ``loss_curve.png``; ``samples/step_NNNNNNN.png`` DDIM samples every ``--sample-every``;
    ``config.json``, and ``done.json`` when finished.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from runkit.cli import ArgumentParser, add_config_arguments, config_from_args, option, resolve_device_name
from runkit.distributed import distributed
from runkit.errors import EXPECTED_ERRORS, run_cli

from diffloss.prior.configs import PRIOR_CONFIGS
from diffloss.prior.train.data import random_resized_crop, step_draws, training_images
from diffloss.prior.loading import PRIOR_FORMAT  # noqa: F401 - importable from here, as before
from diffloss.prior.train.outputs import LOG_COLUMNS, export_prior, image_grid, plot_prior_loss, read_prior_log
from diffloss.prior.train.loop import STATE_FORMAT, run_training
from runkit.checks import check_choice, check_fraction, check_int_fields, check_positive_number

log = logging.getLogger(__name__)

__all__ = ["PriorTrainConfig", "train_prior", "training_images", "step_draws", "random_resized_crop",
           "export_prior", "read_prior_log", "plot_prior_loss", "image_grid", "LOG_COLUMNS", "STATE_FORMAT",
           "build_parser", "main"]


@dataclass
class PriorTrainConfig:
    """Everything a prior-training run depends on (saved in ``config.json`` and ``train_state.pt``); each field
    is also the command-line option of the same name (``batch_size`` -> ``--batch-size``).

    ``data``: a CUB root (its train split is used, never its test split) or a folder of images; None: the
    built-in mini-CUB. ``batch_size`` is the global batch (split over torchrun ranks). ``ema_rate``: the
    EMA decay, warmed up as ``min(ema_rate, (1 + s) / (10 + s))`` so early steps are not frozen at init.
    ``ckpt_every``/``sample_every`` 0: only at the end.
    """

    out: str = option(help="run folder (prior.pt, train_state.pt, log.csv, samples/)")
    data: str | None = option(None, help="a CUB root (its train split) or a folder of images "
                                         "(default: the built-in mini-CUB)")
    config: str = option("tiny64", choices=sorted(PRIOR_CONFIGS), help="prior architecture")
    steps: int = option(20000, help="optimisation steps")
    batch_size: int = option(16, help="global batch size, split over torchrun processes")
    lr: float = option(5e-4, help="AdamW learning rate")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    warmup_steps: int = option(200, help="linear lr warm-up")
    grad_clip: float = option(1.0, help="gradient-norm clip (0: off)")
    ema_rate: float = option(0.999, help="EMA decay of the saved weights")
    seed: int = option(0, help="seed of init, data, timesteps and noise")
    min_scale: float = option(0.5, help="smallest crop area as a fraction of the image")
    flip: bool = option(True, help="random horizontal flips", negative_help="disable random horizontal flips")
    ckpt_every: int = option(250, help="write train_state.pt and prior.pt every N steps (0: at the end)")
    sample_every: int = option(1000, help="write a DDIM sample grid every N steps (0: at the end)")
    sample_images: int = option(16, help="images per grid")
    sample_steps: int = option(50, help="DDIM steps per grid")
    export_dtype: str = option("float16", choices=("float16", "float32"), help="precision of the weights in prior.pt")
    workers: int = option(0, help="DataLoader worker processes")
    device: str = option("auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    resume: bool = option(False, help="continue from OUT/train_state.pt")
    progress: bool = option(True, help="show a progress bar", negative_help="hide the progress bar")

    def validate(self) -> "PriorTrainConfig":
        if self.config not in PRIOR_CONFIGS:
            raise ValueError(f"unknown prior config {self.config!r}; valid: {', '.join(sorted(PRIOR_CONFIGS))}")
        check_int_fields(self, ("steps", "batch_size", "sample_images", "sample_steps"), minimum=1)
        check_int_fields(self, ("warmup_steps", "ckpt_every", "sample_every", "workers"), minimum=0)
        check_positive_number("lr", self.lr)
        check_fraction("ema_rate", self.ema_rate, zero=True, one=False)
        check_fraction("min_scale", self.min_scale, zero=False, one=True)
        check_choice("export_dtype", self.export_dtype, ("float16", "float32"))
        return self


def _as_config(settings: PriorTrainConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> PriorTrainConfig:
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


def train_prior(settings: PriorTrainConfig | Mapping[str, Any] | None = None, **overrides) -> Path:
    """Train a prior as configured by ``settings`` and keyword overrides (the fields of `PriorTrainConfig`,
    e.g. ``train_prior(out="runs/p", config="tiny64", steps=1000)``); returns the run folder (``prior.pt``).

    Deterministic: the same config gives the same weights on the same machine, and a stopped run resumed
    with ``resume=True`` gives the same weights as an uninterrupted one."""
    cfg = _as_config(settings, overrides)
    with distributed(resolve_device_name(cfg.device)) as (rank, world, device):
        return run_training(cfg, rank, world, device)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m diffloss.prior.train", description=__doc__)
    add_config_arguments(p, PriorTrainConfig)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: train_prior(config_from_args(PriorTrainConfig, args)), threads=args.threads,
                   errors=(*EXPECTED_ERRORS, TypeError), report=_report, out=args.out)


def _report(run_dir: Path) -> None:
    done = json.loads((run_dir / "done.json").read_text())
    print(f"{run_dir / 'prior.pt'}: {done['step']} steps on {done['images']} images, "
          f"{done['num_parameters']:,} parameters, {done['seconds']:.1f} s, final loss {done['final_loss']:.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
