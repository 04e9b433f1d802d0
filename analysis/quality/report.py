"""The report of `analysis.quality`: one row per method as CSV and as a Markdown table, the paired comparisons,
and the methods' labels."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from runkit.files import atomic_write_text, write_csv

from analysis.quality.evaluate import HIGHER_IS_BETTER, parse_metrics
from analysis.quality.paired import PAIRED_COLUMNS

__all__ = ["summary_rows", "format_markdown", "format_paired_markdown", "write_report", "method_labels"]

_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "fid": "FID"}


def _replicated(results: dict[str, list[dict]]) -> bool:
    return any(len(runs) > 1 for runs in results.values())


def summary_rows(results: dict[str, list[dict]]) -> list[dict]:
    """One dict per method from ``{method: [evaluate_quality(...) per run]}``: ``{"method", "n", <metric>: value}``;
    when some method holds several runs (one per restorer seed), also ``"seeds"`` and each metric is the mean over
    the runs of the run's value."""
    if not _replicated(results):
        return [{"method": name, **runs[0]["summary"]} for name, runs in results.items()]
    rows = []
    for name, runs in results.items():
        row = {"method": name, "seeds": len(runs), "n": runs[0]["summary"]["n"]}
        for m in runs[0]["metrics"]:
            row[m] = float(np.mean([run["summary"][m] for run in runs]))
        rows.append(row)
    return rows


def _fmt(m: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}" if m in ("ssim", "lpips") else f"{v:.2f}"


def format_markdown(rows: list[dict], metrics) -> str:
    """A Markdown table (methods x metrics, arrows for the better direction, best value in bold); with
    replicates a ``seeds`` column and the values are means over the runs."""
    metrics = parse_metrics(metrics)
    seeds = bool(rows) and "seeds" in rows[0]
    head = ("| method |" + (" seeds |" if seeds else "") + " n | "
            + " | ".join(f"{_LABELS[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in metrics) + " |")
    lines = [head, "|---|" + ("---:|" if seeds else "") + "---:|" + "---:|" * len(metrics)]
    best = {}
    for m in metrics:
        vals = [r.get(m) for r in rows if r.get(m) is not None and math.isfinite(r.get(m))]
        if len(vals) > 1:
            best[m] = max(vals) if HIGHER_IS_BETTER[m] else min(vals)
    for r in rows:
        cells = [(f"**{_fmt(m, r.get(m))}**" if m in best and r.get(m) == best[m] else _fmt(m, r.get(m))) for m in metrics]
        lines.append(f"| {r['method']} |" + (f" {r['seeds']} |" if seeds else "") + f" {r['n']} | " + " | ".join(cells) + " |")
    if seeds:
        lines += ["", "With several runs (one restoration per restorer seed) a method's value is the mean over its runs."]
    return "\n".join(lines) + "\n"


def _fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


def format_paired_markdown(rows: list[dict], confidence: float = 0.95, n_boot: int = 1000, seed: int = 0) -> str:
    """The paired comparisons (`analysis.quality.paired.paired_rows`) as Markdown: one line per pair and metric,
    Delta = A - B with its CI, the test and p (Holm-corrected over all rows when so adjusted)."""
    if not rows:
        return ""
    holm = rows[0]["p_adjust"] == "holm"
    lines = ["", f"Paired comparisons on the same images (Δ = mean of A minus mean of B; {confidence:.0%} bootstrap CI, "
                 f"{n_boot} resamples, seed {seed}; ↑/↓: the metric's better direction):", "",
             "| A | B | metric | n | runs | Δ [CI] | test | p |" + (" p (Holm) |" if holm else ""),
             "|---|---|---|---:|:---:|:---:|---|---:|" + ("---:|" if holm else "")]
    for r in rows:
        digits = 4 if r["metric"] in ("ssim", "lpips") else 2
        arrow = "↑" if HIGHER_IS_BETTER[r["metric"]] else "↓"
        test = ("Wilcoxon" if r["test"] == "wilcoxon" else
                f"two-level t, df {r['df']:.1f}" if r["df"] is not None else "two-level t (no variance)")
        lines.append(f"| {r['a']} | {r['b']} | {_LABELS[r['metric']]} {arrow} | {r['n']} | {r['seeds_a']} v {r['seeds_b']} | "
                     f"{r['delta']:+.{digits}f} [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}] | {test} | "
                     f"{_fmt_p(r['p_value'])} |" + (f" {_fmt_p(r['p_adjusted'])} |" if holm else ""))
    lines += ["", "Test: one run per method: Wilcoxon signed-rank test of the per-image differences (bootstrap CI over "
                  "images); several runs (one per restorer seed): the two-level t-test (per-image paired variance plus "
                  "each method's between-seed variance; CI: two-level bootstrap, seeds then images)."
              + (f" p (Holm): corrected over all {len(rows)} comparisons of this report." if holm else
                 f" p not corrected for multiple comparisons ({len(rows)} tests).")]
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, list[dict]], out_dir: str | os.PathLike, paired: list[dict] | None = None,
                 paired_meta: dict | None = None) -> dict[str, Path]:
    """Write ``per_image.csv``, ``summary.csv`` and ``summary.md`` into ``out_dir`` (atomically), and with
    ``paired`` rows (`analysis.quality.paired.paired_rows`) ``paired.csv`` and their section of ``summary.md``.
    ``results``: method -> its runs (`evaluate_quality` dicts); with replicates ``per_image.csv`` gains a
    ``replicate`` column (0-based) and ``summary.csv`` a ``seeds`` column."""
    out = Path(out_dir)
    first = next(iter(results.values()))[0] if results else {"metrics": []}
    metrics = first["metrics"]
    scored = [m for m in metrics if m != "fid"]
    if _replicated(results):
        per_image = [{"method": name, "replicate": k, **r} for name, runs in results.items()
                     for k, run in enumerate(runs) for r in run["per_image"]]
        image_columns, summary_columns = ["method", "replicate", "image", *scored], ["method", "seeds", "n", *metrics]
    else:
        per_image = [{"method": name, **r} for name, runs in results.items() for r in runs[0]["per_image"]]
        image_columns, summary_columns = ["method", "image", *scored], ["method", "n", *metrics]
    rows = summary_rows(results)
    md = format_markdown(rows, metrics) + format_paired_markdown(paired or [], **(paired_meta or {}))
    paths = {
        "per_image": write_csv(out / "per_image.csv", per_image, image_columns, nan="nan"),
        "summary_csv": write_csv(out / "summary.csv", rows, summary_columns, nan="nan"),
        "summary_md": atomic_write_text(out / "summary.md", md),
    }
    if paired:
        paths["paired"] = write_csv(out / "paired.csv", paired, PAIRED_COLUMNS, ".6g", nan="nan")
    return paths


def method_labels(pred_dirs) -> list[str]:
    """Table labels of the methods' folders: each folder's shortest path suffix that no other folder's path
    ends in, joined with '/' (``x/fog/3``, ``x/rain/3`` -> ``fog/3``, ``rain/3``; ``x/wo``, ``x/w`` -> ``wo``,
    ``w``). Paths are compared as absolute paths; a folder whose every suffix is another's (``/fog/3`` beside
    ``/a/fog/3``) gets its absolute path. The same folder named twice keeps its suffix twice (callers number
    repeats)."""
    paths = [Path(os.path.abspath(p)) for p in pred_dirs]
    parts = [p.parts[1:] if p.anchor else p.parts for p in paths]
    labels = []
    for i, ps in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i and q != ps]
        for k in range(1, len(ps) + 1):
            if all(q[-k:] != ps[-k:] for q in others):
                labels.append("/".join(ps[-k:]))
                break
        else:
            labels.append(str(paths[i]))
    return labels
