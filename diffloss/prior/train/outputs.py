"""What a prior-training run writes: the loadable ``prior.safetensors`` + ``prior.json``, ``log.csv`` and its loss
plot, DDIM sample grids."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from runkit.files import atomic_write_bytes
from cubdata import encode_image

from diffloss.prior.train.data import step_seed
from diffloss.prior.loading import save_prior
from diffloss.prior.sampling import ddim_sample_loop, ddim_schedule, spaced_diffusion

if TYPE_CHECKING:
    from diffloss.prior.train import PriorTrainConfig

__all__ = ["LOG_COLUMNS", "export_prior", "plot_prior_loss", "write_loss_plot", "image_grid",
           "write_samples"]

LOG_COLUMNS = ("step", "loss", "mse", "vb", "lr", "seconds")


def export_prior(ema: nn.Module, kwargs: Mapping[str, Any], path: str | Path, *, config_name: str,
                 step: int, meta: Mapping[str, Any] | None = None, dtype: str = "float16",
                 command: str | None = None) -> Path:
    """Write the loadable prior: the EMA weights to ``path`` (``prior.safetensors``) and their config to the
    ``.json`` beside it (`diffloss.prior.save_prior`, atomic). ``kwargs`` are the full
    ``create_model_and_diffusion`` arguments, so ``load_prior(path)`` and ``--prior PATH`` need no flags.
    ``dtype`` float16 halves the file; `load_prior` computes in float32 either way."""
    torch_dtype = {"float16": torch.float16, "float32": torch.float32}[dtype]
    sd = {k: v.detach().to("cpu", torch_dtype if v.is_floating_point() else v.dtype).contiguous()
          for k, v in ema.state_dict().items()}
    return save_prior(sd, path, kwargs, config_name=config_name, step=int(step), meta=meta, command=command)


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
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_loss_plot(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``run_dir/loss_curve.png`` from the log rows (`plot_prior_loss`, Agg backend, atomic)."""
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
def write_samples(ema: nn.Module, diffusion, cfg: PriorTrainConfig, size: int, device, path: Path) -> None:
    """A grid of ``cfg.sample_images`` DDIM samples (``cfg.sample_steps`` steps) of ``ema`` at ``path``, from
    the same noise at every step of the run, so grids of one run are comparable."""
    spaced = spaced_diffusion(diffusion, ddim_schedule(int(diffusion.num_timesteps) - 1, cfg.sample_steps,
                                                       int(diffusion.num_timesteps)))
    g = torch.Generator().manual_seed(step_seed(cfg.seed, 2**40))
    x_T = torch.randn((cfg.sample_images, 3, size, size), generator=g).to(device)
    was = ema.training
    ema.eval()
    try:
        samples = ddim_sample_loop(ema, spaced, x_T)
    finally:
        ema.train(was)
    atomic_write_bytes(path, encode_image(image_grid(samples), "png"))
