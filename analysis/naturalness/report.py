"""The report: Markdown tables (per-set means, paired differences), the figure and the files of a run."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runkit.files import atomic_write_bytes, atomic_write_text, write_csv

from analysis.naturalness.measure import CLEAN, METRICS, ROW_KEYS
from analysis.naturalness.stats import PAIRED_COLUMNS, PAIRED_METRICS, SUMMARY_COLUMNS, summarize

__all__ = ["METRIC_LABELS", "OUTPUT_FILES", "format_markdown", "format_paired_markdown", "set_styles",
           "plot_naturalness", "plot_paired", "draw_report", "write_outputs"]

METRIC_LABELS = {"denoise": "denoising error  |eps(z_t) - noise|^2", "nat": "L_nat  |eps(z_t) - eps(x_t)|^2",
                 "sem": "L_sem  |h(z_t) - h(x_t)|^2", "sem_rel": "L_sem / |h(x_t)|^2"}
#: The files a run writes in its folder besides the run records (config.json, done.json, manifest.json).
OUTPUT_FILES = ("naturalness.csv", "paired.csv", "per_image.csv", "naturalness.md", "naturalness.png")
PER_IMAGE_COLUMNS = ROW_KEYS


def format_markdown(summary: Sequence[Mapping], metric: str) -> str:
    """One Markdown table of ``metric``: a row per set, a column per timestep (mean over images)."""
    sets = list(dict.fromkeys(r["set"] for r in summary))
    ts = sorted({r["t"] for r in summary})
    cell = {(r["set"], r["t"]): r["mean"] for r in summary if r["metric"] == metric}
    lines = [f"| {metric} | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
    for s in sets:
        lines.append(f"| {s} | " + " | ".join(f"{cell[(s, t)]:.3g}" if (s, t) in cell else "" for t in ts) + " |")
    return "\n".join(lines)


def format_paired_markdown(paired: Sequence[Mapping], confidence: float = 0.95, alpha: float = 0.05) -> str:
    """One Markdown table of the paired tests: a row per comparison, metric and t (mean difference a - b with its
    CI, the images where a is lower / higher, the raw and adjusted Wilcoxon p-values; ``*``: adjusted p <
    ``alpha``)."""
    pct = f"{confidence * 100:g}%"
    lines = [f"| a - b | metric | t | mean a | mean b | mean a - b | {pct} CI | a lower / higher | p | p adj. |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in paired:
        star = " *" if r["p_adjusted"] < alpha else ""
        lines.append(f"| {r['set_a']} - {r['set_b']} | {r['metric']} | {r['t']} | {r['mean_a']:.3g} | "
                     f"{r['mean_b']:.3g} | {r['mean_diff']:.3g} | [{r['ci_low']:.3g}, {r['ci_high']:.3g}] | "
                     f"{r['n_a_lower']} / {r['n_a_higher']} | {r['p_value']:.2g} | {r['p_adjusted']:.2g}{star} |")
    return "\n".join(lines)


def set_styles(sets: Sequence[str]) -> dict[str, dict]:
    """Line style per set: ``clean`` black and dotted, on top; sets named ``ROW/GROUP`` (``w/ DiffLoss/fog``) coloured
    by group (the text after the last ``/``) with one line style per row, others one colour each."""
    others = [s for s in sets if s != CLEAN]
    out = {CLEAN: dict(color="black", linestyle=(0, (1, 1)), zorder=3)}  # the reference: drawn over the others
    if others and all("/" in s for s in others):
        groups = list(dict.fromkeys(s.rsplit("/", 1)[1] for s in others))
        rows = list(dict.fromkeys(s.rsplit("/", 1)[0] for s in others))
        dashes = ["-", "--", ":", "-."]
        for s in others:
            row, group = s.rsplit("/", 1)
            out[s] = dict(color=f"C{groups.index(group) % 10}", linestyle=dashes[rows.index(row) % len(dashes)])
    else:
        out.update({s: dict(color=f"C{i % 10}", linestyle="-") for i, s in enumerate(others)})
    return out


def plot_naturalness(summary: Sequence[Mapping], axes: Sequence | None = None, metrics: Sequence[str] = METRICS):
    """One panel per metric: mean against t (log y), one line per set with its 95% band (1.96 standard
    errors; unpaired, per set). ``clean`` is black and dashed; it is the floor of nat / sem / sem_rel (exactly 0,
    not drawn on the log axis). Returns the axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    sets = list(dict.fromkeys(r["set"] for r in summary))
    styles = set_styles(sets)
    for ax, metric in zip(axes, metrics):
        for s in sets:
            if s == CLEAN and metric != "denoise":
                continue  # identically 0 against itself
            pts = sorted((r["t"], r["mean"], r["std"], r["n"]) for r in summary
                         if r["set"] == s and r["metric"] == metric)
            t = np.array([p[0] for p in pts], float)
            m = np.array([p[1] for p in pts], float)
            se = np.array([p[2] / math.sqrt(max(p[3], 1)) for p in pts], float)
            style = styles[s]
            ax.plot(t, m, marker="o", markersize=3, label=s, **style)
            ax.fill_between(t, np.maximum(m - 1.96 * se, 1e-12), m + 1.96 * se, alpha=0.15, color=style["color"])
        ax.set_yscale("log")
        ax.set_xlabel("timestep t")
        ax.set_title(METRIC_LABELS[metric], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean over images")
    return axes


def plot_paired(paired: Sequence[Mapping], axes: Sequence | None = None, metrics: Sequence[str] = PAIRED_METRICS,
                alpha: float = 0.05):
    """One panel per metric: the paired mean difference a - b against t as a percentage of b's mean (so every
    t has the same scale), with its bootstrap CI (divided by the same mean), one line per comparison; filled
    markers where the adjusted p < ``alpha``. Comparisons against ``clean`` (mean 0) are not drawn. Returns the
    axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    pairs = list(dict.fromkeys((r["set_a"], r["set_b"]) for r in paired if r["set_b"] != CLEAN))
    for ax, metric in zip(axes, metrics):
        for k, (a, b) in enumerate(pairs):
            pts = sorted((r["t"], r) for r in paired if (r["set_a"], r["set_b"], r["metric"]) == (a, b, metric))
            if not pts:
                continue
            t = np.array([p[0] for p in pts], float)
            scale = np.array([100.0 / p[1]["mean_b"] if p[1]["mean_b"] else math.nan for p in pts])
            m = np.array([p[1]["mean_diff"] for p in pts]) * scale
            lo = np.array([p[1]["ci_low"] for p in pts]) * scale
            hi = np.array([p[1]["ci_high"] for p in pts]) * scale
            sig = np.array([p[1]["p_adjusted"] < alpha for p in pts])
            colour = plt.get_cmap("Dark2")(k % 8)  # not the sets' colours
            ax.plot(t, m, color=colour, label=f"{a} - {b}")
            ax.fill_between(t, lo, hi, color=colour, alpha=0.15)
            ax.scatter(t[sig], m[sig], color=colour, s=14, zorder=3)
            ax.scatter(t[~sig], m[~sig], facecolors="white", edgecolors=colour, s=14, zorder=3)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("timestep t")
        ax.set_title(f"paired {metric}: (a - b) / mean b", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("% of b's mean (filled: adj. p < 0.05)")
    return axes


def draw_report(summary: Sequence[Mapping], paired: Sequence[Mapping], title: str = ""):
    """The report's figure: the per-set means (`plot_naturalness`, top row) and, when there are paired tests,
    the paired differences (`plot_paired`, bottom row); the bottom row's first panel holds the legends of the sets
    and of the comparisons. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(METRICS), figsize=(4.2 * len(METRICS), 7.2), squeeze=False)
    plot_naturalness(summary, axes[0])
    legend_ax = axes[1][0]
    legend_ax.axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    sets_legend = legend_ax.legend(handles, labels, fontsize=7, loc="upper left", title="sets", title_fontsize=7,
                                   ncol=2 if len(labels) > 8 else 1, handlelength=4)  # long enough to show dashes
    if paired:
        plot_paired(paired, axes[1][1:])
        handles, labels = axes[1][1].get_legend_handles_labels()
        legend_ax.add_artist(sets_legend)
        legend_ax.legend(handles, labels, fontsize=7, loc="lower left", title="paired: a - b", title_fontsize=7)
    else:
        for ax in axes[1][1:]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def write_outputs(rows: Sequence[Mapping], paired: Sequence[Mapping], out: str | Path, title: str = "",
                  notes: Sequence[str] = (), confidence: float = 0.95, p_adjust: str = "holm") -> dict[str, Path]:
    """Write `OUTPUT_FILES` into ``out``: the per-set summary, the paired tests, the per-image rows, the Markdown
    report (title, notes, paired table, per-metric tables) and the figure. Returns ``{kind: path}``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    summary = summarize(rows)
    paths = {"csv": write_csv(out / "naturalness.csv", summary, SUMMARY_COLUMNS, float_format=".6g"),
             "paired": write_csv(out / "paired.csv", paired, PAIRED_COLUMNS, float_format=".6g"),
             "per_image": write_csv(out / "per_image.csv", rows, PER_IMAGE_COLUMNS, float_format=".8g")}
    parts = [title] if title else []
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes))
    if paired:
        parts.append(f"Paired per-image differences (Wilcoxon signed-rank, p adjusted by {p_adjust} over the "
                     f"{len(paired)} tests; * adjusted p < 0.05):\n\n" + format_paired_markdown(paired, confidence))
    tables = "\n\n".join(format_markdown(summary, m) for m in METRICS)
    parts.append("Per-set means over images (unpaired):\n\n" + tables)
    paths["md"] = atomic_write_text(out / "naturalness.md", "\n\n".join(parts) + "\n")
    fig = draw_report(summary, paired, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    paths["png"] = atomic_write_bytes(out / "naturalness.png", buf.getvalue())
    return paths
