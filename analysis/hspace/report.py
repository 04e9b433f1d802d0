"""The study's files: distances.csv, summary.csv, wilcoxon.csv / mannwhitney.csv (every test of the study, its
p-values corrected together), summary.json and the figures (PNG + PDF), written by `write_study_outputs`;
`read_distances` reads distances.csv back.

Tables go through `cubdata.io`'s CSV writer and reader; NaN cells are spelled ``nan`` (as they always were in
these tables) so that an undefined metric reads back as NaN, and an empty cell as a missing value."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from runkit.files import atomic_write_text, read_csv
from runkit.files import write_csv as _write_csv

from analysis.hspace.stats import group_tests, paper_ordering, summarize_distances

if TYPE_CHECKING:
    from analysis.hspace.study import HSpaceResult

__all__ = ["write_csv", "markdown_table", "read_distances", "write_study_outputs", "RECORD_FIELDS",
           "DISTANCE_COLUMNS", "WILCOXON_COLUMNS", "MANN_WHITNEY_COLUMNS", "TEST_FILES"]

#: Recorded per image and level beside the L2 ``distance`` (manifest and distances.csv).
RECORD_FIELDS = ("cosine_distance", "relative_distance", "dh_norm", "dh_rel", "pixel_change", "label_flip")
DISTANCE_COLUMNS = ("group", "image_id", "level", "alpha", "distance", "path") + RECORD_FIELDS
WILCOXON_COLUMNS = ("level", "metric", "group_a", "group_b", "n_pairs", "statistic", "p_value", "p_adjusted",
                    "p_adjust", "mean_a", "mean_b", "median_a", "median_b", "median_diff", "alternative", "test")
MANN_WHITNEY_COLUMNS = ("level", "group_a", "group_b", "n_a", "n_b", "u_statistic", "p_value", "p_adjusted",
                        "p_adjust", "mean_a", "mean_b", "median_a", "median_b", "alternative", "metric", "test")
#: test -> (file name, columns)
TEST_FILES = {"wilcoxon": ("wilcoxon.csv", WILCOXON_COLUMNS), "mann-whitney": ("mannwhitney.csv", MANN_WHITNEY_COLUMNS)}


def write_csv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) as CSV atomically (`cubdata.write_csv`); ``columns`` default to the first row's
    keys; NaN is written ``nan``."""
    columns = list(columns or (rows[0].keys() if rows else []))
    return _write_csv(path, rows, columns, nan="nan")


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], formats: Mapping[str, str] | None = None,
                   headers: Mapping[str, str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts) with ``columns``; ``formats`` maps a column to a format string
    (``"{:.1f}"``), ``headers`` a column to its header text. NaN cells read "n/a"."""
    formats, headers = dict(formats or {}), dict(headers or {})

    def cell(col: str, value) -> str:
        if isinstance(value, float) and value != value:
            return "n/a"
        return formats[col].format(value) if col in formats else str(value)

    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(c, r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


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
                        figures: bool = True, p_adjust: str = "holm") -> dict[str, Path]:
    """Write distances.csv, summary.csv, the tests between groups (`group_tests` with ``test`` and
    ``p_adjust``: wilcoxon.csv or mannwhitney.csv, its path under key ``"tests"``), summary.json (with the
    correction, the size of its family and `paper_ordering` at the top level) and, with ``figures``, the
    figures (PNG + PDF)."""
    out = Path(out)
    paths = {"distances": write_csv(out / "distances.csv", result.rows, DISTANCE_COLUMNS)}
    summary = summarize_distances(result.rows)
    paths["summary_csv"] = write_csv(out / "summary.csv", summary)
    tests = group_tests(result.rows, test=test, p_adjust=p_adjust)
    name, columns = TEST_FILES[test]
    paths["tests"] = write_csv(out / name, tests, columns)
    top = result.config.levels
    ordering = {m: paper_ordering(tests, top, m) for m in ("distance", "pixel_change", "label_flip")}
    info = {"protocol": result.config.protocol(), "groups": result.groups, "provenance": result.provenance,
            "seconds_per_image": result.seconds_per_image, "unet_evals_per_image": result.unet_evals_per_image,
            "grid_images": {g: [e[0] for e in items] for g, items in result.grid.items()},
            "summary": summary, "test": test, "p_adjust": p_adjust,
            "tests_in_family": sum(t["p_adjusted"] == t["p_adjusted"] for t in tests),
            "paper_ordering": {m: v for m, v in ordering.items() if v}, "group_tests": tests}
    paths["summary_json"] = atomic_write_text(out / "summary.json", json.dumps(info, indent=1))
    if figures:
        paths.update(write_figures(result, out))
    return paths


def write_figures(result: "HSpaceResult", out: Path) -> dict[str, Path]:
    """histograms, histogram_overlay, (when the result holds grid images) grid and (when a classifier judged the
    generations) flip_rates, each as PNG and PDF."""
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
    summary = summarize_distances(result.rows)
    if any(s["flip_rate"] == s["flip_rate"] for s in summary):  # a classifier judged the generations
        fig, ax = plt.subplots(figsize=(5, 3.2))
        plots.plot_flip_rates(summary, ax=ax)
        paths["flip_rates"] = plots.save_figure(fig, out / "flip_rates")[0]
        plt.close(fig)
    return paths
