"""The study's files: distances.csv, summary.csv, wilcoxon.csv / mannwhitney.csv, summary.json and the figures
(PNG + PDF), written by `write_study_outputs`; `read_distances` reads distances.csv back.

Tables go through `cubdata.io`'s CSV writer and reader; NaN cells are spelled ``nan`` (as they always were in
these tables) so that an undefined metric reads back as NaN, and an empty cell as a missing value."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from runkit.files import atomic_write_text, read_csv
from runkit.files import write_csv as _write_csv

from analysis.hspace.stats import group_tests, summarize_distances

if TYPE_CHECKING:
    from analysis.hspace.study import HSpaceResult

__all__ = ["write_csv", "read_distances", "write_study_outputs", "RECORD_FIELDS", "DISTANCE_COLUMNS",
           "WILCOXON_COLUMNS", "MANN_WHITNEY_COLUMNS", "TEST_FILES"]

#: Recorded per image and level beside the L2 ``distance`` (manifest and distances.csv).
RECORD_FIELDS = ("cosine_distance", "relative_distance", "dh_norm", "dh_rel")
DISTANCE_COLUMNS = ("group", "image_id", "level", "alpha", "distance", "path") + RECORD_FIELDS
WILCOXON_COLUMNS = ("level", "metric", "group_a", "group_b", "n_pairs", "statistic", "p_value", "median_a",
                    "median_b", "median_diff", "alternative", "test")
MANN_WHITNEY_COLUMNS = ("level", "group_a", "group_b", "n_a", "n_b", "u_statistic", "p_value", "median_a",
                        "median_b", "alternative", "metric", "test")
#: test -> (file name, columns)
TEST_FILES = {"wilcoxon": ("wilcoxon.csv", WILCOXON_COLUMNS), "mann-whitney": ("mannwhitney.csv", MANN_WHITNEY_COLUMNS)}


def write_csv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) as CSV atomically (`cubdata.write_csv`); ``columns`` default to the first row's
    keys; NaN is written ``nan``."""
    columns = list(columns or (rows[0].keys() if rows else []))
    return _write_csv(path, rows, columns, nan="nan")


def read_distances(out_dir: str | Path) -> list[dict]:
    """Read ``distances.csv`` of a study folder back (level int; alpha, distance and `RECORD_FIELDS` float); its
    header must be `DISTANCE_COLUMNS`."""
    path = Path(out_dir) / "distances.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python -m analysis.hspace --out {out_dir}` first")
    with open(path, encoding="utf-8") as fh:  # our column names are plain words: the header splits on commas
        found = fh.readline().rstrip("\r\n").split(",")
    if found != list(DISTANCE_COLUMNS):
        raise ValueError(f"{path}: expected columns {list(DISTANCE_COLUMNS)}, found {found}; re-run "
                         f"`python -m analysis.hspace --out {out_dir}`")
    return read_csv(path, ints=("level",), floats=("alpha", "distance") + RECORD_FIELDS)


def write_study_outputs(result: "HSpaceResult", out: str | Path, test: str = "wilcoxon",
                        figures: bool = True) -> dict[str, Path]:
    """Write distances.csv, summary.csv, the tests between groups (`group_tests` with ``test``: wilcoxon.csv or
    mannwhitney.csv, its path under key ``"tests"``), summary.json and, with ``figures``, the figures (PNG + PDF)."""
    out = Path(out)
    paths = {"distances": write_csv(out / "distances.csv", result.rows, DISTANCE_COLUMNS)}
    summary = summarize_distances(result.rows)
    paths["summary_csv"] = write_csv(out / "summary.csv", summary)
    tests = group_tests(result.rows, test=test)
    name, columns = TEST_FILES[test]
    paths["tests"] = write_csv(out / name, tests, columns)
    info = {"protocol": result.config.protocol(), "groups": result.groups, "provenance": result.provenance,
            "seconds_per_image": result.seconds_per_image, "unet_evals_per_image": result.unet_evals_per_image,
            "grid_images": {g: [e[0] for e in items] for g, items in result.grid.items()},
            "summary": summary, "test": test, "group_tests": tests}
    paths["summary_json"] = atomic_write_text(out / "summary.json", json.dumps(info, indent=1))
    if figures:
        paths.update(write_figures(result, out))
    return paths


def write_figures(result: "HSpaceResult", out: Path) -> dict[str, Path]:
    """histograms, histogram_overlay and (when the result holds grid images) grid, each as PNG and PDF."""
    import matplotlib.pyplot as plt  # headless: matplotlib falls back to Agg by itself

    from analysis.hspace import plots

    alphas = result.config.alphas
    paths = {}
    fig = plots.plot_distance_histograms(result.rows, alphas=alphas)
    paths["histograms"] = plots.save_figure(fig, out / "histograms")[0]
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    plots.plot_histogram_overlay(result.rows, ax=ax, level=result.config.levels)
    paths["histogram_overlay"] = plots.save_figure(fig, out / "histogram_overlay")[0]
    plt.close(fig)
    if any(result.grid.values()):
        fig = plots.plot_level_grid(result.grid, alphas=alphas)
        paths["grid"] = plots.save_figure(fig, out / "grid")[0]
        plt.close(fig)
    return paths
