"""What a matplotlib figure drew, as plain (JSON-able) data, for tests that must fail when a plot draws nothing:
the images of each Axes (shapes, pixel sums), its bar groups (one per ``ax.bar`` / bar-type ``ax.hist`` call:
label and bar heights), its polygons (step histograms: label, area, x extent) and its legend labels.

`kernel_launcher` is the IPython kernel of the notebook tests: it records every figure the notebook draws
(displayed inline or saved) into the JSON file named by ``$DRAWN_FIGURES_JSON``."""
from __future__ import annotations

import numpy as np
import pytest

__all__ = ["describe_axes", "describe_figure", "assert_histograms_drawn", "assert_overlay_drawn", "assert_grid_drawn",
           "KERNEL_LAUNCHER"]


def _area(xy) -> float:
    x, y = np.asarray(xy, dtype=float).T
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def describe_axes(ax) -> dict:
    from matplotlib.container import BarContainer
    from matplotlib.patches import Polygon

    legend = ax.get_legend()
    return {
        "images": [list(np.shape(im.get_array())) for im in ax.get_images()],
        "image_sums": [int(np.asarray(im.get_array(), dtype=np.int64).sum()) for im in ax.get_images()],
        "bar_groups": [{"label": c.get_label() if not str(c.get_label()).startswith("_") else c.patches[0].get_label(),
                        "heights": [float(p.get_height()) for p in c.patches]}
                       for c in ax.containers if isinstance(c, BarContainer)],
        "polygons": [{"label": p.get_label(), "area": _area(p.get_xy()),
                      "x_extent": float(np.ptp(np.asarray(p.get_xy())[:, 0]))}
                     for p in ax.patches if isinstance(p, Polygon)],
        "legend": [t.get_text() for t in legend.get_texts()] if legend is not None else [],
        "title": ax.get_title(),
        "xlabel": ax.get_xlabel(),
    }


def describe_figure(fig) -> dict:
    return {"axes": [describe_axes(ax) for ax in fig.axes]}


# ------------------------------------------------------------------ what the h-space figures must show
def assert_histograms_drawn(fig: dict, groups: dict[str, int], levels: int, bins: int = 20):
    """One panel per group, one histogram per level in each: ``bins`` bars whose heights sum to the group's
    number of images (``groups``: name -> images); the level labels in the first panel's legend."""
    assert len(fig["axes"]) == len(groups)
    for ax, (g, n) in zip(fig["axes"], groups.items()):
        assert ax["title"].startswith(g)
        assert [len(b["heights"]) for b in ax["bar_groups"]] == [bins] * levels
        assert [sum(b["heights"]) for b in ax["bar_groups"]] == [n] * levels     # every distance counted once
    assert [t.split(" ")[0] for t in fig["axes"][0]["legend"]] == ["level"] * levels


def assert_overlay_drawn(fig: dict, groups: dict[str, int], bins: int = 20):
    """One Axes; per group a filled and an outlined step histogram enclosing n * bin width (n = its images);
    legend = the groups with their n."""
    (ax,) = fig["axes"]
    assert ax["legend"] == [f"{g} (n={n})" for g, n in groups.items()]
    assert len(ax["polygons"]) == 2 * len(groups)
    for poly, n in zip(ax["polygons"], [n for n in groups.values() for _ in (0, 1)]):
        assert poly["area"] == pytest.approx(n * poly["x_extent"] / bins, rel=1e-6)


def assert_grid_drawn(fig: dict, grid: dict, levels: int):
    """One row per grid image, columns input | level 0..K, one image per Axes, the entry's pixels."""
    entries = [e for items in grid.values() for e in items]
    assert len(fig["axes"]) == len(entries) * (levels + 2)
    want = [img for _, inp, gens in entries for img in [inp, *gens]]
    assert [ax["images"] for ax in fig["axes"]] == [[list(img.shape)] for img in want]
    assert [ax["image_sums"] for ax in fig["axes"]] == [[int(img.astype(np.int64).sum())] for img in want]


#: Source of the notebook tests' kernel: records each drawn figure's description (by figure, in the order of
#: first drawing; a figure drawn again, e.g. saved as PNG and PDF then shown, is described once, as last drawn).
KERNEL_LAUNCHER = '''\
import itertools, json, os, sys
sys.path.insert(0, {tests_dir!r})
import matplotlib.figure
from drawn_figures import describe_figure

_draw, _ids, _drawn = matplotlib.figure.Figure.draw, itertools.count(), {{}}


def _recording_draw(self, renderer):
    result = _draw(self, renderer)
    if "_drawn_id" not in self.__dict__:
        self._drawn_id = next(_ids)
    _drawn[self._drawn_id] = describe_figure(self)
    path = os.environ["DRAWN_FIGURES_JSON"]
    with open(path + ".tmp", "w") as fh:
        json.dump([_drawn[k] for k in sorted(_drawn)], fh)
    os.replace(path + ".tmp", path)
    return result


matplotlib.figure.Figure.draw = _recording_draw
from ipykernel.kernelapp import launch_new_instance

launch_new_instance()
'''
