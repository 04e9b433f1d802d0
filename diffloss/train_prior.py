"""Train a guided-diffusion prior (ADM family) on clean images: a CUB root's train split or any image folder.

    python -m diffloss.train_prior --config tiny64 --data CUB_200_2011 --out runs/prior-cub64 --steps 50000
    python -m diffloss.train_prior --config tiny64 --out runs/prior-mini      # mini-CUB's train split
    torchrun --nproc_per_node 4 -m diffloss.train_prior --config adm64 --data CUB_200_2011 --out runs/p64

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
import copy
import dataclasses
import functools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cubdata import (atomic_save_torch, atomic_write_bytes, atomic_write_text, encode_image, list_images, load_rgb,
                     read_csv, read_cub, write_csv)

from cubdata.distributed import barrier, distributed
from .nets import count_parameters
from .prior import PRIOR_CONFIGS, PRIOR_FORMAT, prior_kwargs, build_trainable_prior
from .sampling import ddim_sample_loop, ddim_schedule, spaced_diffusion

log = logging.getLogger(__name__)

__all__ = ["PriorTrainConfig", "train_prior", "training_images", "step_draws", "random_resized_crop",
           "export_prior", "read_prior_log", "plot_prior_loss", "build_parser", "main"]

STATE_FORMAT = "diffloss-prior-train/1"
LOG_COLUMNS = ("step", "loss", "mse", "vb", "lr", "seconds")
#: config fields that change the trained weights (a resume must match them); the rest are run plumbing.
#: ``steps`` is not among them: the schedule is constant after warm-up, so a finished run can be extended.
_RESULT_FIELDS = ("data", "config", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip",
                  "ema_rate", "seed", "min_scale", "flip")


@dataclass
class PriorTrainConfig:
    """Everything a prior-training run depends on (saved in ``config.json`` and ``train_state.pt``).

    ``data``: a CUB root (its train split is used, never its test split) or a folder of images; None: the
    built-in mini-CUB. ``batch_size`` is the global batch (split over torchrun ranks). ``ema_rate``: the
    EMA decay, warmed up as ``min(ema_rate, (1 + s) / (10 + s))`` so early steps are not frozen at init.
    ``ckpt_every``/``sample_every`` 0: only at the end.
    """

    out: str
    data: str | None = None
    config: str = "tiny64"
    steps: int = 20000
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_rate: float = 0.999
    seed: int = 0
    min_scale: float = 0.5
    flip: bool = True
    ckpt_every: int = 250
    sample_every: int = 1000
    sample_images: int = 16
    sample_steps: int = 50
    export_dtype: str = "float16"
    workers: int = 0
    device: str = "auto"
    resume: bool = False
    progress: bool = True

    def validate(self) -> "PriorTrainConfig":
        if self.config not in PRIOR_CONFIGS:
            raise ValueError(f"unknown prior config {self.config!r}; valid: {', '.join(sorted(PRIOR_CONFIGS))}")
        for name in ("steps", "batch_size", "sample_images", "sample_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "ckpt_every", "sample_every", "workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.ema_rate < 1.0:
            raise ValueError(f"ema_rate must be in [0, 1), got {self.ema_rate!r}")
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale!r}")
        if self.export_dtype not in ("float16", "float32"):
            raise ValueError(f"export_dtype must be float16 or float32, got {self.export_dtype!r}")
        return self


# --------------------------------------------------------------------------------------------------
# data: image list, step-seeded draws, crops
# --------------------------------------------------------------------------------------------------
def training_images(data: str | Path | None) -> list[Path]:
    """The clean images to train on: a CUB root's train split (``images.txt`` present), else every image
    under the folder; None: the built-in mini-CUB's train split. Raises FileNotFoundError/ValueError with
    the path when there is nothing to train on."""
    if data is None:
        from cubdata import mini_cub_root

        data = mini_cub_root()
    root = Path(data).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"training data not found: {str(root)!r} (a CUB root or a folder of images)")
    if (root / "images.txt").is_file():
        index = read_cub(root)
        paths = [index.image_path(r) for r in index.split("train")]
        if not paths:
            raise ValueError(f"CUB root {str(root)!r} has no train images (train_test_split.txt)")
        return paths
    paths = list_images(root)
    if not paths:
        raise ValueError(f"no images (.jpg, .png, ...) under {str(root)!r}")
    return paths


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1, np.uint64)[0] >> 1)


def step_draws(seed: int, step: int, batch_size: int, n_images: int, num_timesteps: int,
               size: int) -> dict[str, torch.Tensor]:
    """All random draws of one training step, from a generator seeded with ``(seed, step)``:
    ``index`` [B] image indices (with replacement), ``crop_seed`` [B], ``t`` [B] uniform timesteps and
    ``noise`` [B, 3, size, size]. The same on every rank and every device (drawn on the CPU)."""
    g = torch.Generator().manual_seed(_step_seed(seed, step))
    return {
        "index": torch.randint(n_images, (batch_size,), generator=g),
        "crop_seed": torch.randint(2**62, (batch_size,), generator=g),
        "t": torch.randint(num_timesteps, (batch_size,), generator=g),
        "noise": torch.randn((batch_size, 3, size, size), generator=g),
    }


def random_resized_crop(image: torch.Tensor, size: int, seed: int, min_scale: float = 0.5,
                        flip: bool = True) -> torch.Tensor:
    """A random crop of ``image`` (``uint8 3xHxW``) covering ``min_scale``..1 of its area with aspect ratio
    3/4..4/3 (torchvision's RandomResizedCrop rule, falling back to the largest centred square), resized to
    ``size`` x ``size`` (bilinear, antialiased), flipped with probability 1/2. Returns ``[-1, 1] 3xSxS``."""
    g = torch.Generator().manual_seed(int(seed))
    _, H, W = image.shape
    area = H * W
    box = None
    for _ in range(10):
        u = torch.rand(3, generator=g).tolist()
        target = area * (min_scale + (1.0 - min_scale) * u[0])
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= W and 0 < h <= H:
            top = int(u[2] * (H - h + 1)) if H > h else 0
            left = int(torch.rand(1, generator=g).item() * (W - w + 1)) if W > w else 0
            box = (top, left, h, w)
            break
    if box is None:
        s = min(H, W)
        box = ((H - s) // 2, (W - s) // 2, s, s)
    top, left, h, w = box
    crop = image[:, top:top + h, left:left + w].float().div(127.5).sub(1.0)
    out = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    if flip and torch.rand(1, generator=g).item() < 0.5:
        out = out.flip(-1)
    return out.clamp_(-1.0, 1.0)


class _Crops(torch.utils.data.Dataset):
    """Item ``(image index, crop seed)`` -> a random resized crop; decoded images are cached per process."""

    def __init__(self, paths: Sequence[Path], size: int, min_scale: float, flip: bool, cache_size: int = 8192):
        self.paths, self.size, self.min_scale, self.flip = list(paths), int(size), float(min_scale), bool(flip)
        self._load = functools.lru_cache(maxsize=cache_size)(self._decode)

    def _decode(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(load_rgb(self.paths[i]).transpose(2, 0, 1)))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        i, seed = item
        return random_resized_crop(self._load(int(i)), self.size, int(seed), self.min_scale, self.flip)


class _StepBatches(torch.utils.data.Sampler):
    """Yields, for steps ``start..steps-1``, this rank's share ``[rank::world]`` of the step's (index, seed)."""

    def __init__(self, cfg: PriorTrainConfig, n_images: int, num_timesteps: int, size: int, start: int,
                 rank: int, world: int):
        self.cfg, self.n, self.T, self.size, self.start, self.rank, self.world = (
            cfg, n_images, num_timesteps, size, start, rank, world)

    def __len__(self) -> int:
        return self.cfg.steps - self.start

    def __iter__(self):
        for step in range(self.start, self.cfg.steps):
            d = step_draws(self.cfg.seed, step, self.cfg.batch_size, self.n, self.T, 1)
            pairs = list(zip(d["index"].tolist(), d["crop_seed"].tolist()))
            yield pairs[self.rank::self.world]


# --------------------------------------------------------------------------------------------------
# EMA, export, logs, plots
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - rate)


def export_prior(ema: nn.Module, kwargs: Mapping[str, Any], path: str | Path, *, config_name: str,
                 step: int, meta: Mapping[str, Any] | None = None, dtype: str = "float16") -> Path:
    """Write the loadable prior file: ``{"format", "config_name", "kwargs", "state_dict", "step", "meta"}``
    (atomic). ``kwargs`` are the full ``create_model_and_diffusion`` arguments, so ``load_adm(path)`` needs
    no flags. ``dtype`` float16 halves the file; ``load_adm`` computes in float32 either way."""
    torch_dtype = {"float16": torch.float16, "float32": torch.float32}[dtype]
    sd = {k: v.detach().to("cpu", torch_dtype if v.is_floating_point() else v.dtype).contiguous()
          for k, v in ema.state_dict().items()}
    obj = {"format": PRIOR_FORMAT, "config_name": config_name, "kwargs": dict(kwargs), "state_dict": sd,
           "step": int(step), "meta": dict(meta or {})}
    return atomic_save_torch(obj, path)


def read_prior_log(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a prior run's ``log.csv`` (step int, the rest float)."""
    return read_csv(path, ints=("step",), floats=tuple(c for c in LOG_COLUMNS if c != "step"))


def plot_prior_loss(rows: Sequence[Mapping[str, Any]], ax=None):
    """Training loss against step on a log axis: per-step values faint, a running mean (window 1/50 of the
    run, at least 1) bold, for the hybrid loss and its MSE part. Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 3.6))
    steps = np.array([r["step"] for r in rows], dtype=float)
    window = max(1, len(rows) // 50)
    for key, colour, label in (("loss", "C0", "hybrid loss (MSE + VB)"), ("mse", "C1", "MSE on the noise")):
        v = np.array([r[key] for r in rows], dtype=float)
        ax.plot(steps, v, color=colour, alpha=0.25, linewidth=0.6)
        if len(v) >= window:
            smooth = np.convolve(v, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color=colour, linewidth=1.8, label=f"{label}, mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("prior training")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return ax


def _save_png(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _write_loss_plot(run_dir: Path, rows) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    plot_prior_loss(rows, ax)
    _save_png(fig, run_dir / "loss_curve.png")


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """``[-1, 1] NCHW`` -> one ``uint8 HxWx3`` grid (white padding), ``nrow`` images per row (default ~sqrt N)."""
    from torchvision.utils import make_grid

    n = images.shape[0]
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    grid = make_grid(images.float().add(1).div(2).clamp(0, 1).cpu(), nrow=nrow, padding=pad, pad_value=1.0)
    return (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def _write_samples(ema: nn.Module, diffusion, cfg: PriorTrainConfig, size: int, device, path: Path) -> None:
    spaced = spaced_diffusion(diffusion, ddim_schedule(int(diffusion.num_timesteps) - 1, cfg.sample_steps,
                                                       int(diffusion.num_timesteps)))
    g = torch.Generator().manual_seed(_step_seed(cfg.seed, 2**40))  # the same noise at every step: comparable grids
    x_T = torch.randn((cfg.sample_images, 3, size, size), generator=g).to(device)
    was = ema.training
    ema.eval()
    try:
        samples = ddim_sample_loop(ema, spaced, x_T)
    finally:
        ema.train(was)
    atomic_write_bytes(path, encode_image(image_grid(samples), "png"))


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
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


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def train_prior(settings: PriorTrainConfig | Mapping[str, Any] | None = None, **overrides) -> Path:
    """Train a prior as configured by ``settings`` and keyword overrides (the fields of `PriorTrainConfig`,
    e.g. ``train_prior(out="runs/p", config="tiny64", steps=1000)``); returns the run folder (``prior.pt``).

    Deterministic: the same config gives the same weights on the same machine, and a stopped run resumed
    with ``resume=True`` gives the same weights as an uninterrupted one."""
    cfg = _as_config(settings, overrides)
    with distributed(_resolve_device(cfg.device)) as (rank, world, device):
        return _train(cfg, rank, world, device)


def _load_state(cfg: PriorTrainConfig, run_dir: Path, world: int) -> dict | None:
    path = run_dir / "train_state.pt"
    if not path.is_file():
        if (run_dir / "done.json").is_file() and not cfg.resume:
            raise ValueError(f"{run_dir} holds a finished prior run; choose another --out")
        return None
    if not cfg.resume:
        raise ValueError(f"{run_dir} already holds train_state.pt; pass --resume to continue that run or choose another --out")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ValueError(f"{path} is not a prior training state of this toolkit ({type(err).__name__}); "
                         "delete it or choose another --out") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a prior training state of this toolkit (expected format {STATE_FORMAT!r})")
    now = dataclasses.asdict(cfg)
    diff = [f"{k}: saved {state['config'].get(k)!r} vs now {now[k]!r}" for k in _RESULT_FIELDS
            if state["config"].get(k) != now[k]]
    if diff:
        raise ValueError(f"cannot resume {path}: the run was made with other settings: " + "; ".join(diff))
    return state


def _lr_at(cfg: PriorTrainConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def _train(cfg: PriorTrainConfig, rank: int, world: int, device: torch.device) -> Path:
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
                         f"{world} torchrun processes")
    run_dir = Path(cfg.out)
    paths = training_images(cfg.data)  # fails before anything is written
    state = _load_state(cfg, run_dir, world)
    kwargs = prior_kwargs(cfg.config)
    size = int(kwargs["image_size"])
    model, diffusion = build_trainable_prior(kwargs, seed=cfg.seed)
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, rows = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if (run_dir / "log.csv").is_file():
            rows = [r for r in read_prior_log(run_dir / "log.csv") if r["step"] <= start]
        log.info("resuming %s at step %d of %d", run_dir, start, cfg.steps)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        log.info("training prior %s (%s parameters, %d px) on %d images from %s", cfg.config,
                 f"{count_parameters(model):,}", size, len(paths), cfg.data or "mini-CUB")
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    T = int(diffusion.num_timesteps)
    loader = torch.utils.data.DataLoader(
        _Crops(paths, size, cfg.min_scale, cfg.flip),
        batch_sampler=_StepBatches(cfg, len(paths), T, size, start, rank, world),
        num_workers=cfg.workers, pin_memory=device.type == "cuda", persistent_workers=False)
    elapsed0 = rows[-1]["seconds"] if rows else 0.0
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, desc=f"prior {run_dir.name}", disable=not cfg.progress or rank != 0,
               dynamic_ncols=True)

    def save(step: int, final: bool) -> None:
        if rank != 0:
            return
        atomic_save_torch({"format": STATE_FORMAT, "config": dataclasses.asdict(cfg), "kwargs": kwargs,
                           "step": step, "world_size": world, "model": model.state_dict(), "ema": ema.state_dict(),
                           "optimizer": opt.state_dict()}, run_dir / "train_state.pt")
        meta = {"data": cfg.data or "mini-CUB train split", "images": len(paths), "seed": cfg.seed,
                "batch_size": cfg.batch_size, "lr": cfg.lr, "ema_rate": cfg.ema_rate}
        export_prior(ema, kwargs, run_dir / "prior.pt", config_name=cfg.config, step=step, meta=meta,
                     dtype=cfg.export_dtype)
        write_csv(run_dir / "log.csv", rows, LOG_COLUMNS, float_format=".6g")
        if rows:
            _write_loss_plot(run_dir, rows)

    step = start
    for crops in loader:
        d = step_draws(cfg.seed, step, cfg.batch_size, len(paths), T, size)
        mine = torch.arange(cfg.batch_size)[rank::world]  # the sampler gave this rank the same slots
        t = d["t"][mine].to(device)
        noise = d["noise"][mine].to(device)
        x = crops.to(device)
        lr = _lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        losses = diffusion.training_losses(net, x, t, noise=noise)
        loss = losses["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        _ema_update(ema, model, min(cfg.ema_rate, (1 + step) / (10 + step)))
        step += 1
        vals = torch.stack([loss.detach(), losses["mse"].mean().detach(), losses["vb"].mean().detach()])
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(vals)
            vals /= world
        rows.append({"step": step, "loss": float(vals[0]), "mse": float(vals[1]), "vb": float(vals[2]), "lr": lr,
                     "seconds": elapsed0 + time.perf_counter() - t0})
        bar.update(1)
        bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
        final = step == cfg.steps
        if final or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
            save(step, final)
        if rank == 0 and (final or (cfg.sample_every and step % cfg.sample_every == 0)):
            _write_samples(ema, diffusion, cfg, size, device, run_dir / "samples" / f"step_{step:07d}.png")
        barrier(world)
    bar.close()
    if rank == 0:
        if start == cfg.steps:
            save(step, True)
        atomic_write_text(run_dir / "done.json", json.dumps(
            {"config": dataclasses.asdict(cfg), "step": cfg.steps, "images": len(paths),
             "num_parameters": count_parameters(model), "seconds": rows[-1]["seconds"] if rows else 0.0,
             "final_loss": rows[-1]["loss"] if rows else None}, indent=2) + "\n")
    barrier(world)
    return run_dir


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from cubdata.cli import HelpFormatter

    d = PriorTrainConfig(out="")
    p = argparse.ArgumentParser(prog="python -m diffloss.train_prior", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="run folder (prior.pt, train_state.pt, log.csv, samples/)")
    p.add_argument("--data", default=None,
                   help="a CUB root (its train split) or a folder of images (default: the built-in mini-CUB)")
    p.add_argument("--config", choices=sorted(PRIOR_CONFIGS), default=d.config,
                   help="prior architecture")
    p.add_argument("--steps", type=int, default=d.steps, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch size, split over torchrun processes")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear lr warm-up")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient-norm clip (0: off)")
    p.add_argument("--ema-rate", type=float, default=d.ema_rate, help="EMA decay of the saved weights")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init, data, timesteps and noise")
    p.add_argument("--min-scale", type=float, default=d.min_scale,
                   help="smallest crop area as a fraction of the image")
    p.add_argument("--no-flip", action="store_true", help="disable random horizontal flips")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help="write train_state.pt and prior.pt every N steps (0: at the end)")
    p.add_argument("--sample-every", type=int, default=d.sample_every,
                   help="write a DDIM sample grid every N steps (0: at the end)")
    p.add_argument("--sample-images", type=int, default=d.sample_images, help="images per grid")
    p.add_argument("--sample-steps", type=int, default=d.sample_steps, help="DDIM steps per grid")
    p.add_argument("--export-dtype", choices=("float16", "float32"), default=d.export_dtype,
                   help="precision of the weights in prior.pt")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--device", default=d.device, help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        cfg = PriorTrainConfig(
            out=args.out, data=args.data, config=args.config, steps=args.steps, batch_size=args.batch_size,
            lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
            ema_rate=args.ema_rate, seed=args.seed, min_scale=args.min_scale, flip=not args.no_flip,
            ckpt_every=args.ckpt_every, sample_every=args.sample_every, sample_images=args.sample_images,
            sample_steps=args.sample_steps, export_dtype=args.export_dtype, workers=args.workers,
            device=args.device, resume=args.resume, progress=not args.no_progress)
        run_dir = train_prior(cfg)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = json.loads((run_dir / "done.json").read_text())
    print(f"{run_dir / 'prior.pt'}: {done['step']} steps on {done['images']} images, "
          f"{done['num_parameters']:,} parameters, {done['seconds']:.1f} s, final loss {done['final_loss']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
