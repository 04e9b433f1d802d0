"""The prior-training loop: guided-diffusion's hybrid ``training_losses`` with AdamW, linear warm-up, gradient
clipping and an EMA of the weights; resumable (``train_state.pt``) and the same under torchrun.

`train_prior(config)` has the shape of every training loop of the toolkit (`restoration.train.loop`,
`classifiers.finetune.loop`): the run folder is checked first (`runkit.rundir.RunDir`), `_prepare` checks every
input and builds the model (then ``config.json``), the steps save ``train_state.pt`` and the exported prior,
`_finish` writes ``done.json``; see ``python -m diffloss.prior.train --help`` for the outputs.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from runkit.cli import resolve_device_name
from runkit.distributed import barrier, distributed, minutes_passed, on_rank0
from runkit.process import loader_worker_init
from runkit.files import atomic_save_torch
from runkit.rundir import RunDir

from runkit.runtime import count_parameters
from cubdata import require_decodable
from diffloss.prior.configs import prior_kwargs
from diffloss.prior.train.data import CropDataset, StepBatches, step_draws, training_images
from diffloss.prior.loading import build_trainable_prior
from diffloss.prior.spec import PRIOR_FILE
from diffloss.prior.train.config import PriorTrainConfig, as_config
from diffloss.prior.train.outputs import LOG_COLUMNS, export_prior, write_loss_plot, write_samples

log = logging.getLogger(__name__)

__all__ = ["STATE_FORMAT", "COMMAND", "OUTPUTS", "train_prior", "load_train_state", "lr_at", "ema_update"]

STATE_FORMAT = "diffloss-prior-train/1"
COMMAND = "diffloss.prior.train"
OUTPUTS = ("train_state.pt", "prior.safetensors", "prior.json", "log.csv", "loss_curve.png", "samples/*")


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """``ema = rate * ema + (1 - rate) * model``, parameter by parameter, in place."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - rate)


def lr_at(cfg: PriorTrainConfig, step: int) -> float:
    """The learning rate of ``step``: linear warm-up over ``cfg.warmup_steps``, then constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def load_train_state(run_dir: RunDir) -> dict | None:
    """The ``train_state.pt`` to resume from (None: a fresh run); `RunDir.check` has already refused a folder
    with other settings. ValueError when the file is not ours."""
    path = run_dir.file("train_state.pt")
    if not run_dir.resuming or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ValueError(f"{path} is not a prior training state of this toolkit ({type(err).__name__}); "
                         "pass --overwrite to start again or choose another --out") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a prior training state of this toolkit (expected format {STATE_FORMAT!r})")
    return state


@dataclass
class _PriorRun:
    """Everything one rank's training run holds."""

    cfg: PriorTrainConfig
    rank: int
    world: int
    device: torch.device
    run_dir: RunDir
    paths: list[Path]
    kwargs: dict[str, Any]
    model: nn.Module
    diffusion: Any
    ema: nn.Module
    opt: torch.optim.Optimizer
    start: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.kwargs["image_size"])


def _prepare(cfg: PriorTrainConfig, run_dir: RunDir, rank: int, world: int, device: torch.device) -> _PriorRun:
    """Check, build the model, EMA and optimiser, restore a resumed state; rank 0 writes ``config.json``."""
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
                         f"{world} torchrun processes")
    paths = training_images(cfg.cub_root)  # fails before anything is written
    # every image decoded once, so a broken one is refused now, not at the step that draws it
    on_rank0(lambda: require_decodable(paths, desc="checking images", progress=cfg.progress and rank == 0), rank, world)
    state = load_train_state(run_dir)
    kwargs = prior_kwargs(cfg.prior_config)
    model, diffusion = build_trainable_prior(kwargs, seed=cfg.seed)
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = _PriorRun(cfg, rank, world, device, run_dir, paths, kwargs, model, diffusion, ema, opt)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        run.start = int(state["step"])
        run.rows = run_dir.read_table("log.csv", up_to_step=run.start)
        log.info("resuming %s at step %d of %d", run_dir.path, run.start, cfg.steps)
    if rank == 0:
        run_dir.start(clear=OUTPUTS)
        log.info("training prior %s (%s parameters, %d px) on %d images from %s", cfg.prior_config,
                 f"{count_parameters(model):,}", run.size, len(paths), cfg.cub_root or "mini-CUB")
    return run


def _save(run: _PriorRun, step: int) -> None:
    """Rank 0: ``train_state.pt``, ``prior.safetensors`` + ``prior.json`` (the EMA), ``log.csv`` and the loss
    plot, each atomic."""
    if run.rank != 0:
        return
    cfg = run.cfg
    atomic_save_torch({"format": STATE_FORMAT, "config": cfg.settings(), "kwargs": run.kwargs,
                       "step": step, "world_size": run.world, "model": run.model.state_dict(),
                       "ema": run.ema.state_dict(), "optimizer": run.opt.state_dict()}, run.run_dir.file("train_state.pt"))
    meta = {"data": cfg.cub_root or "mini-CUB train split", "images": len(run.paths), "seed": cfg.seed,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "ema_rate": cfg.ema_rate}
    export_prior(run.ema, run.kwargs, run.run_dir.file(PRIOR_FILE), config_name=cfg.prior_config, step=step,
                 meta=meta, dtype=cfg.export_dtype)
    run.run_dir.write_table("log.csv", run.rows, LOG_COLUMNS, float_format=".6g")
    if run.rows:
        write_loss_plot(run.run_dir.path, run.rows)


def _optimise(run: _PriorRun, net: nn.Module, crops: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
    """One optimiser step of ``step`` on this rank's crops; ``(loss, mse, vb)`` averaged over ranks, and the lr."""
    cfg, device = run.cfg, run.device
    d = step_draws(cfg.seed, step, cfg.batch_size, len(run.paths), int(run.diffusion.num_timesteps), run.size)
    mine = torch.arange(cfg.batch_size)[run.rank::run.world]  # the sampler gave this rank the same slots
    t = d["t"][mine].to(device)
    noise = d["noise"][mine].to(device)
    x = crops.to(device)
    lr = lr_at(cfg, step)
    for group in run.opt.param_groups:
        group["lr"] = lr
    losses = run.diffusion.training_losses(net, x, t, noise=noise)
    loss = losses["loss"].mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.opt.step()
    ema_update(run.ema, run.model, min(cfg.ema_rate, (1 + step) / (10 + step)))
    vals = torch.stack([loss.detach(), losses["mse"].mean().detach(), losses["vb"].mean().detach()])
    if run.world > 1:
        import torch.distributed as dist

        dist.all_reduce(vals)
        vals /= run.world
    return vals, lr


def _loader(run: _PriorRun) -> torch.utils.data.DataLoader:
    cfg = run.cfg
    return torch.utils.data.DataLoader(
        CropDataset(run.paths, run.size, cfg.min_scale, cfg.flip),
        batch_sampler=StepBatches(cfg, len(run.paths), int(run.diffusion.num_timesteps), run.size, run.start,
                                  run.rank, run.world),
        num_workers=cfg.loader_workers, pin_memory=run.device.type == "cuda", persistent_workers=False,
        worker_init_fn=loader_worker_init() if cfg.loader_workers else None)  # workers die with this process


def _wrap_ddp(run: _PriorRun) -> nn.Module:
    if run.world == 1:
        return run.model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def train_prior(settings: PriorTrainConfig | Mapping[str, Any] | None = None, **overrides) -> Path:
    """Train a prior as configured by ``settings`` and keyword overrides (the fields of `PriorTrainConfig`,
    e.g. ``train_prior(out="runs/p", prior_config="tiny64", steps=1000)``); returns the run folder
    (``prior.safetensors``, ``prior.json``).

    Deterministic: the same config gives the same weights on the same machine, and a stopped run started
    again with the same config resumes and gives the same weights as an uninterrupted one."""
    cfg = as_config(settings, overrides)
    run_dir = RunDir(cfg.out, COMMAND, cfg, outputs=OUTPUTS).check()
    with distributed(resolve_device_name(cfg.device)) as (rank, world, device):
        return _train(cfg, run_dir, rank, world, device)


def _train(cfg: PriorTrainConfig, run_dir: RunDir, rank: int, world: int, device: torch.device) -> Path:
    """Train (or resume) the run of ``cfg`` on this rank; returns the run folder."""
    run = _prepare(cfg, run_dir, rank, world, device)
    net = _wrap_ddp(run)
    elapsed0 = run.rows[-1]["seconds"] if run.rows else 0.0
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=run.start, desc=f"prior {run.run_dir.path.name}",
               disable=not cfg.progress or rank != 0, dynamic_ncols=True)
    step = run.start
    last_save = time.monotonic()  # --ckpt-minutes counts from here, then from each checkpoint
    for crops in _loader(run):
        vals, lr = _optimise(run, net, crops, step)
        step += 1
        run.rows.append({"step": step, "loss": float(vals[0]), "mse": float(vals[1]), "vb": float(vals[2]), "lr": lr,
                         "seconds": elapsed0 + time.perf_counter() - t0})
        bar.update(1)
        bar.set_postfix(loss=f"{run.rows[-1]['loss']:.4f}")
        final = step == cfg.steps
        due = final or bool(cfg.ckpt_every and step % cfg.ckpt_every == 0)
        if due or minutes_passed(cfg.ckpt_minutes, last_save, world, device):
            _save(run, step)
            last_save = time.monotonic()
        if rank == 0 and (final or (cfg.sample_every and step % cfg.sample_every == 0)):
            write_samples(run.ema, run.diffusion, cfg, run.size, device,
                          run.run_dir.file(f"samples/step_{step:07d}.png"))
        barrier(world)
    bar.close()
    if rank == 0:
        _finish(run, step)
    barrier(world)
    return run.run_dir.path


def _finish(run: _PriorRun, step: int) -> None:
    """Rank 0 at the end: save a run that had nothing left to do, and write ``done.json``."""
    if run.start == run.cfg.steps:
        _save(run, step)
    rows = run.rows
    run.run_dir.finish({"step": run.cfg.steps, "images": len(run.paths),
                        "num_parameters": count_parameters(run.model),
                        "seconds": rows[-1]["seconds"] if rows else 0.0,
                        "final_loss": rows[-1]["loss"] if rows else None})
