"""The restoration training loop: L2, optionally plus DiffLoss, with exact resume and DDP under torchrun.

`train_restoration(config)` has the shape of every training loop of the toolkit (`diffloss.prior.train.loop`,
`classifiers.finetune.loop`): the run folder is checked first (`runkit.rundir.RunDir`: new, resumable or
another command's), `_setup` checks every input and builds the network, optimizer and criterion (nothing is
written before all of them pass, then ``config.json``), `_resume` restores a checkpoint's state,
`_train_step` is one optimisation step, `_validate` scores the val pairs, `_save` writes the checkpoint and
tables, `_finish` the plot and ``done.json``. The math of a step is in
plain functions (`fit_to_prior`, `restoration_loss`); `validate_restorer` scores any network.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from runkit.cli import resolve_device_name
from runkit.distributed import barrier, distributed, gather, minutes_passed, on_rank0
from runkit.process import loader_worker_init

from restoration.checkpoint import load_checkpoint, read_checkpoint_file, save_checkpoint
from restoration.metrics import psnr_ssim
from restoration.nets import build_net, restore_tensor
from runkit.runtime import count_parameters
from cubdata import require_decodable
from restoration.pairs import (FolderPairs, PairSource, RandomCropPairs, StepBatchSampler, SyntheticPairs, open_pairs,
                               to_tensor)
from restoration.train.plots import save_loss_plot
from runkit.rundir import RunDir
from restoration.train.config import FIT_MODES, TrainConfig, as_config

log = logging.getLogger(__name__)

__all__ = ["train_restoration", "fit_to_prior", "restoration_loss", "validate_restorer", "COMMAND", "OUTPUTS",
           "LOG_FIELDS", "VAL_FIELDS"]

COMMAND = "restoration.train"
OUTPUTS = ("ckpt.pt", "log.csv", "val.csv", "loss_curve.png")
#: Columns of ``log.csv``: one row per optimisation step (``nat``/``sem`` empty without DiffLoss; ``skipped`` 1 where
#: a non-finite loss or gradient kept the optimizer from stepping, see `_train_step`).
LOG_FIELDS = ("step", "pixel", "nat", "sem", "total", "skipped", "seconds")
#: Columns of ``val.csv``: one row per validation.
VAL_FIELDS = ("step", "psnr", "ssim", "n")


# --------------------------------------------------------------------------------------------------
# the math of a step and of validation (plain functions)
# --------------------------------------------------------------------------------------------------
def fit_to_prior(restored: torch.Tensor, clean: torch.Tensor, size: int, mode: str = "resize"):
    """Bring ``[0, 1] NCHW`` batches to ``size x size`` for the prior: ``resize`` (bilinear, antialiased),
    ``crop`` (centre crop; resize if smaller) or ``none`` (unchanged). Differentiable."""
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {FIT_MODES}, got {mode!r}")
    h, w = restored.shape[-2:]
    if mode == "none" or (h, w) == (size, size):
        return restored, clean
    if mode == "crop" and h >= size and w >= size:
        y, x = (h - size) // 2, (w - size) // 2
        return restored[..., y : y + size, x : x + size], clean[..., y : y + size, x : x + size]
    kw = dict(size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(restored, **kw), F.interpolate(clean, **kw)


def restoration_loss(restored: torch.Tensor, clean: torch.Tensor, criterion=None, prior_size: int | None = None,
                     fit: str = "resize") -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of ``[0, 1] NCHW`` batches and its logged terms.

    ``pixel = MSE`` with both mapped to [-1, 1] (DiffLoss's convention), on the full crop. With a DiffLoss
    ``criterion`` the batches are fitted to ``prior_size`` (`fit_to_prior`) for its diffusion terms and the
    loss is ``pixel + (out.total - out.pixel)``, exactly DiffLoss's ``total`` when nothing was resized.
    Returns ``(loss, {"pixel", "nat", "sem"})``.
    """
    pixel = F.mse_loss(restored * 2 - 1, clean * 2 - 1)
    terms = {"pixel": float(pixel.detach())}
    if criterion is None:
        return pixel, terms
    out = criterion(*fit_to_prior(restored, clean, prior_size, fit))
    terms.update(nat=float(out.nat.detach()), sem=float(out.sem.detach()))
    return pixel + (out.total - out.pixel), terms


@torch.no_grad()
def validate_restorer(net: nn.Module, source: PairSource, max_images: int = 16,
                      device: str | torch.device = "cpu") -> dict:
    """Mean PSNR/SSIM of ``net`` over the first ``max_images`` pairs of ``source`` (full resolution, padded
    to the net's multiple, scored as the 8-bit images it would save). Also reports the degraded input's
    PSNR/SSIM. Restores ``net``'s train mode."""
    was_training = net.training
    net.eval()
    scores = []  # (psnr, ssim, input psnr, input ssim) per image
    try:
        for i in range(min(max_images, len(source))):
            low, high = source.load(i)
            x, y = to_tensor(low)[None].to(device), to_tensor(high)[None].to(device)
            out = torch.round(restore_tensor(net, x) * 255) / 255
            scores.append([float(v[0]) for v in (*psnr_ssim(out, y), *psnr_ssim(x, y))])
    finally:
        net.train(was_training)
    means = [float(np.mean(col)) for col in zip(*scores)] if scores else [float("nan")] * 4
    return {"psnr": means[0], "ssim": means[1], "n": len(scores), "input_psnr": means[2], "input_ssim": means[3]}


# --------------------------------------------------------------------------------------------------
# one training process
# --------------------------------------------------------------------------------------------------
def _seed_of(seed: int, rank: int) -> int:
    """The seed of one rank's generator, derived from the run's ``seed`` (DiffLoss draws; + 1000: dropout)."""
    return int(np.random.default_rng([seed, 2, rank]).integers(0, 2**62))


@dataclass
class _Run:
    """What one process of a training run holds; built by `_setup`."""

    cfg: TrainConfig
    run_dir: RunDir
    rank: int
    world: int
    device: torch.device
    net: nn.Module
    opt: torch.optim.Optimizer
    train_src: PairSource
    val_src: PairSource | None  # None with val_images 0
    crit: Any = None
    prior_size: int | None = None
    step: int = 0
    start: int = 0
    log_rows: list = field(default_factory=list)
    val_rows: list = field(default_factory=list)
    torch_rng: list | None = None  # per-rank global RNG states of a resumed checkpoint


def _resume_checkpoint(run_dir: RunDir, world: int) -> dict | None:
    """The checkpoint a run continues from (None: a fresh run); `RunDir.check` has already refused a folder
    with other settings. A checkpoint of another number of processes cannot continue."""
    ckpt_path = run_dir.file("ckpt.pt")
    if not run_dir.resuming or not ckpt_path.is_file():
        return None
    ckpt = read_checkpoint_file(ckpt_path)
    if ckpt.get("world_size", 1) != world:
        raise ValueError(f"cannot resume {ckpt_path}: it was trained on {ckpt.get('world_size')} process(es), now {world}")
    return ckpt


def _initial_net(cfg: TrainConfig, resuming: bool) -> tuple[nn.Module, dict | None]:
    """The network at step 0: built with ``seed`` (global RNG forked), then given ``init``'s weights unless
    the run is resuming. Returns it with the init checkpoint (None without one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_net(cfg.net, **cfg.net_kwargs)
    if not cfg.init or resuming:
        return net, None
    init_net, init_ckpt = load_checkpoint(cfg.init)
    if (init_ckpt["net"], init_ckpt.get("net_kwargs", {})) != (cfg.net, cfg.net_kwargs):
        raise ValueError(f"init checkpoint {cfg.init} holds {init_ckpt['net']} {init_ckpt.get('net_kwargs')}, "
                         f"but this run trains {cfg.net} {cfg.net_kwargs}")
    net.load_state_dict(init_net.state_dict())
    return net, init_ckpt


def _build_criterion(cfg: TrainConfig, device: torch.device, rank: int):
    """DiffLoss with the configured prior and this rank's generator, and the prior's image size."""
    from diffloss.criterion import DiffLoss
    from diffloss.prior import load_prior

    with torch.random.fork_rng(devices=[]):
        model, diffusion = load_prior(cfg.prior_spec(), device=str(device), init_seed=cfg.seed)
    gen = torch.Generator().manual_seed(_seed_of(cfg.seed, rank))
    amp = None if cfg.autocast == "fp32" else cfg.autocast
    criterion = DiffLoss(model, diffusion, gamma=cfg.gamma, lam=cfg.lam, target=cfg.target, generator=gen, autocast=amp)
    return criterion, int(model.image_size)


def _pair_files(source: PairSource | None, first: int | None = None) -> list[Path]:
    """The image files behind the first ``first`` pairs of ``source`` (all when None): both sides of folder
    pairs, the clean image of synthetic ones (its degraded side is computed)."""
    if source is None:
        return []
    n = len(source) if first is None else min(first, len(source))
    if isinstance(source, FolderPairs):
        return [f for pair in source.pairs[:n] for f in (pair.low, pair.high)]
    if isinstance(source, SyntheticPairs):
        return [source.index.image_path(r) for r in source.records[:n]]
    return []  # a pair source of your own: its files are its business


def _check_images(cfg: TrainConfig, train_src: PairSource, val_src: PairSource | None, rank: int) -> None:
    """Decode every training image and the validation images used (`cubdata.require_decodable`): a broken
    one stops the run in one line before ``config.json`` is written, not at the step that draws it."""
    files = _pair_files(train_src) + _pair_files(val_src, cfg.val_images)
    n = require_decodable(dict.fromkeys(files), desc="checking images", progress=cfg.progress and rank == 0)
    log.info("all %d training and validation images decode", n)


def _setup(cfg: TrainConfig, run_dir: RunDir, rank: int, world: int, device: torch.device
           ) -> tuple[_Run, dict | None]:
    """Check every input (resume checkpoint, pairs, network, init checkpoint, prior) and build the run, then
    write ``config.json``: a refused run leaves nothing behind. Returns the run and the checkpoint to resume."""
    ckpt = _resume_checkpoint(run_dir, world)
    train_src = open_pairs(cfg.pairs, "train", seed=cfg.seed, val_fraction=cfg.val_fraction)
    val_src = None if not cfg.val_images else (
        open_pairs(cfg.val_pairs, "all", seed=cfg.seed, val_fraction=cfg.val_fraction) if cfg.val_pairs
        else open_pairs(cfg.pairs, "val", seed=cfg.seed, val_fraction=cfg.val_fraction))
    log.info("training pairs: %r; validation pairs: %r", train_src, val_src)
    on_rank0(lambda: _check_images(cfg, train_src, val_src, rank), rank, world)  # a broken image: before any write
    net, init_ckpt = _initial_net(cfg, resuming=ckpt is not None)
    net = net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    if init_ckpt is not None and cfg.init_optimizer:
        opt.load_state_dict(init_ckpt["optimizer"])
        for group in opt.param_groups:
            group["lr"] = cfg.lr
    run = _Run(cfg, run_dir, rank, world, device, net, opt, train_src, val_src)
    if cfg.diffloss:
        run.crit, run.prior_size = _build_criterion(cfg, device, rank)
    if rank == 0:
        run_dir.start(clear=OUTPUTS)
    return run, ckpt


def _resume(run: _Run, ckpt: dict) -> None:
    """Continue from ``ckpt``: weights, Adam state, step, generator states and the logs up to its step."""
    run.net.load_state_dict(ckpt["state_dict"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.start = run.step = int(ckpt["step"])
    rng = ckpt["rng"]
    if run.crit is not None:
        run.crit.generator.set_state(rng["diffloss"][run.rank])
    run.torch_rng = rng.get("torch")
    run.log_rows = run.run_dir.read_table("log.csv", up_to_step=run.start)
    run.val_rows = run.run_dir.read_table("val.csv", up_to_step=run.start)
    log.info("resuming %s at step %d of %d", run.run_dir.path, run.start, run.cfg.steps)


def _loader(run: _Run) -> torch.utils.data.DataLoader:
    """This rank's batches of steps ``start .. steps - 1`` (a pure function of seed and step)."""
    cfg = run.cfg
    return torch.utils.data.DataLoader(
        RandomCropPairs(run.train_src, cfg.crop, cfg.flip),
        batch_sampler=StepBatchSampler(len(run.train_src), cfg.batch_size, cfg.seed, run.start, cfg.steps, run.rank, run.world),
        num_workers=cfg.loader_workers,
        pin_memory=run.device.type == "cuda",
        worker_init_fn=loader_worker_init() if cfg.loader_workers else None,  # workers die with this process
    )


def _all_finite(run: _Run, loss: torch.Tensor) -> bool:
    """Whether the loss and every gradient of the net are finite (one device sync). Under DDP the gradients
    are already all-reduced; the flag is reduced too, so every rank skips or steps together."""
    flags = [torch.isfinite(loss.detach()).all()]
    flags += [torch.isfinite(p.grad).all() for p in run.net.parameters() if p.grad is not None]
    ok = torch.stack(flags).all()
    if run.world > 1:
        import torch.distributed as dist

        ok = ok.float().to(run.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def _train_step(run: _Run, model: nn.Module, low: torch.Tensor, high: torch.Tensor) -> dict[str, float]:
    """One optimisation step on a batch; returns its log row (without ``seconds``).

    A non-finite loss or gradient (DiffLoss's float16 gradient overflowing, a diverging net) never reaches
    the optimizer: the step is skipped, as torch's GradScaler skips it, with a warning and ``skipped`` = 1 in
    its row of ``log.csv``. A run whose every step was skipped ends with FloatingPointError (one line)."""
    low, high = low.to(run.device, non_blocking=True), high.to(run.device, non_blocking=True)
    loss, terms = restoration_loss(model(low), high, run.crit, run.prior_size, run.cfg.diffloss_fit)
    run.opt.zero_grad(set_to_none=True)
    overflows = run.crit.grad_overflows if run.crit is not None else 0
    loss.backward()
    finite = _all_finite(run, loss)
    run.step += 1
    row = {"step": run.step, **terms, "total": float(loss.detach()), "skipped": int(not finite)}
    if finite:
        run.opt.step()
        return row
    skipped = 1 + sum(r.get("skipped", 0) for r in run.log_rows)
    if run.crit is not None and run.crit.grad_overflows > overflows:
        why = "DiffLoss's float16 gradient overflowed; --autocast bf16 has float32's range"
    else:
        why = f"loss {row['total']:g}, or an inf/NaN gradient; lower --lr (now {run.cfg.lr})"
    log.warning("step %d skipped, the optimizer did not step (%s); %d of %d steps skipped so far",
                run.step, why, skipped, run.step)
    if run.step == run.cfg.steps and skipped == run.step:
        raise FloatingPointError(f"every one of the {run.step} steps was skipped: their loss or gradients were "
                                 f"never finite, so nothing was trained ({why})")
    return row


def _validate(run: _Run) -> None:
    v = validate_restorer(run.net, run.val_src, run.cfg.val_images, run.device)
    run.val_rows.append({"step": run.step, "psnr": round(v["psnr"], 4), "ssim": round(v["ssim"], 5), "n": v["n"]})
    log.info("step %d: val PSNR %.2f dB SSIM %.4f (input %.2f / %.4f, %d images)", run.step, v["psnr"], v["ssim"],
             v["input_psnr"], v["input_ssim"], v["n"])


def _save(run: _Run, final: bool) -> None:
    """Checkpoint (with every rank's generator states) and tables, written by rank 0; all ranks wait."""
    diffloss_states = gather(run.crit.generator.get_state() if run.crit is not None else None, run.world)
    torch_states = gather(torch.get_rng_state(), run.world)
    if run.rank == 0:
        cfg = run.cfg
        save_checkpoint(run.run_dir.file("ckpt.pt"), run.net, cfg.net, cfg.net_kwargs, run.opt, run.step,
                        world_size=run.world, config=cfg.settings(),
                        rng={"diffloss": diffloss_states, "torch": torch_states},
                        val=run.val_rows[-1] if run.val_rows else None, final=final)
        run.run_dir.write_table("log.csv", run.log_rows, LOG_FIELDS)
        run.run_dir.write_table("val.csv", run.val_rows, VAL_FIELDS)
    barrier(run.world)


def _due(every: int, step: int, last: bool) -> bool:
    return bool(every and step % every == 0) or last


def _train_steps(run: _Run) -> None:
    """Steps ``start + 1 .. steps``, validating and checkpointing as configured. The global RNG (dropout etc.
    inside user networks) is forked, so the caller's state is untouched, seeded per rank, and restored from
    the checkpoint on resume."""
    cfg = run.cfg
    model = run.net
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(run.net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    t0, elapsed0 = time.perf_counter(), run.log_rows[-1]["seconds"] if run.log_rows else 0.0
    last_save = time.monotonic()  # --ckpt-minutes counts from here, then from each checkpoint
    bar = tqdm(total=cfg.steps, initial=run.start, desc=f"train {run.run_dir.path.name}", dynamic_ncols=True,
               disable=not cfg.progress or run.rank != 0)
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        if run.torch_rng:
            torch.set_rng_state(run.torch_rng[run.rank])
        else:
            torch.manual_seed(_seed_of(cfg.seed, run.rank + 1000))
        for low, high in _loader(run):
            row = _train_step(run, model, low, high)
            row["seconds"] = round(elapsed0 + time.perf_counter() - t0, 3)
            run.log_rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['total']:.4g}")
            last = run.step == cfg.steps
            if run.rank == 0 and cfg.val_images and _due(cfg.val_every, run.step, last):
                _validate(run)
            if _due(cfg.ckpt_every, run.step, last) or minutes_passed(cfg.ckpt_minutes, last_save, run.world, run.device):
                _save(run, final=last)
                last_save = time.monotonic()
    bar.close()


def _finish(run: _Run) -> None:
    """Rank 0 writes the loss plot and ``done.json`` (the run's config, step, last validation, size, time)."""
    if run.start >= run.cfg.steps:
        log.info("%s already trained for %d steps (asked %d): nothing to do", run.run_dir.path, run.start,
                 run.cfg.steps)
    if run.rank == 0:
        if run.cfg.plot and run.log_rows:
            save_loss_plot(run.run_dir.file("loss_curve.png"), run.log_rows, run.val_rows, title=run.run_dir.path.name)
        run.run_dir.finish({
            "step": max(run.step, run.start), "val": run.val_rows[-1] if run.val_rows else None,
            "num_parameters": count_parameters(run.net),
            "seconds": run.log_rows[-1]["seconds"] if run.log_rows else 0.0})
    barrier(run.world)


def train_restoration(config: TrainConfig | Mapping[str, Any] | None = None, **overrides) -> Path:
    """Train a restoration network as configured (see `TrainConfig`); returns the run folder holding
    ``ckpt.pt``, ``log.csv``, ``val.csv``, ``config.json``, ``done.json`` (and ``loss_curve.png``).

    Deterministic: the same config gives the same weights on the same machine, and a run stopped and
    resumed (the same config again) gives the same weights as an uninterrupted one.
    """
    cfg = as_config(config, overrides)
    run_dir = RunDir(cfg.out, COMMAND, cfg, outputs=OUTPUTS).check()
    with distributed(resolve_device_name(cfg.device)) as (rank, world, device):
        run, ckpt = _setup(cfg, run_dir, rank, world, device)
        if ckpt is not None:
            _resume(run, ckpt)
        _train_steps(run)
        _finish(run)
    return run.run_dir.path
