"""Train a restoration network with L2, optionally plus DiffLoss (Tan & Zhao 2024).

    python -m restoration.train --pairs synthetic:lowlight:3 --diffloss on --out runs/ll3-on \\
        --steps 300 --crop 64 --lr 1e-3

Paper defaults: Adam, lr 1e-4, batch 4, 256x256 random crops, gamma 1e-3, lambda 1e-2, target eps.
Loss: ``pixel = MSE(restored, clean)`` with both mapped to [-1, 1] (DiffLoss's convention); with
``--diffloss on`` the loss is ``pixel + gamma * (nat + lam * sem)``, the DiffLoss ``total``.

``--prior``: ``builtin`` (the default: the trained 64 px prior shipped with the toolkit, trained on mini-CUB's
clean train split), a checkpoint (``256x256_diffusion_uncond.pt`` for the paper, or a ``prior.safetensors`` or
run folder of ``python -m diffloss.prior.train``), or ``random`` (untrained weights of ``--prior-config``, default tiny:
for timing only, its DiffLoss terms carry no knowledge of images).

The prior works at a fixed size (builtin and tiny64: 64 px, tiny: 32 px, adm256: 256 px). When the training crop differs, the batch
is fitted to the prior size for the DiffLoss terms only (``--diffloss-fit resize``: bilinear, antialiased,
the default, keeps the whole crop's content; ``crop``: the centre crop, keeps pixel statistics); the pixel
term always uses the full crop. With crop == prior size (the paper's 256/256) nothing is resized and the
loss is exactly DiffLoss's ``total``.

Outputs in ``--out``: ``ckpt.pt`` (atomic; net name/kwargs, weights, optimizer, step, RNG states, config),
``log.csv`` (step, pixel, nat, sem, total, skipped: 1 where an inf/NaN loss or gradient skipped the
optimizer step), ``val.csv`` (validation PSNR/SSIM), ``loss_curve.png``,
``config.json`` and ``done.json`` when finished. ``ckpt.pt`` is written every ``--ckpt-every`` steps (500) and
whenever ``--ckpt-minutes`` (10) of wall time have passed since the last one, so a crash, a full disk or Ctrl-C
costs at most that much. Rerunning the same command continues from ``ckpt.pt`` and gives the same
weights as an uninterrupted run. Before the first write every training image (and each validation image used)
is decoded once (a few ms per CUB-sized image: ``python benchmarks/decode_check.py``), so a broken file is
refused up front. Multi-GPU: ``torchrun --nproc_per_node N -m restoration.train ...`` (DDP;
``--batch-size`` is per process); CPU works.

N processes at ``--batch-size B`` train on the same crops as one process at ``--batch-size N*B`` (rank r takes
slice r of each step's global batch) and DDP averages the gradients, so without DiffLoss the weights match the
one-process run's up to float rounding. With ``--diffloss on`` they do not match exactly: each rank draws
DiffLoss's timesteps and noise from its own generator (seeded by ``--seed`` and the rank), so the samples
of ranks 1.. get other draws than in one process; the difference enters through the gamma-weighted
diffusion terms only (tests/test_torchrun.py checks both). ``log.csv`` records rank 0's share of each
batch, not the loss of the global batch.

From Python: ``train_restoration(TrainConfig(out=..., ...))`` (the loop: ``restoration.train.loop``; the settings,
one field per flag: ``restoration.train.config``; checkpoints: ``restoration.checkpoint``; tables:
``runkit.rundir.read_table``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from runkit.cli import ArgumentParser
from runkit.errors import EXPECTED_ERRORS, run_cli
from runkit.options import add_config_arguments, config_from_args, flag_of

from restoration.train.config import DIFFLOSS_FIELDS, TrainConfig
from restoration.train.loop import train_restoration

__all__ = ["TrainConfig", "train_restoration", "build_parser", "main"]

#: What the CLI reports as one line (besides `runkit.errors.EXPECTED_ERRORS`): a bad --net-kwargs type, a
#: diverged loss.
ERRORS = (*EXPECTED_ERRORS, TypeError, FloatingPointError)


def build_parser() -> argparse.ArgumentParser:
    """One option per `TrainConfig` field: flags, defaults, help and checks live on the fields."""
    p = ArgumentParser(prog="python -m restoration.train", description=__doc__)
    return add_config_arguments(p, TrainConfig)


def _report(run_dir: Path) -> None:
    done = json.loads((run_dir / "done.json").read_text())
    val = done.get("val") or {}
    print(f"{run_dir}: {done['step']} steps, {done['num_parameters']:,} parameters, {done['seconds']:.1f} s"
          + (f", val PSNR {val['psnr']:.2f} dB SSIM {val['ssim']:.4f}" if val else ""))


def _refuse_ignored_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, cfg: TrainConfig) -> None:
    """Refuse DiffLoss flags that ``--diffloss off`` would silently ignore: ValueError naming them when any of
    `DIFFLOSS_FIELDS` was given a value other than its default (the field's, or a ``--config`` file's, so a
    replayed run is never refused)."""
    if cfg.diffloss:
        return
    given = [flag_of(TrainConfig, name) for name in DIFFLOSS_FIELDS if getattr(args, name) != parser.get_default(name)]
    if given:
        raise ValueError(f"{', '.join(given)} only matter(s) with --diffloss on, which this run does not use; add "
                         "--diffloss on, or drop the flag(s)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(TrainConfig, args)

    def work() -> Path:
        _refuse_ignored_flags(parser, args, cfg)
        return train_restoration(cfg)

    return run_cli(work, config=cfg, threads=cfg.threads, errors=ERRORS, report=_report, out=cfg.out)


if __name__ == "__main__":
    raise SystemExit(main())
