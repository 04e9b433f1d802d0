"""Statistics of the per-image rows: per-set means (`summarize`) and paired per-image differences between two
sets (`paired_comparisons`: bootstrap CI of the mean difference, Wilcoxon signed-rank test, Holm over the family).

A set with replicates (several roots: the same images restored by restorers trained with different seeds)
counts each image once, as the mean over its replicates; its comparisons take the seeds' variance into account
(`analysis.stats.two_level_ci` and `analysis.stats.two_level_t_test`)."""
from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np

from analysis.stats import P_ADJUST_METHODS, adjust_p_values, paired_difference, two_level_ci, two_level_t_test

from analysis.naturalness.measure import CLEAN, METRICS

__all__ = ["SUMMARY_COLUMNS", "PAIRED_METRICS", "PAIRED_COLUMNS", "summarize", "default_comparisons",
           "paired_comparisons"]

SUMMARY_COLUMNS = ("set", "metric", "t", "mean", "std", "n", "replicates")
#: The terms compared between sets (``denoise`` is no naturalness score: see the package doc).
PAIRED_METRICS = ("nat", "sem", "sem_rel")
PAIRED_COLUMNS = ("set_a", "set_b", "metric", "t", "n", "replicates_a", "replicates_b", "mean_a", "mean_b",
                  "mean_diff", "ci_low", "ci_high", "median_diff", "n_a_lower", "n_a_higher", "test", "statistic",
                  "p_value", "p_adjusted")


def _runs(rows: Sequence[Mapping]) -> dict[tuple[str, int], dict[int, dict[int, Mapping]]]:
    """(set, t) -> replicate -> image id -> row (a row given twice is an error)."""
    out: dict[tuple[str, int], dict[int, dict[int, Mapping]]] = {}
    for r in rows:
        per = out.setdefault((r["set"], int(r["t"])), {}).setdefault(int(r.get("replicate", 0)), {})
        if int(r["image_id"]) in per:
            raise ValueError(f"image {r['image_id']} appears twice in set {r['set']!r} (replicate "
                             f"{r.get('replicate', 0)}) at t={r['t']}")
        per[int(r["image_id"])] = r
    return out


def _array(runs: Mapping[int, Mapping[int, Mapping]], ids: Sequence[int], metric: str) -> np.ndarray:
    """``[replicates, images]`` values of ``metric``."""
    return np.array([[float(per[i][metric]) for i in ids] for _, per in sorted(runs.items())], dtype=np.float64)


def _shared_ids(*runs: Mapping[int, Mapping[int, Mapping]]) -> list[int]:
    """The image ids every replicate of every set holds, in the first one's order."""
    first = next(iter(runs[0].values()))
    return [i for i in first if all(i in per for r in runs for per in r.values())]


def summarize(rows: Sequence[Mapping]) -> list[dict]:
    """Per (set, metric, t), sets in first-appearance order: mean, standard deviation (ddof 1) and count over
    images of each image's value (the mean over the set's replicates, over the images all replicates hold).
    These are unpaired per-set means: whether two sets differ is `paired_comparisons`' question."""
    out = []
    by = _runs(rows)
    for name in dict.fromkeys(r["set"] for r in rows):
        for metric in METRICS:
            for t in sorted(t for s, t in by if s == name):
                runs = by[(name, t)]
                v = _array(runs, _shared_ids(runs), metric).mean(axis=0)
                out.append({"set": name, "metric": metric, "t": t, "mean": float(v.mean()),
                            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v),
                            "replicates": len(runs)})
    return out


def default_comparisons(sets: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of sets other than `CLEAN`, the later one minus the earlier one (sets listed as degraded, w/o,
    w/ DiffLoss give w/o - degraded, w/ - degraded, w/ - w/o)."""
    names = [s for s in dict.fromkeys(sets) if s != CLEAN]
    return [(b, a) for a, b in itertools.combinations(names, 2)]


def paired_comparisons(rows: Sequence[Mapping], comparisons: Sequence[tuple[str, str]],
                       metrics: Sequence[str] = PAIRED_METRICS, n_boot: int = 1000, confidence: float = 0.95,
                       seed: int = 0, p_adjust: str = "holm") -> list[dict]:
    """Per comparison ``(set_a, set_b)``, metric and timestep: the per-image differences a - b over the images
    both sets hold, and ``p_adjusted``: ``p_adjust`` (`analysis.stats.P_ADJUST_METHODS`, default Holm) over the
    whole family of tests returned. Rows in comparison, metric, t order (`PAIRED_COLUMNS`); the bootstrap of
    test k draws from ``numpy.random.default_rng([seed, k])``.

    With one replicate per set (``test`` "wilcoxon"): `analysis.stats.paired_difference` (mean difference with
    a percentile bootstrap CI over images, two-sided Wilcoxon signed-rank test). When either set has several
    replicates (``test`` "two-level t"), an image's value is its mean over the replicates, the CI is
    `analysis.stats.two_level_ci` (images, then each set's replicates) and the p-value that of
    `analysis.stats.two_level_t_test`, which adds the variance between replicates to the paired image term: a
    Wilcoxon test of the image means would ignore it, as if the restorers' seeds were the only ones possible."""
    if p_adjust not in P_ADJUST_METHODS:
        raise ValueError(f"unknown p-value adjustment {p_adjust!r}; valid: {', '.join(P_ADJUST_METHODS)}")
    by = _runs(rows)
    names = list(dict.fromkeys(r["set"] for r in rows))
    ts = sorted({int(r["t"]) for r in rows})
    unknown = sorted({s for pair in comparisons for s in pair} - set(names))
    if unknown:
        raise ValueError(f"cannot compare unknown set(s) {unknown}; the sets are {names}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; valid: {', '.join(METRICS)}")
    out = []
    for a, b in comparisons:
        if a == b:
            raise ValueError(f"a comparison needs two different sets, got {a!r} twice")
        for metric in metrics:
            for t in ts:
                ra, rb = by.get((a, t)), by.get((b, t))
                ids = _shared_ids(ra, rb) if ra and rb else []
                if not ids:
                    raise ValueError(f"sets {a!r} and {b!r} share no image at t={t}")
                va, vb = _array(ra, ids, metric), _array(rb, ids, metric)
                rng = np.random.default_rng([int(seed), len(out)])
                res = paired_difference(va.mean(axis=0), vb.mean(axis=0), n_boot=n_boot, confidence=confidence,
                                        seed=rng)
                res["test"] = "wilcoxon"
                if len(va) > 1 or len(vb) > 1:
                    res["ci_low"], res["ci_high"] = two_level_ci([va, vb], (1.0, -1.0), n_boot=n_boot,
                                                                 confidence=confidence, seed=rng)
                    t_test = two_level_t_test(vb, va)  # its delta is mean(second) - mean(first): a - b
                    res.update(test="two-level t", statistic=t_test["t"], p_value=t_test["p_value"])
                out.append({"set_a": a, "set_b": b, "metric": metric, "t": t, "replicates_a": len(va),
                            "replicates_b": len(vb), **res})
    for row, p in zip(out, adjust_p_values([r["p_value"] for r in out], p_adjust)):
        row["p_adjusted"] = p
    return out
