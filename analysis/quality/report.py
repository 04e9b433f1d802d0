"""The report of `analysis.quality`: one row per method as CSV and as a Markdown table, and the methods' labels."""
from __future__ import annotations

import math
import os
from pathlib import Path

from runkit.files import atomic_write_text, write_csv

from analysis.quality.evaluate import HIGHER_IS_BETTER, parse_metrics

__all__ = ["summary_rows", "format_markdown", "write_report", "method_labels"]

_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "fid": "FID"}


def summary_rows(results: dict[str, dict]) -> list[dict]:
    """One dict per method: ``{"method", "n", <metric>: value}`` from ``{method: evaluate_quality(...)}``."""
    return [{"method": name, **res["summary"]} for name, res in results.items()]


def _fmt(m: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.4f}" if m in ("ssim", "lpips") else f"{v:.2f}"


def format_markdown(rows: list[dict], metrics) -> str:
    """A Markdown table (methods x metrics, arrows for the better direction, best value in bold)."""
    metrics = parse_metrics(metrics)
    head = "| method | n | " + " | ".join(f"{_LABELS[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in metrics) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(metrics)]
    best = {}
    for m in metrics:
        vals = [r.get(m) for r in rows if r.get(m) is not None and math.isfinite(r.get(m))]
        if len(vals) > 1:
            best[m] = max(vals) if HIGHER_IS_BETTER[m] else min(vals)
    for r in rows:
        cells = [(f"**{_fmt(m, r.get(m))}**" if m in best and r.get(m) == best[m] else _fmt(m, r.get(m))) for m in metrics]
        lines.append(f"| {r['method']} | {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``per_image.csv``, ``summary.csv`` and ``summary.md`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    metrics = next(iter(results.values()))["metrics"] if results else []
    per_image = [{"method": name, **r} for name, res in results.items() for r in res["per_image"]]
    rows = summary_rows(results)
    return {
        "per_image": write_csv(out / "per_image.csv", per_image, ["method", "image", *(m for m in metrics if m != "fid")],
                               nan="nan"),
        "summary_csv": write_csv(out / "summary.csv", rows, ["method", "n", *metrics], nan="nan"),
        "summary_md": atomic_write_text(out / "summary.md", format_markdown(rows, metrics)),
    }


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
