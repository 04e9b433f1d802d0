"""The probe's figure: h of each group's test images in the 2-D PCA of the train images' h, coloured by class,
one panel per group (`plot_pca_panels`); plot functions take arrays and axes, as `analysis.hspace.plots` does."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["plot_pca_panels", "plot_pca_group"]


def plot_pca_group(ax, points: np.ndarray, labels: np.ndarray, title: str, classes: Sequence[int],
                   class_names: Mapping[int, str] | None = None):
    """One panel: ``points`` [N, 2] (PCA coordinates) of the images whose ``labels`` [N] are in ``classes``,
    coloured by class (tab10/tab20 colours, one per class of ``classes``). Returns the Axes."""
    import matplotlib.pyplot as plt

    points, labels = np.asarray(points), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (points.shape[0],):
        raise ValueError(f"expected points [N, 2] and labels [N], got {points.shape} and {labels.shape}")
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        sel = labels == c
        if sel.any():
            name = (class_names or {}).get(int(c), str(int(c)))
            ax.scatter(points[sel, 0], points[sel, 1], s=12, color=cmap(i % cmap.N), label=name, alpha=0.85,
                       edgecolors="none")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_pca_panels(projections: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                    groups: Sequence[str], fig=None, max_classes: int = 10,
                    class_names: Mapping[int, str] | None = None, title: str | None = None):
    """One panel per group of ``groups`` (keys of ``projections`` / ``labels``: [N, 2] PCA points and [N]
    classes), sharing axes; only the first ``max_classes`` classes (in sorted order) are drawn, each in its own
    colour, with one legend. Returns the Figure."""
    import matplotlib.pyplot as plt

    missing = [g for g in groups if g not in projections or g not in labels]
    if missing:
        raise ValueError(f"no projection for group(s) {missing}; have {sorted(projections)}")
    classes = sorted({int(c) for g in groups for c in np.asarray(labels[g])})[:max_classes]
    if fig is None:
        fig = plt.figure(figsize=(2.6 * len(groups) + 1.4, 2.9))
    axes = fig.subplots(1, len(groups), sharex=True, sharey=True, squeeze=False)[0]
    for ax, g in zip(axes, groups):
        plot_pca_group(ax, projections[g], labels[g], g, classes, class_names)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=7, frameon=False, title="class", title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.86, top=0.82 if title else 0.9, bottom=0.04, wspace=0.05)
    return fig
