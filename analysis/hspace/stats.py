"""Statistics of the study's distance rows: summaries per group and level, and the tests between groups
(paired Wilcoxon signed-rank by image, the default, or unpaired Mann-Whitney U), per level and metric."""
from __future__ import annotations

import itertools
import logging
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["summarize_distances", "mann_whitney_tests", "wilcoxon_tests", "group_tests", "TESTS", "METRICS"]

#: Tests between groups: paired Wilcoxon signed-rank (default) or unpaired Mann-Whitney U.
TESTS = ("wilcoxon", "mann-whitney")
#: Per-image feature distances of a level to level 0 (columns of distances.csv).
METRICS = ("distance", "cosine_distance", "relative_distance")


def _group_order(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(r["group"] for r in rows))


#: Extra per-(group, level) columns of `summarize_distances`: (summary column, row key, statistic).
_SUMMARY_EXTRAS = (("cosine_mean", "cosine_distance", np.nanmean), ("cosine_median", "cosine_distance", np.nanmedian),
                   ("relative_mean", "relative_distance", np.nanmean),
                   ("relative_median", "relative_distance", np.nanmedian),
                   ("dh_norm_mean", "dh_norm", np.mean), ("dh_rel_mean", "dh_rel", np.mean))


def _check_columns(rows: Sequence[Mapping], needed: Sequence[str]) -> None:
    missing = sorted({k for r in rows for k in needed if k not in r})
    if missing:
        raise ValueError(f"the distance rows lack the column(s) {missing}; the rows of the study "
                         "(`run_hspace_study`, `read_distances`) carry them all")


def summarize_distances(rows: Sequence[Mapping]) -> list[dict]:
    """Per (group, level): n, mean, std (ddof 1), median, q25, q75, min, max of the L2 distances, and
    cosine_mean/median, relative_mean/median (NaNs ignored), dh_norm_mean, dh_rel_mean (the mean size of the
    h-space edit, absolute and relative to ||h||). Rows lacking one of these columns: ValueError."""
    _check_columns(rows, ("distance", *(key for _, key, _ in _SUMMARY_EXTRAS)))
    out = []
    for g in _group_order(rows):
        for level in sorted({int(r["level"]) for r in rows if r["group"] == g}):
            sel = [r for r in rows if r["group"] == g and int(r["level"]) == level]
            d = np.array([float(r["distance"]) for r in sel])
            row = {"group": g, "level": level, "alpha": float(sel[0]["alpha"]), "n": int(d.size),
                   "mean": float(d.mean()), "std": float(d.std(ddof=1)) if d.size > 1 else float("nan"),
                   "median": float(np.median(d)), "q25": float(np.quantile(d, 0.25)),
                   "q75": float(np.quantile(d, 0.75)), "min": float(d.min()), "max": float(d.max())}
            for col, key, stat in _SUMMARY_EXTRAS:
                v = np.array([float(r[key]) for r in sel])
                row[col] = float(stat(v)) if not np.isnan(v).all() else float("nan")
            out.append(row)
    return out


def _per_level(rows: Sequence[Mapping], metric: str) -> dict[int, dict[str, dict[str, float]]]:
    """level -> group -> image_id -> value of ``metric`` (an image listed twice in a group is an error)."""
    _check_columns(rows, (metric,))
    out: dict[int, dict[str, dict[str, float]]] = {}
    for r in rows:
        per = out.setdefault(int(r["level"]), {}).setdefault(r["group"], {})
        key = str(r["image_id"])
        if key in per:
            raise ValueError(f"image {key!r} appears twice in group {r['group']!r} at level {r['level']}")
        per[key] = float(r[metric])
    return out


def mann_whitney_tests(rows: Sequence[Mapping], alternative: str = "two-sided", metric: str = "distance") -> list[dict]:
    """Mann-Whitney U (``scipy.stats.mannwhitneyu``, unpaired) of ``metric`` between every pair of groups at
    every level, over all images of each group.

    ``u_statistic`` is U of group_a; ``p_value`` for ``alternative`` ("two-sided", "less", "greater": the
    distances of group_a tend to be smaller / larger). The study's groups are paired (same images, same
    noise): `wilcoxon_tests` is the test that uses it."""
    from scipy.stats import mannwhitneyu

    out = []
    groups = _group_order(rows)
    for level, per_group in sorted(_per_level(rows, metric).items()):
        per = {g: np.array(list(per_group.get(g, {}).values()), dtype=np.float64) for g in groups}
        for a, b in itertools.combinations(groups, 2):
            da, db = per[a], per[b]
            if da.size == 0 or db.size == 0:
                continue
            res = mannwhitneyu(da, db, alternative=alternative)
            out.append({"level": level, "group_a": a, "group_b": b, "n_a": int(da.size), "n_b": int(db.size),
                        "u_statistic": float(res.statistic), "p_value": float(res.pvalue),
                        "median_a": float(np.median(da)), "median_b": float(np.median(db)),
                        "alternative": alternative, "metric": metric, "test": "mann-whitney"})
    return out


def wilcoxon_tests(rows: Sequence[Mapping], alternative: str = "two-sided", metric: str = "distance") -> list[dict]:
    """Wilcoxon signed-rank tests (``scipy.stats.wilcoxon``, its default method and zero handling) of ``metric``
    between every pair of groups at every level, paired by image: only images present in both groups count
    (``n_pairs``); the differences are group_a - group_b.

    ``statistic`` is scipy's (two-sided: min(W+, W-); one-sided: W+); ``p_value`` for ``alternative``
    ("greater": group_a's values tend to be larger on the same image). Identical values on every image give
    p = 1; no shared image gives n_pairs 0 and NaN (logged). ``median_a`` / ``median_b`` are over the pairs,
    ``median_diff`` the median of the differences."""
    from scipy.stats import wilcoxon

    out = []
    groups = _group_order(rows)
    for level, per_group in sorted(_per_level(rows, metric).items()):
        for a, b in itertools.combinations(groups, 2):
            va, vb = per_group.get(a, {}), per_group.get(b, {})
            if not va or not vb:
                continue
            keys = [k for k in va if k in vb]
            da = np.array([va[k] for k in keys], dtype=np.float64)
            db = np.array([vb[k] for k in keys], dtype=np.float64)
            row = {"level": level, "metric": metric, "group_a": a, "group_b": b, "n_pairs": len(keys),
                   "statistic": float("nan"), "p_value": float("nan"), "median_a": float("nan"),
                   "median_b": float("nan"), "median_diff": float("nan"), "alternative": alternative,
                   "test": "wilcoxon"}
            if not keys:
                log.warning("groups %r and %r share no image at level %d: no paired test (give the groups the same "
                            "images, or use --test mann-whitney)", a, b, level)
            else:
                diff = da - db
                if np.all(diff == 0):
                    stat, p = 0.0, 1.0
                else:
                    res = wilcoxon(da, db, alternative=alternative)
                    stat, p = float(res.statistic), float(res.pvalue)
                row.update(statistic=stat, p_value=p, median_a=float(np.median(da)), median_b=float(np.median(db)),
                           median_diff=float(np.median(diff)))
            out.append(row)
    return out


def group_tests(rows: Sequence[Mapping], test: str = "wilcoxon", metrics: Sequence[str] | None = None,
                alternative: str = "two-sided") -> list[dict]:
    """The tests between groups written by the study: ``test`` one of `TESTS` ("wilcoxon": paired by image,
    the default; "mann-whitney": unpaired), for each of ``metrics`` (default: all of `METRICS`); rows ordered by
    level, then metric, then pair of groups."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid: {', '.join(TESTS)}")
    metrics = tuple(metrics) if metrics is not None else METRICS
    fn = wilcoxon_tests if test == "wilcoxon" else mann_whitney_tests
    order = {m: i for i, m in enumerate(metrics)}
    tests = [t for m in metrics for t in fn(rows, alternative=alternative, metric=m)]
    return sorted(tests, key=lambda t: (t["level"], order[t["metric"]]))  # stable: pairs keep their order
