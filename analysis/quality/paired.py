"""Paired comparisons of two methods on the same images: per-image Delta PSNR / SSIM / LPIPS (A minus B) with a
bootstrap CI and a test, Holm-corrected over all comparisons of a report.

Every method holds one or more runs (replicates: one restoration per restorer seed), each a list of per-image
rows from `analysis.quality.evaluate.evaluate_quality`. Both methods of one run each: the per-image
differences get a percentile bootstrap CI of their mean and the Wilcoxon signed-rank test
(`analysis.stats.paired_difference`). A method with several runs: the run-averaged per-image values, the
two-level bootstrap CI (seeds, then images: `analysis.stats.paired_delta_with_ci`) and the two-level t-test
(`analysis.stats.two_level_t_test`), which adds each method's between-seed variance to the paired image term.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from analysis.stats import adjust_p_values, paired_delta_with_ci, paired_difference, two_level_t_test

log = logging.getLogger(__name__)

__all__ = ["PAIRED_COLUMNS", "PAIRED_METRICS", "paired_matrix", "compare_methods", "paired_rows"]

#: The metrics measured per image (FID is one number per set: nothing to pair).
PAIRED_METRICS = ("psnr", "ssim", "lpips")
#: One row per compared pair and metric: delta = mean of A minus mean of B (the metric's units), its CI, the test
#: ("wilcoxon": statistic = W, df empty; "two-level t": statistic = t, with df), p_adjusted over all rows.
PAIRED_COLUMNS = ("a", "b", "metric", "n", "seeds_a", "seeds_b", "mean_a", "mean_b", "delta", "ci_low", "ci_high",
                  "test", "statistic", "df", "p_value", "p_adjusted", "p_adjust")


def paired_matrix(runs: Sequence[Sequence[dict]], metric: str, images: Sequence[str]) -> np.ndarray:
    """``float [R, N]``: ``metric`` of each run (rows of `evaluate_quality`'s ``per_image``) on ``images``, in
    that order. Raises ValueError naming an image a run lacks."""
    out = np.empty((len(runs), len(images)), dtype=np.float64)
    for k, rows in enumerate(runs):
        by_image = {r["image"]: r[metric] for r in rows}
        missing = [im for im in images if im not in by_image]
        if missing:
            raise ValueError(f"run {k + 1} lacks {len(missing)} of the compared images (e.g. {missing[0]!r})")
        out[k] = [by_image[im] for im in images]
    return out


def compare_methods(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> dict[str, Any]:
    """Method A against method B on the same images (``[R_a, N]`` and ``[R_b, N]`` per-image values, finite):
    ``{"n", "seeds_a", "seeds_b", "mean_a", "mean_b", "delta" (A - B), "ci_low", "ci_high", "test",
    "statistic", "df", "p_value"}``. One run each: `paired_difference` (bootstrap over images, Wilcoxon
    signed-rank); else the two-level bootstrap CI and t-test."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    base = {"n": int(a.shape[1]), "seeds_a": int(a.shape[0]), "seeds_b": int(b.shape[0]),
            "mean_a": float(a.mean()), "mean_b": float(b.mean())}
    if a.shape[0] == b.shape[0] == 1:
        r = paired_difference(a[0], b[0], n_boot=n_boot, confidence=confidence, seed=seed)
        return {**base, "delta": r["mean_diff"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "test": "wilcoxon",
                "statistic": r["statistic"], "df": None, "p_value": r["p_value"]}
    d = paired_delta_with_ci(b, a, n_boot=n_boot, confidence=confidence, seed=seed)  # mean(a) - mean(b)
    t = two_level_t_test(b, a)
    finite = bool(np.isfinite(t["t"]))  # not when nothing varies (se = 0): p is then 0 or 1
    return {**base, "delta": d["delta"], "ci_low": d["ci_low"], "ci_high": d["ci_high"], "test": "two-level t",
            "statistic": t["t"] if finite else None, "df": t["df"] if finite else None, "p_value": t["p_value"]}


def paired_rows(results: dict[str, list[dict]], pairs: Sequence[tuple[str, str]], metrics: Sequence[str],
                n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                p_adjust: str = "holm") -> list[dict[str, Any]]:
    """One `PAIRED_COLUMNS` row per pair ``(A, B)`` and per-image metric, from ``results`` (method -> its runs,
    each `evaluate_quality`'s dict). The images are those of A's first run (every run of A and B must hold
    them); an image whose value is not finite in some run (PSNR of an identical pair is inf) is left out of
    that metric's comparison, with a warning. All rows form one family for ``p_adjust``."""
    rows = []
    for name_a, name_b in pairs:
        images = [r["image"] for r in results[name_a][0]["per_image"]]
        for metric in (m for m in metrics if m in PAIRED_METRICS):
            a = paired_matrix([run["per_image"] for run in results[name_a]], metric, images)
            b = paired_matrix([run["per_image"] for run in results[name_b]], metric, images)
            keep = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)
            if not keep.all():
                log.warning("%s vs %s, %s: %d image(s) with a non-finite value (identical images have infinite "
                            "PSNR) left out of the comparison", name_a, name_b, metric, int((~keep).sum()))
            if not keep.any():
                raise ValueError(f"{name_a} vs {name_b}: no image has a finite {metric} in every run")
            rows.append({"a": name_a, "b": name_b, "metric": metric,
                         **compare_methods(a[:, keep], b[:, keep], n_boot=n_boot, confidence=confidence, seed=seed)})
    for row, adj in zip(rows, adjust_p_values([r["p_value"] for r in rows], p_adjust)):
        row.update(p_adjusted=adj, p_adjust=p_adjust)
    return rows
