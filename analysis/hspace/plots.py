"""Figures of the h-space study (DiffLoss Fig. 2): distance histograms per group (Fig. 2(b)) and the grid of
generations at perturbation levels 0..K (Fig. 2(a)).

Every function takes data (the rows of ``analysis.hspace.read_distances`` / ``HSpaceResult.rows``, or
``HSpaceResult.grid`` / ``analysis.hspace.load_grid``) and an ``ax`` or a figure, and returns it; nothing
here computes statistics the package lacks or writes files except `save_figure`. The histograms plot the row
key ``metric``: ``distance`` (L2, the paper's), ``cosine_distance`` or ``relative_distance``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

__all__ = ["plot_group_histogram", "plot_distance_histograms", "plot_histogram_overlay", "plot_level_grid",
           "plot_flip_rates", "save_figure", "LEVEL_MARKS", "METRIC_LABELS"]

#: The paper marks the levels with circled digits.
LEVEL_MARKS = {1: "\u2460", 2: "\u2461", 3: "\u2462", 4: "\u2463", 5: "\u2464", 6: "\u2465", 7: "\u2466",
               8: "\u2467", 9: "\u2468"}

#: Axis labels of the metrics (row keys of the distance rows).
METRIC_LABELS = {"distance": "L2 distance of the features",
                 "cosine_distance": "cosine distance of the features",
                 "relative_distance": "L2 distance of the features / norm of the unperturbed ones",
                 "pixel_change": "mean |pixel change| (0-255)"}


def _plt():
    import matplotlib.pyplot as plt

    return plt



def _groups(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(str(r["group"]) for r in rows))


def _levels(rows: Sequence[Mapping]) -> list[int]:
    return sorted({int(r["level"]) for r in rows})


def _values(rows: Sequence[Mapping], metric: str) -> np.ndarray:
    """The finite values of ``metric`` in ``rows``."""
    if any(metric not in r for r in rows):
        raise ValueError(f"the rows have no {metric!r} values; plot a metric they carry (e.g. 'distance')")
    d = np.array([float(r[metric]) for r in rows], dtype=float)
    return d[np.isfinite(d)]


def _bins(rows: Sequence[Mapping], bins: int, metric: str = "distance") -> np.ndarray:
    d = _values(rows, metric)
    if d.size == 0:
        raise ValueError(f"no {metric} values to plot (empty rows)")
    lo, hi = float(d.min()), float(d.max())
    if hi <= lo:
        hi = lo + 1e-6
    return np.linspace(lo, hi, int(bins) + 1)


def _level_label(level: int, alphas: Sequence[float] | None) -> str:
    mark = LEVEL_MARKS.get(level, str(level))
    if alphas is not None and 0 < level <= len(alphas):
        return f"level {mark} (\u03b1={alphas[level - 1]:g})"
    return f"level {mark}"


def plot_group_histogram(rows: Sequence[Mapping], group: str, ax=None, levels: Sequence[int] | None = None,
                         bins: int | np.ndarray = 20, alphas: Sequence[float] | None = None, legend: bool = True,
                         metric: str = "distance"):
    """Histogram of one group's ``metric`` values, one translucent histogram per level (levels overlaid).

    ``rows``: dicts with group, level and ``metric``. Returns the Axes."""
    plt = _plt()
    ax = ax if ax is not None else plt.gca()
    sel = [r for r in rows if str(r["group"]) == group]
    if not sel:
        raise ValueError(f"group {group!r} has no rows; groups present: {_groups(rows)}")
    levels = list(levels) if levels is not None else _levels(sel)
    edges = bins if isinstance(bins, np.ndarray) else _bins(sel, bins, metric)
    cmap = plt.get_cmap("viridis")
    for i, level in enumerate(levels):
        d = _values([r for r in sel if int(r["level"]) == level], metric)
        color = cmap(i / max(1, len(levels) - 1))
        ax.hist(d, bins=edges, alpha=0.55, color=color, edgecolor=color, linewidth=0.8,
                label=_level_label(level, alphas))
    med = np.median(_values([r for r in sel if int(r["level"]) == levels[-1]], metric))
    ax.set_title(f"{group}  (median at level {levels[-1]}: {med:.3g})", fontsize=10)
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if legend:
        ax.legend(fontsize=8, frameon=False)
    return ax


def plot_distance_histograms(rows: Sequence[Mapping], fig=None, groups: Sequence[str] | None = None,
                             levels: Sequence[int] | None = None, bins: int = 20,
                             alphas: Sequence[float] | None = None, metric: str = "distance"):
    """Fig. 2(b) style: one panel per group (stacked, shared distance axis), levels overlaid in each.

    ``rows``: the study's distance rows (group, level, ``metric``). Returns the Figure."""
    plt = _plt()
    groups = list(groups) if groups is not None else _groups(rows)
    if fig is None:
        fig = plt.figure(figsize=(6.5, 1.9 * len(groups) + 0.6))
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    edges = _bins([r for r in rows if str(r["group"]) in groups], bins, metric)
    for i, (g, ax) in enumerate(zip(groups, axes)):
        plot_group_histogram(rows, g, ax=ax, levels=levels, bins=edges, alphas=alphas, legend=(i == 0), metric=metric)
    axes[-1].set_xlabel(f"{METRIC_LABELS.get(metric, metric)}, perturbed vs unperturbed generation")
    fig.tight_layout()
    return fig


def plot_histogram_overlay(rows: Sequence[Mapping], ax=None, level: int | None = None,
                           groups: Sequence[str] | None = None, bins: int = 20, metric: str = "distance"):
    """All groups in one Axes (step histograms) at ``level`` (default: the highest), as one reads Fig. 2(b):
    clean and DiffLoss-restored images should sit at larger distances than degraded ones. Returns the Axes."""
    plt = _plt()
    ax = ax if ax is not None else plt.gca()
    level = max(_levels(rows)) if level is None else int(level)
    sel = [r for r in rows if int(r["level"]) == level]
    if not sel:
        raise ValueError(f"no rows at level {level}; levels present: {_levels(rows)}")
    groups = list(groups) if groups is not None else _groups(sel)
    edges = _bins(sel, bins, metric)
    colors = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        d = _values([r for r in sel if str(r["group"]) == g], metric)
        ax.hist(d, bins=edges, histtype="stepfilled", alpha=0.25, color=colors(i % 10))
        ax.hist(d, bins=edges, histtype="step", linewidth=1.6, color=colors(i % 10), label=f"{g} (n={len(d)})")
    ax.set_xlabel(f"{METRIC_LABELS.get(metric, metric)} at level {LEVEL_MARKS.get(level, level)}")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, frameon=False)
    return ax


def plot_level_grid(grid: Mapping[str, Sequence[tuple]], fig=None, groups: Sequence[str] | None = None,
                    max_images: int | None = None, alphas: Sequence[float] | None = None, show_input: bool = True):
    """Fig. 2(a) style: one row per (group, image), columns input | level 0 (unperturbed) | levels 1..K.

    ``grid``: group -> list of (image_id, uint8 HxWx3 input, [uint8 HxWx3 generation per level 0..K]).
    Returns the Figure."""
    plt = _plt()
    groups = list(groups) if groups is not None else [g for g in grid if grid[g]]
    entries = [(g, e) for g in groups for e in list(grid.get(g, []))[:max_images]]
    if not entries:
        raise ValueError("the grid holds no images")
    n_levels = len(entries[0][1][2])
    cols = n_levels + (1 if show_input else 0)
    if fig is None:
        fig = plt.figure(figsize=(1.25 * cols + 1.2, 1.3 * len(entries) + 0.4))
    axes = fig.subplots(len(entries), cols, squeeze=False)
    for r, (g, (key, inp, gens)) in enumerate(entries):
        panels = ([inp] if show_input else []) + list(gens)
        for c, (ax, img) in enumerate(zip(axes[r], panels)):
            ax.imshow(np.asarray(img), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if r == 0:
                level = c - (1 if show_input else 0)
                title = "input" if level < 0 else ("unperturbed" if level == 0 else _level_label(level, alphas))
                ax.set_title(title, fontsize=8)
        axes[r][0].set_ylabel(f"{g}\n#{key}", fontsize=8, rotation=0, ha="right", va="center")
    fig.subplots_adjust(left=0.16, right=0.99, top=0.93, bottom=0.01, wspace=0.04, hspace=0.06)
    return fig


def plot_flip_rates(summary: Sequence[Mapping], ax=None, groups: Sequence[str] | None = None):
    """Label-flip rate per level, one line per group, with its bootstrap 95% interval as error bars:
    ``summary`` is `summarize_distances`' rows (group, level, flip_rate, flip_ci_low, flip_ci_high). Returns the
    Axes."""
    plt = _plt()
    ax = ax if ax is not None else plt.gca()
    rows = [s for s in summary if s["flip_rate"] == s["flip_rate"]]
    if not rows:
        raise ValueError("the summary has no flip rates (the study ran without a classifier)")
    groups = list(groups) if groups is not None else _groups(rows)
    for i, g in enumerate(groups):
        sel = sorted((s for s in rows if str(s["group"]) == g), key=lambda s: int(s["level"]))
        if not sel:
            raise ValueError(f"group {g!r} has no flip rates; groups present: {_groups(rows)}")
        x = np.array([int(s["level"]) for s in sel]) + (i - (len(groups) - 1) / 2) * 0.06
        y = np.array([100 * float(s["flip_rate"]) for s in sel])
        err = np.array([[100 * (float(s["flip_rate"]) - float(s["flip_ci_low"])) for s in sel],
                        [100 * (float(s["flip_ci_high"]) - float(s["flip_rate"])) for s in sel]])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=g)
    levels = sorted({int(s["level"]) for s in rows})
    ax.set_xticks(levels, [LEVEL_MARKS.get(k, str(k)) for k in levels])
    ax.set_xlabel("perturbation level")
    ax.set_ylabel("label flips (% of images)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8, frameon=False)
    return ax


def save_figure(fig, stem: str | Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` (atomically); returns the paths."""
    import io

    from runkit.files import atomic_write_bytes

    stem = Path(stem)
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), buf.getvalue()))
    return paths
