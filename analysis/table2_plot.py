"""Grouped bar chart of Table 2 (semantic recovery on degraded CUB): per degradation and classifier, bars for
degraded / w/o DiffLoss / w/ DiffLoss with their confidence intervals, and the clean accuracy as a reference.

    from analysis.classify import load_table
    from analysis.table2_plot import plot_table2_bars
    rows = load_table("runs/table2")                  # table.csv of `python -m analysis.classify`
    ax = plot_table2_bars(rows, classifier="resnet50")
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from analysis.classify.spec import CLEAN
from analysis.demo.table2 import DEMO_ROWS

__all__ = ["plot_table2_bars", "CONFIG_ORDER", "CONFIG_COLORS"]

#: Bars in this order within a cluster (the demo's and the paper's rows; other configs follow in table order);
#: "clean" is the reference line.
CONFIG_ORDER = DEMO_ROWS
CONFIG_COLORS = {CLEAN: "#2ca02c", **dict(zip(CONFIG_ORDER, ("#9e9e9e", "#4c72b0", "#dd8452")))}
_REQUIRED = ("config", "degradation", "classifier", "top1", "ci_low", "ci_high")


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def _check_rows(rows: list, classifier: str | None) -> tuple[list, list[str]]:
    """The rows of the classifiers to draw and those classifiers (ValueError naming what is missing)."""
    if not rows:
        raise ValueError("no rows to plot: expected the rows of analysis.classify.load_table(out_dir)")
    missing = [c for c in _REQUIRED if c not in rows[0]]
    if missing:
        raise ValueError(f"rows lack column(s) {missing}; expected the columns of table.csv: {list(_REQUIRED)}")
    classifiers = _ordered(str(r["classifier"]) for r in rows)
    if classifier is not None:
        if classifier not in classifiers:
            raise ValueError(f"classifier {classifier!r} is not in the table; present: {classifiers}")
        classifiers = [classifier]
    return [r for r in rows if str(r["classifier"]) in classifiers], classifiers


def _draw_bars(ax, cell: dict, configs: list[str], clusters: list[tuple[str, str]], x: np.ndarray,
               annotate: bool) -> None:
    """One bar series per config (its CI as error bars) over the (degradation, classifier) clusters."""
    import matplotlib.pyplot as plt

    width = 0.8 / len(configs)
    other_colors = plt.get_cmap("tab10")
    for j, cfg in enumerate(configs):
        found = [(i, cell[(cfg, deg, clf)]) for i, (deg, clf) in enumerate(clusters) if (cfg, deg, clf) in cell]
        if not found:
            continue
        xs = [x[i] - 0.4 + width * (j + 0.5) for i, _ in found]
        ys = [float(r["top1"]) for _, r in found]
        lo = [max(0.0, y - float(r["ci_low"])) for y, (_, r) in zip(ys, found)]
        hi = [max(0.0, float(r["ci_high"]) - y) for y, (_, r) in zip(ys, found)]
        color = CONFIG_COLORS.get(cfg, other_colors((j + 3) % 10))
        seeds = sorted({int(r.get("seeds") or 1) for _, r in found})  # a replicated table: runs per cell
        label = cfg if seeds == [1] else f"{cfg} (mean of {seeds[0]}{f'-{seeds[-1]}' if len(seeds) > 1 else ''} seeds)"
        bars = ax.bar(xs, ys, width=width * 0.95, color=color, label=label, yerr=[lo, hi], capsize=3,
                      error_kw={"elinewidth": 1, "ecolor": "#333333"})
        if annotate:
            for b, y, h in zip(bars, ys, hi):
                ax.text(b.get_x() + b.get_width() / 2, y + h + 1, f"{y:.1f}", ha="center", va="bottom", fontsize=7)


def _draw_clean_reference(ax, cell: dict, classifiers: list[str], clusters: list[tuple[str, str]],
                          x: np.ndarray) -> None:
    """Each classifier's clean accuracy: a dashed line over its clusters, its CI a band."""
    for k, clf in enumerate(classifiers):
        ref = cell.get(("clean", "clean", clf))
        if ref is None:
            continue
        idx = [i for i, (_, c) in enumerate(clusters) if c == clf]
        x0, x1 = x[idx[0]] - 0.45, x[idx[-1]] + 0.45
        ax.hlines(float(ref["top1"]), x0, x1, colors=CONFIG_COLORS["clean"], linestyles="--", linewidth=1.4,
                  label="clean" if k == 0 else None, zorder=3)
        ax.fill_between([x0, x1], float(ref["ci_low"]), float(ref["ci_high"]), color=CONFIG_COLORS["clean"],
                        alpha=0.12, linewidth=0, zorder=0)


def plot_table2_bars(rows: Sequence[Mapping], ax=None, classifier: str | None = None, annotate: bool = True):
    """Grouped bars of top-1 accuracy (%) with CI error bars.

    ``rows``: dicts as returned by ``analysis.classify.load_table`` (config, degradation, classifier, top1,
    ci_low, ci_high in percent 0-100; the clean row has config = degradation = "clean"; a table with replicates
    also has ``seeds``, and the legend says a row's bars are means over that many seeds).
    ``classifier``: draw only this classifier (clusters = degradations); ``None``: one cluster per
    (degradation, classifier). Bars: degraded, w/o DiffLoss, w/ DiffLoss (and any other config), error bars
    from the CI; the clean accuracy of each classifier is a dashed line over its clusters with its CI as a band.
    Returns the Axes."""
    import matplotlib.pyplot as plt

    rows, classifiers = _check_rows(list(rows), classifier)
    degradations = _ordered(str(r["degradation"]) for r in rows if str(r["config"]) != "clean")
    present = _ordered(str(r["config"]) for r in rows if str(r["config"]) != "clean")
    configs = [c for c in CONFIG_ORDER if c in present] + [c for c in present if c not in CONFIG_ORDER]
    if not degradations or not configs:
        raise ValueError("the table has only clean rows; nothing to compare")
    cell = {(str(r["config"]), str(r["degradation"]), str(r["classifier"])): r for r in rows}

    ax = ax if ax is not None else plt.gca()
    clusters = [(d, c) for c in classifiers for d in degradations]
    x = np.arange(len(clusters), dtype=float)
    _draw_bars(ax, cell, configs, clusters, x, annotate)
    _draw_clean_reference(ax, cell, classifiers, clusters, x)
    ax.set_xticks(x)
    ax.set_xticklabels([d if len(classifiers) == 1 else f"{d}\n{c}" for d, c in clusters])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 105)
    title = "Table 2: semantic recovery on degraded CUB"
    ax.set_title(title + (f" ({classifiers[0]})" if len(classifiers) == 1 else ""), fontsize=10)
    ax.legend(fontsize=8, frameon=False, ncol=min(4, len(configs) + 1), loc="upper center",
              bbox_to_anchor=(0.5, -0.12 if len(classifiers) == 1 else -0.2))
    return ax
