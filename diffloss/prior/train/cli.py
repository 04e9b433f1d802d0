"""Train a guided-diffusion prior (ADM family) on clean images: a CUB root's train split or any image folder.

    python -m diffloss.prior.train --prior-config tiny64 --cub-root CUB_200_2011 --out runs/prior-cub64 --steps 50000
    python -m diffloss.prior.train --prior-config tiny64 --out runs/prior-mini      # mini-CUB's train split
    torchrun --nproc_per_node 4 -m diffloss.prior.train --prior-config adm64 --cub-root CUB_200_2011 --out runs/p64

The UNet and its diffusion come from guided-diffusion's own ``create_model_and_diffusion`` (a named config
of ``diffloss.PRIOR_CONFIGS``: learned sigma, so the loss is guided-diffusion's hybrid ``training_losses``,
MSE on the noise plus the variational bound for the variance). Data: random resized crops (area
``--min-scale``..1, aspect 3/4..4/3) and horizontal flips at the prior's size, [-1, 1]. AdamW with a linear
warm-up, gradient clipping, and an exponential moving average (EMA) of the weights, which is what is saved.
Its rate is warmed up as ``min(--ema-rate, (1 + s) / (10 + s))`` at step s: for 0.999 it is 0.9978 at step
4,000 and reaches 0.999 only from step 8,991 on.

Every random draw of step ``s`` (which images, crops, flips, timesteps, noise) comes from a generator
seeded with ``(seed, s)``, so a run stopped and resumed (the same command again) gives the same weights
as an uninterrupted one, and under torchrun the global batch is the same as in one process (``--batch-size`` is
the global batch, split over the ranks).

Outputs in ``--out``:
    ``prior.safetensors``  the EMA weights (float16 unless ``--export-dtype float32``), and beside it
    ``prior.json``         their ``create_model_and_diffusion`` config, step and SHA-256:
                           ``diffloss.load_prior("OUT")`` and every ``--prior OUT`` (the folder or the
                           ``.safetensors``) take them as they take ``256x256_diffusion_uncond.pt``, no
                           flags needed;
    ``train_state.pt``  model, EMA, optimizer and step, to resume from (atomic, every ``--ckpt-every``);
    ``log.csv``, ``loss_curve.png``; ``samples/step_NNNNNNN.png`` DDIM samples every ``--sample-every``;
    ``config.json``, and ``done.json`` when finished.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from runkit.cli import ArgumentParser
from runkit.errors import EXPECTED_ERRORS, run_cli
from runkit.options import add_config_arguments, config_from_args

from diffloss.prior.spec import PRIOR_FILE
from diffloss.prior.train.config import PriorTrainConfig
from diffloss.prior.train.loop import train_prior

__all__ = ["PriorTrainConfig", "train_prior", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m diffloss.prior.train", description=__doc__)
    return add_config_arguments(p, PriorTrainConfig)


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(PriorTrainConfig, build_parser().parse_args(argv))
    return run_cli(lambda: train_prior(cfg), config=cfg, threads=cfg.threads, errors=(*EXPECTED_ERRORS, TypeError),
                   report=_report, out=cfg.out)


def _report(run_dir: Path) -> None:
    done = json.loads((run_dir / "done.json").read_text())
    print(f"{run_dir / PRIOR_FILE}: {done['step']} steps on {done['images']} images, "
          f"{done['num_parameters']:,} parameters, {done['seconds']:.1f} s, final loss {done['final_loss']:.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
