"""Train a restoration network with L2, optionally plus DiffLoss (Tan & Zhao 2024).

    python -m diffloss.train --pairs synthetic:lowlight:3 --diffloss on --out runs/ll3-on \\
        --steps 300 --crop 64 --lr 1e-3

Paper defaults: Adam, lr 1e-4, batch 4, 256x256 random crops, gamma 1e-3, lambda 1e-2, target eps.
Loss: ``pixel = MSE(restored, clean)`` with both mapped to [-1, 1] (DiffLoss's convention); with
``--diffloss on`` the loss is ``pixel + gamma * (nat + lam * sem)``, the DiffLoss ``total``.

``--prior``: ``builtin`` (the default: the trained 64 px prior shipped with the toolkit, trained on mini-CUB's
clean train split), a checkpoint (``256x256_diffusion_uncond.pt`` for the paper, or a ``prior.pt`` of
``python -m diffloss.train_prior``), or ``random`` (untrained weights of ``--prior-config``, default tiny:
for timing only, its DiffLoss terms carry no knowledge of images).

The prior works at a fixed size (builtin and tiny64: 64 px, tiny: 32 px, adm256: 256 px). When the training crop differs, the batch
is fitted to the prior size for the DiffLoss terms only (``--diffloss-fit resize``: bilinear, antialiased,
the default, keeps the whole crop's content; ``crop``: the centre crop, keeps pixel statistics); the pixel
term always uses the full crop. With crop == prior size (the paper's 256/256) nothing is resized and the
loss is exactly DiffLoss's ``total``.

Outputs in ``--out``: ``ckpt.pt`` (atomic; net name/kwargs, weights, optimizer, step, RNG states, config),
``log.csv`` (step, pixel, nat, sem, total), ``val.csv`` (validation PSNR/SSIM), ``loss_curve.png``,
``config.json`` and ``done.json`` when finished. ``--resume`` continues from ``ckpt.pt`` and gives the same
weights as an uninterrupted run. Multi-GPU: ``torchrun --nproc_per_node N -m diffloss.train ...`` (DDP;
``--batch-size`` is per process); CPU works.

N processes at ``--batch-size B`` train on the same crops as one process at ``--batch-size N*B`` (rank r takes
slice r of each step's global batch) and DDP averages the gradients, so without DiffLoss the weights match the
one-process run's up to float rounding. With ``--diffloss on`` they do not match exactly: each rank draws
DiffLoss's timesteps and noise from its own generator (seeded by ``--seed`` and the rank), so the samples
of ranks 1.. get other draws than in one process; the difference enters through the gamma-weighted
diffusion terms only (tests/test_torchrun.py checks both). ``log.csv`` records rank 0's share of each
batch, not the loss of the global batch.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from cubdata import ImageDecodeError, atomic_save_torch, atomic_write_bytes, atomic_write_text, cache_dir

from cubdata.distributed import barrier, distributed, gather
from .metrics import psnr_ssim
from .nets import DEFAULT_NET, RESTORATION_NETS, build_net, count_parameters, pad_multiple_of, restore_tensor
from .pairs import RandomCropPairs, StepBatchSampler, open_pairs, to_tensor

log = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "train_restoration",
    "config_diff",
    "load_checkpoint",
    "validate_restorer",
    "psnr_ssim",
    "fit_to_prior",
    "plot_loss_curves",
    "read_log",
    "CKPT_FORMAT",
    "build_parser",
    "main",
]

CKPT_FORMAT = "diffloss-restoration/1"
LOG_FIELDS = ("step", "pixel", "nat", "sem", "total", "seconds")
VAL_FIELDS = ("step", "psnr", "ssim", "n")
FIT_MODES = ("resize", "crop", "none")
# Config fields that change what is computed: a resumed run must agree with the checkpoint on them.
_RESULT_FIELDS = ("net", "net_kwargs", "pairs", "diffloss", "prior", "prior_config", "gamma", "lam", "target",
                  "diffloss_fit", "batch", "crop", "lr", "seed", "flip", "init", "init_optimizer")


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

    out: str
    pairs: str = "synthetic:lowlight:3"
    val_pairs: str | None = None
    net: str = DEFAULT_NET
    net_kwargs: dict = field(default_factory=dict)
    diffloss: bool = False
    prior: str = "builtin"
    prior_config: str | None = None
    gamma: float = 1e-3
    lam: float = 1e-2
    target: str = "eps"
    diffloss_fit: str = "resize"
    steps: int = 1000
    batch: int = 4
    crop: int = 256
    lr: float = 1e-4
    seed: int = 0
    flip: bool = True
    init: str | None = None
    init_optimizer: bool = False
    val_every: int = 500
    val_images: int = 16
    ckpt_every: int = 500
    workers: int = 0
    device: str = "cpu"
    resume: bool = False
    progress: bool = True
    plot: bool = True

    def validate(self) -> "TrainConfig":
        for name in ("steps", "batch", "crop"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("val_every", "val_images", "ckpt_every", "workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.diffloss_fit not in FIT_MODES:
            raise ValueError(f"diffloss_fit must be one of {FIT_MODES}, got {self.diffloss_fit!r}")
        if not isinstance(self.net_kwargs, dict):
            raise TypeError(f"net_kwargs must be a dict, got {type(self.net_kwargs).__name__}")
        return self

    def prior_spec(self) -> tuple[str, str | None]:
        """(``--prior`` value for `diffloss.prior.load_prior`, config or None for the file's own)."""
        if self.prior in ("tiny", "random"):
            return "random", self.prior_config or "tiny"
        return self.prior, self.prior_config


def _as_config(config: TrainConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> TrainConfig:
    if config is None:
        cfg = TrainConfig(**overrides)
    elif isinstance(config, TrainConfig):
        cfg = dataclasses.replace(config, **overrides)
    elif isinstance(config, Mapping):
        unknown = set(config) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            raise ValueError(f"unknown training option(s) {sorted(unknown)}; valid: {[f.name for f in dataclasses.fields(TrainConfig)]}")
        cfg = TrainConfig(**{**dict(config), **overrides})
    else:
        raise TypeError(f"config must be a TrainConfig or a dict, got {type(config).__name__}")
    return cfg.validate()


# --------------------------------------------------------------------------------------------------
# metrics, fitting, plots (plain functions)
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


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a ``log.csv`` / ``val.csv`` as dicts of numbers (integers stay int; empty cells -> NaN)."""
    def num(v):
        if v in ("", None):
            return float("nan")
        try:
            return int(v)
        except ValueError:
            return float(v)

    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: num(v) for k, v in r.items()} for r in csv.DictReader(fh)]


def plot_loss_curves(log_rows: list[Mapping[str, float]], val_rows: list[Mapping[str, float]] = (), ax=None):
    """Plot the loss terms per step (log scale; raw values faint, a running mean on top) and, on a twin
    axis, validation PSNR. Returns the Axes."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 4))
    steps = np.array([r["step"] for r in log_rows], dtype=float)
    window = max(1, len(log_rows) // 30)
    handles = []
    for key, color in (("total", "C0"), ("pixel", "C1"), ("nat", "C2"), ("sem", "C3")):
        vals = np.array([r.get(key, float("nan")) for r in log_rows], dtype=float)
        if not np.any(np.isfinite(vals) & (vals > 0)) or (key == "pixel" and np.allclose(vals, [r["total"] for r in log_rows])):
            continue  # absent term, or pixel == total (DiffLoss off): one line is enough
        ax.plot(steps, vals, color=color, lw=0.6, alpha=0.3)
        smooth = np.convolve(np.nan_to_num(vals), np.ones(window) / window, mode="valid")
        (h,) = ax.plot(steps[window - 1 :], smooth, color=color, lw=1.5, label=key)
        handles.append(h)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (MSE in [-1, 1]; mean of {window} steps)")
    if val_rows:
        ax2 = ax.twinx()
        (h,) = ax2.plot([r["step"] for r in val_rows], [r["psnr"] for r in val_rows], "o-", color="k", ms=3,
                        label="val PSNR (dB)")
        ax2.set_ylabel("val PSNR (dB)")
        handles.append(h)
    ax.legend(handles=handles, loc="lower left", fontsize=8)
    return ax


def _save_plot(run_dir: Path, log_rows, val_rows) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    plot_loss_curves(log_rows, val_rows, ax=ax)
    ax.set_title(run_dir.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(run_dir / "loss_curve.png", buf.getvalue())


def _csv_text(rows: list[Mapping[str, Any]], fields) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None or (isinstance(r.get(k), float) and math.isnan(r[k])) else r[k]) for k in fields})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def _error_kind(err: Exception) -> str:
    """``struct.error``, ``RuntimeError``: the exception's name, qualified when it is not a builtin."""
    cls = type(err)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _read_checkpoint_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a restoration checkpoint; a truncated or garbage file becomes one
    ValueError naming it (torch's own message would advise ``weights_only=False``, an unsafe load)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, garbage or pickled-object files all land here
        raise ValueError(
            f"{str(path)!r} is not a restoration checkpoint this toolkit can read ({_error_kind(err)}: truncated, "
            "not a torch file, or it holds pickled objects, which are never loaded); pass a ckpt.pt written by "
            "python -m diffloss.train, or delete the broken file and train again"
        ) from None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a restoration checkpoint written by `train_restoration`: returns ``(net in eval mode, ckpt dict)``."""
    path = Path(path)
    if path.is_dir():
        path = path / "ckpt.pt"
    if not path.is_file():
        raise FileNotFoundError(f"restoration checkpoint not found: {path} (train one with python -m diffloss.train)")
    ckpt = _read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(
            f"{path} is not a restoration checkpoint of this toolkit (expected format {CKPT_FORMAT!r}, "
            f"found {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__})"
        )
    with torch.random.fork_rng(devices=[]):
        net = build_net(ckpt["net"], **ckpt.get("net_kwargs", {}))
    net.load_state_dict(ckpt["state_dict"])
    return net.to(device).eval(), ckpt


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def validate_restorer(net: nn.Module, source, max_images: int = 16, device: str | torch.device = "cpu") -> dict:
    """Mean PSNR/SSIM of ``net`` over the first ``max_images`` pairs of ``source`` (full resolution, padded
    to the net's multiple). Also reports the degraded input's PSNR/SSIM. Restores ``net``'s train mode."""
    was_training = net.training
    net.eval()
    psnrs, ssims, in_psnrs, in_ssims = [], [], [], []
    try:
        for i in range(min(max_images, len(source))):
            low, high = source.load(i)
            x, y = to_tensor(low)[None].to(device), to_tensor(high)[None].to(device)
            out = restore_tensor(net, x)
            out = torch.round(out * 255) / 255  # score what would be saved as 8-bit
            p, s = psnr_ssim(out, y)
            pi, si = psnr_ssim(x, y)
            psnrs.append(float(p[0])), ssims.append(float(s[0])), in_psnrs.append(float(pi[0])), in_ssims.append(float(si[0]))
    finally:
        net.train(was_training)
    n = len(psnrs)
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"psnr": mean(psnrs), "ssim": mean(ssims), "n": n, "input_psnr": mean(in_psnrs), "input_ssim": mean(in_ssims)}


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
def _diffloss_seed(seed: int, rank: int) -> int:
    return int(np.random.default_rng([seed, 2, rank]).integers(0, 2**62))


def _build_criterion(cfg: TrainConfig, device: torch.device, rank: int):
    from .criterion import DiffLoss
    from .prior import load_prior

    prior, config = cfg.prior_spec()
    with torch.random.fork_rng(devices=[]):
        model, diffusion = load_prior(prior, config=config, device=str(device), init_seed=cfg.seed)
    gen = torch.Generator().manual_seed(_diffloss_seed(cfg.seed, rank))
    crit = DiffLoss(model, diffusion, gamma=cfg.gamma, lam=cfg.lam, target=cfg.target, generator=gen)
    return crit, int(model.image_size)


#: settings that only matter with DiffLoss on: two runs without it agree whatever these say.
_DIFFLOSS_FIELDS = ("prior", "prior_config", "gamma", "lam", "target", "diffloss_fit")


def config_diff(saved: Mapping[str, Any], cfg: TrainConfig) -> list[str]:
    now = dataclasses.asdict(cfg)
    fields = _RESULT_FIELDS
    if not now["diffloss"] and not saved.get("diffloss"):
        fields = tuple(k for k in fields if k not in _DIFFLOSS_FIELDS)
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in fields if saved.get(k) != now[k]]


def train_restoration(config: TrainConfig | Mapping[str, Any] | None = None, **overrides) -> Path:
    """Train a restoration network as configured (see `TrainConfig`); returns the run folder holding
    ``ckpt.pt``, ``log.csv``, ``val.csv``, ``config.json``, ``done.json`` (and ``loss_curve.png``).

    Deterministic: the same config gives the same weights on the same machine, and a run stopped and
    resumed (``resume=True``) gives the same weights as an uninterrupted one.
    """
    cfg = _as_config(config, overrides)
    with distributed(cfg.device) as (rank, world, device):
        return _train(cfg, rank, world, device)


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> Path:
    run_dir = Path(cfg.out)
    ckpt_path = run_dir / "ckpt.pt"
    ckpt = None
    if ckpt_path.is_file():
        if not cfg.resume:
            raise ValueError(f"{run_dir} already holds ckpt.pt; pass --resume to continue that run or choose another --out")
        ckpt = _read_checkpoint_file(ckpt_path)
        diff = config_diff(ckpt["config"], cfg)
        if diff:
            raise ValueError(f"cannot resume {ckpt_path}: the run was made with other settings: " + "; ".join(diff))
        if ckpt.get("world_size", 1) != world:
            raise ValueError(f"cannot resume {ckpt_path}: it was trained on {ckpt.get('world_size')} process(es), now {world}")
    # Every input is checked (pairs, network, init checkpoint, prior) before the run folder is made: a refused
    # run leaves nothing behind.
    train_src = open_pairs(cfg.pairs, "train", seed=cfg.seed)
    val_src = open_pairs(cfg.val_pairs, "all", seed=cfg.seed) if cfg.val_pairs else open_pairs(cfg.pairs, "val", seed=cfg.seed)
    log.info("training pairs: %r; validation pairs: %r", train_src, val_src)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_net(cfg.net, **cfg.net_kwargs)
    if cfg.init and ckpt is None:
        init_net, init_ckpt = load_checkpoint(cfg.init)
        if (init_ckpt["net"], init_ckpt.get("net_kwargs", {})) != (cfg.net, cfg.net_kwargs):
            raise ValueError(
                f"init checkpoint {cfg.init} holds {init_ckpt['net']} {init_ckpt.get('net_kwargs')}, "
                f"but this run trains {cfg.net} {cfg.net_kwargs}"
            )
        net.load_state_dict(init_net.state_dict())
    net = net.to(device).train()
    n_params = count_parameters(net)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    if cfg.init and cfg.init_optimizer and ckpt is None:
        opt.load_state_dict(init_ckpt["optimizer"])
        for group in opt.param_groups:
            group["lr"] = cfg.lr
    crit, prior_size = _build_criterion(cfg, device, rank) if cfg.diffloss else (None, None)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    start, log_rows, val_rows = 0, [], []
    rng_state = None
    if ckpt is not None:
        net.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        rng_state = ckpt["rng"]
        if crit is not None:
            crit.generator.set_state(rng_state["diffloss"][rank])
        if (run_dir / "log.csv").is_file():
            log_rows = [r for r in read_log(run_dir / "log.csv") if r["step"] <= start]
        if (run_dir / "val.csv").is_file():
            val_rows = [r for r in read_log(run_dir / "val.csv") if r["step"] <= start]
        log.info("resuming %s at step %d of %d", run_dir, start, cfg.steps)

    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    loader = torch.utils.data.DataLoader(
        RandomCropPairs(train_src, cfg.crop, cfg.flip),
        batch_sampler=StepBatchSampler(len(train_src), cfg.batch, cfg.seed, start, cfg.steps, rank, world),
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )
    cuda_devs = [device] if device.type == "cuda" else []
    t0 = time.perf_counter()
    elapsed0 = log_rows[-1]["seconds"] if log_rows else 0.0
    step = start
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {run_dir.name}", disable=not cfg.progress or rank != 0,
               dynamic_ncols=True)

    def checkpoint(final: bool) -> None:
        states = gather(crit.generator.get_state() if crit is not None else None, world)
        global_rng = gather(torch.get_rng_state(), world)
        if rank != 0:
            return
        atomic_save_torch(
            {
                "format": CKPT_FORMAT,
                "net": cfg.net,
                "net_kwargs": dict(cfg.net_kwargs),
                "pad_multiple": pad_multiple_of(net),
                "num_parameters": n_params,
                "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "optimizer": opt.state_dict(),
                "step": step,
                "world_size": world,
                "config": dataclasses.asdict(cfg),
                "rng": {"diffloss": states, "torch": global_rng},
                "val": val_rows[-1] if val_rows else None,
                "final": final,
                "torch_version": str(torch.__version__),
            },
            ckpt_path,
        )
        atomic_write_text(run_dir / "log.csv", _csv_text(log_rows, LOG_FIELDS))
        atomic_write_text(run_dir / "val.csv", _csv_text(val_rows, VAL_FIELDS))

    # Global RNG (dropout etc. inside user networks) is forked so the caller's state is untouched, seeded
    # per rank, and restored from the checkpoint on resume.
    with torch.random.fork_rng(devices=cuda_devs):
        if rng_state is not None and rng_state.get("torch"):
            torch.set_rng_state(rng_state["torch"][rank])
        else:
            torch.manual_seed(_diffloss_seed(cfg.seed, rank + 1000))
        for low, high in loader:
            low, high = low.to(device, non_blocking=True), high.to(device, non_blocking=True)
            restored = model(low)
            pixel = F.mse_loss(restored * 2 - 1, high * 2 - 1)
            row = {"step": step + 1, "pixel": float(pixel.detach())}
            if crit is not None:
                r_fit, h_fit = fit_to_prior(restored, high, prior_size, cfg.diffloss_fit)
                out = crit(r_fit, h_fit)
                # pixel on the full crop + DiffLoss's diffusion terms (== out.total when nothing was resized)
                loss = pixel + (out.total - out.pixel)
                row.update(nat=float(out.nat.detach()), sem=float(out.sem.detach()))
            else:
                loss = pixel
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at step {step + 1}; lower --lr (now {cfg.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            row["total"] = float(loss.detach())
            row["seconds"] = round(elapsed0 + time.perf_counter() - t0, 3)
            log_rows.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['total']:.4g}")
            last = step == cfg.steps
            if rank == 0 and ((cfg.val_every and step % cfg.val_every == 0) or last) and cfg.val_images:
                v = validate_restorer(net, val_src, cfg.val_images, device)
                val_rows.append({"step": step, "psnr": round(v["psnr"], 4), "ssim": round(v["ssim"], 5), "n": v["n"]})
                log.info("step %d: val PSNR %.2f dB SSIM %.4f (input %.2f / %.4f, %d images)", step, v["psnr"],
                         v["ssim"], v["input_psnr"], v["input_ssim"], v["n"])
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last:
                checkpoint(final=last)
                barrier(world)
    bar.close()
    if start >= cfg.steps:
        log.info("%s already trained for %d steps (asked %d): nothing to do", run_dir, start, cfg.steps)
    if rank == 0:
        if cfg.plot and log_rows:
            _save_plot(run_dir, log_rows, val_rows)
        atomic_write_text(run_dir / "done.json", json.dumps(
            {"config": dataclasses.asdict(cfg), "step": max(step, start), "val": val_rows[-1] if val_rows else None,
             "num_parameters": n_params, "seconds": log_rows[-1]["seconds"] if log_rows else 0.0}, indent=2) + "\n")
    barrier(world)
    return run_dir


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from cubdata.cli import HelpFormatter

    from .criterion import TARGETS
    from .prior import PRIOR_CONFIGS

    p = argparse.ArgumentParser(prog="python -m diffloss.train", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--net", default=DEFAULT_NET,
                   help=f"restoration network: one of {', '.join(RESTORATION_NETS)} or pkg.module:factory")
    p.add_argument("--net-kwargs", default="{}", help="JSON dict of keyword arguments for the network factory")
    p.add_argument("--pairs", default="synthetic:lowlight:3",
                   help="paired data: a LOL/Rain/Haze folder, LOW_DIR:HIGH_DIR, or synthetic:CORRUPTION:SEVERITY[:CUB_ROOT]")
    p.add_argument("--val-pairs", default=None, help="validation pairs spec (default: the val split of --pairs)")
    p.add_argument("--diffloss", choices=("on", "off"), default="off", help="add DiffLoss to the L2 loss")
    p.add_argument("--prior", default="builtin",
                   help="'builtin' (the trained 64 px prior shipped with the toolkit), 'random' (untrained weights of "
                        "--prior-config, for timing) or a checkpoint path: a prior.pt of diffloss.train_prior or "
                        "guided-diffusion's 256x256_diffusion_uncond.pt")
    p.add_argument("--prior-config", choices=sorted(PRIOR_CONFIGS), default=None,
                   help="prior architecture (default: tiny for --prior random; a prior.pt's own; adm256-uncond for "
                        "a bare guided-diffusion state dict)")
    p.add_argument("--gamma", type=float, default=1e-3, help="DiffLoss weight of the diffusion terms")
    p.add_argument("--lam", type=float, default=1e-2, help="DiffLoss weight of the semantic (h-space) term")
    p.add_argument("--target", choices=TARGETS, default="eps", help="DiffLoss naturalness target (Table 4 ablation)")
    p.add_argument("--diffloss-fit", choices=FIT_MODES, default="resize",
                   help="how crops of another size are fitted to the prior's size for the DiffLoss terms")
    p.add_argument("--out", required=True, help="run folder (ckpt.pt, log.csv, val.csv, loss_curve.png)")
    p.add_argument("--steps", type=int, default=1000, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, default=4, help="batch size (per process under torchrun)")
    p.add_argument("--batch", dest="batch_size", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old spelling
    p.add_argument("--crop", type=int, default=256, help="random crop size (smaller images are padded)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, crops, network init and DiffLoss draws")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--init", default=None, help="start from this ckpt.pt's network weights")
    p.add_argument("--init-optimizer", action="store_true", help="with --init, also continue its Adam state")
    p.add_argument("--val-every", type=int, default=500, help="validate every N steps (0: only at the end)")
    p.add_argument("--val-images", type=int, default=16, help="number of validation pairs (0: no validation)")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/ckpt.pt if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-plot", action="store_true", help="do not write loss_curve.png")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's choice); 1 is fastest on a busy shared CPU")
    return p


def main(argv=None) -> int:
    from cubdata.cli import resolve_device_name

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        try:
            net_kwargs = json.loads(args.net_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"--net-kwargs must be a JSON dict, got {args.net_kwargs!r}: {err}") from None
        cfg = TrainConfig(
            out=args.out, pairs=args.pairs, val_pairs=args.val_pairs, net=args.net, net_kwargs=net_kwargs,
            diffloss=args.diffloss == "on", prior=args.prior, prior_config=args.prior_config, gamma=args.gamma,
            lam=args.lam, target=args.target, diffloss_fit=args.diffloss_fit, steps=args.steps, batch=args.batch_size,
            crop=args.crop, lr=args.lr, seed=args.seed, flip=not args.no_flip, init=args.init,
            init_optimizer=args.init_optimizer,
            val_every=args.val_every, val_images=args.val_images, ckpt_every=args.ckpt_every, workers=args.workers,
            device=resolve_device_name(args.device), resume=args.resume, progress=not args.no_progress,
            plot=not args.no_plot,
        )
        run_dir = train_restoration(cfg)
    except (ValueError, TypeError, FileNotFoundError, ImageDecodeError, FloatingPointError) as err:
        # PriorCheckpointMismatch, CubLayoutError and UnmatchedPairsError are ValueErrors
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    done = json.loads((run_dir / "done.json").read_text())
    if int(os.environ.get("RANK", "0")) == 0:
        val = done.get("val") or {}
        print(f"{run_dir}: {done['step']} steps, {done['num_parameters']:,} parameters, {done['seconds']:.1f} s"
              + (f", val PSNR {val['psnr']:.2f} dB SSIM {val['ssim']:.4f}" if val else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
