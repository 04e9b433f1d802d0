"""Statistics of the study's distance rows: summaries per group and level (with the label-flip rate), and the
tests between groups, per level and metric: paired by image (Wilcoxon signed-rank for the distances, McNemar's
exact test for the label flips; the default) or unpaired (Mann-Whitney U, Fisher's exact test), every p-value of
a study corrected together (Holm by default, Benjamini-Hochberg as an option)."""
from __future__ import annotations

import itertools
import logging
from typing import Mapping, Sequence

import numpy as np

from analysis.stats import benjamini_hochberg_adjust, bootstrap_ci, holm_adjust, mcnemar_test

log = logging.getLogger(__name__)

__all__ = ["summarize_distances", "mann_whitney_tests", "wilcoxon_tests", "flip_tests", "group_tests",
           "adjust_study_p_values", "paper_ordering", "TESTS", "METRICS", "P_ADJUST", "PAPER_ORDERING"]

#: Tests between groups: paired Wilcoxon signed-rank (default) or unpaired Mann-Whitney U.
TESTS = ("wilcoxon", "mann-whitney")
#: Per-image distances of a level to level 0 (columns of distances.csv): features, and pixels (0..255).
METRICS = ("distance", "cosine_distance", "relative_distance", "pixel_change")
#: Corrections of the study's p-values, all tests of a study in one family: Holm (family-wise error, the
#: default), Benjamini-Hochberg (false discovery rate) or none.
P_ADJUST = ("holm", "bh", "none")
#: The paper's Fig. 2 claim as pairs (group that should move more, group that should move less).
PAPER_ORDERING = (("clean", "degraded"), ("w/ DiffLoss", "w/o DiffLoss"), ("clean", "w/o DiffLoss"),
                  ("w/ DiffLoss", "degraded"))


def _group_order(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(r["group"] for r in rows))


#: Extra per-(group, level) columns of `summarize_distances`: (summary column, row key, statistic).
_SUMMARY_EXTRAS = (("cosine_mean", "cosine_distance", np.nanmean), ("cosine_median", "cosine_distance", np.nanmedian),
                   ("relative_mean", "relative_distance", np.nanmean),
                   ("relative_median", "relative_distance", np.nanmedian),
                   ("dh_norm_mean", "dh_norm", np.mean), ("dh_rel_mean", "dh_rel", np.mean),
                   ("pixel_change_mean", "pixel_change", np.mean), ("flip_rate", "label_flip", np.nanmean))


def _check_columns(rows: Sequence[Mapping], needed: Sequence[str]) -> None:
    missing = sorted({k for r in rows for k in needed if k not in r})
    if missing:
        raise ValueError(f"the distance rows lack the column(s) {missing}; the rows of the study "
                         "(`run_hspace_study`, `read_distances`) carry them all")


def summarize_distances(rows: Sequence[Mapping]) -> list[dict]:
    """Per (group, level): n, mean, std (ddof 1), median, q25, q75, min, max of the L2 distances, and
    cosine_mean/median, relative_mean/median (NaNs ignored), dh_norm_mean, dh_rel_mean (the mean size of the
    h-space edit, absolute and relative to ||h||), pixel_change_mean (0..255) and flip_rate (the fraction of
    images whose predicted class differs from the unperturbed generation's; NaN without a classifier) with
    flip_ci_low / flip_ci_high, its 95% percentile bootstrap interval over images (seed 0). Rows lacking one of
    these columns: ValueError."""
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
            flips = np.array([float(r["label_flip"]) for r in sel])
            flips = flips[np.isfinite(flips)]
            row["flip_ci_low"], row["flip_ci_high"] = bootstrap_ci(flips) if flips.size else (float("nan"),) * 2
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
                        "mean_a": float(da.mean()), "mean_b": float(db.mean()),
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
                   "statistic": float("nan"), "p_value": float("nan"), "mean_a": float("nan"),
                   "mean_b": float("nan"), "median_a": float("nan"),
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
                row.update(statistic=stat, p_value=p, mean_a=float(da.mean()), mean_b=float(db.mean()),
                           median_a=float(np.median(da)), median_b=float(np.median(db)),
                           median_diff=float(np.median(diff)))
            out.append(row)
    return out


def flip_tests(rows: Sequence[Mapping], paired: bool = True) -> list[dict]:
    """Tests of the label-flip rates (``label_flip`` 0/1 per image and level) between every pair of groups at
    every level; groups without flips (NaN: no classifier) are left out.

    ``paired`` (the study's groups hold the same images): McNemar's exact test over the images in both groups
    (`analysis.stats.mcnemar_test` on the flip indicators): ``statistic`` is b, the images whose label flipped
    in group_a only (c = discordant - b flipped in group_b only), in the columns of `wilcoxon_tests`
    (``n_pairs``; ``mean_a`` / ``mean_b`` the flip rates; medians NaN). Unpaired: Fisher's exact test
    (``scipy.stats.fisher_exact``, two-sided) of the two groups' flip counts, in the columns of
    `mann_whitney_tests` (``u_statistic`` NaN)."""
    from scipy.stats import fisher_exact

    nan = float("nan")
    flips = [r for r in rows if np.isfinite(float(r.get("label_flip", nan)))]
    if not flips:
        return []
    out = []
    groups = _group_order(flips)
    for level, per_group in sorted(_per_level(flips, "label_flip").items()):
        for a, b in itertools.combinations(groups, 2):
            va, vb = per_group.get(a, {}), per_group.get(b, {})
            if not va or not vb:
                continue
            if paired:
                keys = [k for k in va if k in vb]
                if not keys:
                    continue
                fa, fb = np.array([va[k] for k in keys]), np.array([vb[k] for k in keys])
                res = mcnemar_test(fa, fb)
                out.append({"level": level, "metric": "label_flip", "group_a": a, "group_b": b, "n_pairs": len(keys),
                            "statistic": float(res["b"]), "p_value": float(res["p_value"]),
                            "mean_a": float(fa.mean()), "mean_b": float(fb.mean()), "median_a": nan,
                            "median_b": nan, "median_diff": nan, "alternative": "two-sided", "test": "mcnemar"})
            else:
                fa, fb = np.array(list(va.values())), np.array(list(vb.values()))
                table = [[int(fa.sum()), int(fa.size - fa.sum())], [int(fb.sum()), int(fb.size - fb.sum())]]
                out.append({"level": level, "group_a": a, "group_b": b, "n_a": int(fa.size), "n_b": int(fb.size),
                            "u_statistic": nan, "p_value": float(fisher_exact(table)[1]), "mean_a": float(fa.mean()),
                            "mean_b": float(fb.mean()), "median_a": nan, "median_b": nan,
                            "alternative": "two-sided", "metric": "label_flip", "test": "fisher"})
    return out


def adjust_study_p_values(tests: Sequence[Mapping], method: str = "holm") -> list[dict]:
    """``tests`` with ``p_adjusted`` (every finite p-value of the list corrected as one family by ``method``, one
    of `P_ADJUST`: "holm", Holm's step-down, `analysis.stats.holm_adjust`; "bh", Benjamini-Hochberg,
    `analysis.stats.benjamini_hochberg_adjust`; "none") and ``p_adjust`` (the method) added to each row. NaN
    p-values (no shared image) stay NaN and are not counted in the family."""
    if method not in P_ADJUST:
        raise ValueError(f"unknown p-value adjustment {method!r}; valid: {', '.join(P_ADJUST)}")
    out = [dict(t) for t in tests]
    finite = [i for i, t in enumerate(out) if np.isfinite(float(t["p_value"]))]
    p = [float(out[i]["p_value"]) for i in finite]
    adj = {"holm": holm_adjust, "bh": benjamini_hochberg_adjust, "none": lambda v: [float(x) for x in v]}[method](p)
    for t in out:
        t.update(p_adjusted=float("nan"), p_adjust=method)
    for i, v in zip(finite, adj):
        out[i]["p_adjusted"] = float(v)
    return out


def group_tests(rows: Sequence[Mapping], test: str = "wilcoxon", metrics: Sequence[str] | None = None,
                alternative: str = "two-sided", p_adjust: str = "holm") -> list[dict]:
    """Every test between groups of a study: ``test`` one of `TESTS` ("wilcoxon": paired by image, the default;
    "mann-whitney": unpaired) for each of ``metrics`` (default: all of `METRICS`), then the label flips
    (`flip_tests`: McNemar, or Fisher when unpaired) when the rows have them; all p-values corrected as one
    family by ``p_adjust`` (`adjust_study_p_values`). Rows ordered by level, then metric (label_flip last),
    then pair of groups."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid: {', '.join(TESTS)}")
    if p_adjust not in P_ADJUST:
        raise ValueError(f"unknown p-value adjustment {p_adjust!r}; valid: {', '.join(P_ADJUST)}")
    metrics = tuple(metrics) if metrics is not None else METRICS
    fn = wilcoxon_tests if test == "wilcoxon" else mann_whitney_tests
    order = {m: i for i, m in enumerate((*metrics, "label_flip"))}
    tests = [t for m in metrics for t in fn(rows, alternative=alternative, metric=m)]
    tests += flip_tests(rows, paired=test == "wilcoxon")
    tests = sorted(tests, key=lambda t: (t["level"], order[t["metric"]]))  # stable: pairs keep their order
    return adjust_study_p_values(tests, p_adjust)


def paper_ordering(tests: Sequence[Mapping], level: int, metric: str = "distance", alpha: float = 0.05,
                   pairs: Sequence[tuple[str, str]] = PAPER_ORDERING) -> list[dict]:
    """Whether the paper's Fig. 2 ordering holds at ``level``: for each (more, less) of ``pairs`` whose groups
    the study has, the test of ``metric`` between them (`group_tests`' rows) read in that direction:
    ``{"more", "less", "metric", "level", "mean_more", "mean_less", "p_adjusted", "p_adjust", "verdict"}``,
    verdict "holds" (``more``'s mean is larger and p_adjusted <= alpha), "reversed" (smaller and significant) or
    "not significant"."""
    out = []
    for more, less in pairs:
        for t in tests:
            if int(t["level"]) != int(level) or t["metric"] != metric or {t["group_a"], t["group_b"]} != {more, less}:
                continue
            m_more, m_less = (t["mean_a"], t["mean_b"]) if t["group_a"] == more else (t["mean_b"], t["mean_a"])
            p = float(t["p_adjusted"])
            verdict = "not significant" if not p <= alpha else ("holds" if m_more > m_less else "reversed")
            out.append({"more": more, "less": less, "metric": metric, "level": int(level), "mean_more": m_more,
                        "mean_less": m_less, "p_adjusted": p, "p_adjust": t["p_adjust"], "verdict": verdict})
    return out
