"""The training run's loss curve: `plot_loss_curves` draws a run's tables on an ``ax``; `save_loss_plot`
writes ``loss_curve.png`` (matplotlib's Agg backend, atomic)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runkit.files import atomic_write_bytes

__all__ = ["plot_loss_curves", "save_loss_plot"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(log_rows: Sequence[Mapping[str, float]], val_rows: Sequence[Mapping[str, float]] = (), ax=None):
    """Plot the loss terms per step (log scale; raw values faint, a running mean on top) and, on a twin
    axis, validation PSNR. Returns the Axes."""
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(7, 4))
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


def save_loss_plot(path: str | os.PathLike, log_rows, val_rows=(), title: str = "") -> Path:
    """Write `plot_loss_curves` of the tables as a PNG at ``path`` (atomically); returns the path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    plot_loss_curves(log_rows, val_rows, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
