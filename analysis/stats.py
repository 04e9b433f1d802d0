"""Statistics for Table 2 and the quality report: bootstrap confidence intervals of top-1 accuracy, McNemar's
exact test, the Holm correction of a family of p-values, and for seed replicates (several restorations of the
same images, one per restorer seed) the two-level bootstrap and the two-level t-test.

The bootstrap and McNemar functions take per-image 0/1 correctness vectors (``bool`` or ``int`` arrays of
shape ``[N]``) and return plain Python numbers; randomness comes from an explicit ``seed``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "top1_with_ci", "mcnemar_counts", "mcnemar_exact_p", "mcnemar_test", "holm_adjust",
           "adjust_p_values", "P_ADJUST_METHODS", "paired_difference", "two_level_bootstrap", "two_level_ci",
           "replicated_top1_with_ci", "two_level_t_test", "paired_delta_with_ci"]

#: Multiple-comparison corrections `adjust_p_values` knows ("none": the p-values as they are).
P_ADJUST_METHODS = ("none", "holm")


def _as_float(arr: np.ndarray, name: str) -> np.ndarray:
    """A numeric or bool array as float64 (no copy when it already is)."""
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric or bool, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def _as_vector(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    return _as_float(arr, name)


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int | np.random.Generator = 0, chunk_elems: int = 4_000_000) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (shape ``[N]``, N >= 1).

    Draws ``n_boot`` resamples of N indices with replacement from ``numpy.random.default_rng(seed)``
    (resample ``k`` uses the k-th block of N draws, so the result does not depend on ``chunk_elems``), takes
    each resample's mean and returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles
    (NumPy's default linear interpolation). Units are those of ``values`` (a 0/1 vector gives fractions).
    """
    arr = _as_vector(values, "values")
    n = arr.shape[0]
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value, got an empty vector")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    per_chunk = max(1, int(chunk_elems) // n)
    means = np.empty(int(n_boot), dtype=np.float64)
    done = 0
    while done < n_boot:
        k = min(per_chunk, int(n_boot) - done)
        idx = rng.integers(0, n, size=(k, n))
        means[done:done + k] = arr[idx].mean(axis=1)
        done += k
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def top1_with_ci(correct: Sequence[bool] | np.ndarray, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> dict[str, float | int]:
    """Top-1 accuracy of a 0/1 ``correct`` vector with its bootstrap CI, in percent (0-100):
    ``{"n", "correct", "top1", "ci_low", "ci_high"}``."""
    arr = _as_vector(correct, "correct")
    if arr.size and not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"correct must hold only 0/1 values, found {np.unique(arr)[:5]}")
    lo, hi = bootstrap_ci(arr, n_boot=n_boot, confidence=confidence, seed=seed)
    return {"n": int(arr.size), "correct": int(arr.sum()), "top1": float(arr.mean() * 100.0),
            "ci_low": lo * 100.0, "ci_high": hi * 100.0}


def mcnemar_counts(correct_a, correct_b) -> tuple[int, int]:
    """Discordant pairs of two paired 0/1 vectors: ``b`` = A right and B wrong, ``c`` = A wrong and B right."""
    a = _as_vector(correct_a, "correct_a").astype(bool)
    b = _as_vector(correct_b, "correct_b").astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"paired vectors must have the same length, got {a.shape[0]} and {b.shape[0]}")
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``scipy.stats.binomtest(b, b + c, 0.5)``; 1.0 when b + c == 0.

    E.g. b=1, c=5: p = 2 * (C(6,0) + C(6,1)) / 2**6 = 0.21875.
    """
    from scipy.stats import binomtest

    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(min(1.0, binomtest(b, b + c, 0.5, alternative="two-sided").pvalue))


def mcnemar_test(correct_a, correct_b) -> dict[str, float | int]:
    """McNemar's exact test for two classifiers/conditions scored on the same images:
    ``{"n", "b", "c", "p_value"}`` (b: A right & B wrong, c: A wrong & B right)."""
    b, c = mcnemar_counts(correct_a, correct_b)
    return {"n": int(np.asarray(correct_a).shape[0]), "b": b, "c": c, "p_value": mcnemar_exact_p(b, c)}


def _as_p_values(p_values) -> np.ndarray:
    p = np.asarray(list(p_values), dtype=np.float64).reshape(-1)
    if p.size and not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError(f"p-values must lie in [0, 1], got {p[~((p >= 0) & (p <= 1))][:5].tolist()}")
    return p


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family of ``m`` tests (same order as ``p_values``).

    With the p-values sorted ascending, p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    Rejecting every test with adj <= alpha controls the family-wise error rate at alpha, under any dependence
    between the tests. E.g. [0.01, 0.04, 0.03, 0.005] -> [0.03, 0.06, 0.06, 0.02].
    """
    p = _as_p_values(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m, dtype=np.float64)
    out[order] = np.maximum.accumulate(scaled) if m else scaled
    return [float(v) for v in out]


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """``p_values`` corrected for multiple comparisons by ``method`` (one of `P_ADJUST_METHODS`)."""
    if method not in P_ADJUST_METHODS:
        raise ValueError(f"unknown p-value adjustment {method!r}; valid: {', '.join(P_ADJUST_METHODS)}")
    if method == "holm":
        return holm_adjust(p_values)
    return [float(v) for v in _as_p_values(p_values)]


def paired_difference(values_a, values_b, n_boot: int = 1000, confidence: float = 0.95,
                      seed: int | np.random.Generator = 0) -> dict[str, float | int]:
    """Paired comparison of two measurements of the same items (``values_a[i]`` and ``values_b[i]`` belong to
    item i; shape ``[N]``, N >= 1, finite): the differences d = a - b, their mean with a percentile bootstrap CI
    (`bootstrap_ci` over items, ``seed``) and the two-sided Wilcoxon signed-rank test of d
    (``scipy.stats.wilcoxon``, its default method and zero handling: zero differences are dropped; all zero:
    statistic 0, p = 1). Units are those of the values.

    Returns ``{"n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "median_diff", "n_a_lower",
    "n_a_higher", "statistic", "p_value"}`` (``n_a_lower``: items where a < b)."""
    from scipy.stats import wilcoxon

    a = _as_vector(values_a, "values_a")
    b = _as_vector(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"paired vectors must have the same length, got {a.shape[0]} and {b.shape[0]}")
    if a.size == 0:
        raise ValueError("paired_difference needs at least one pair, got empty vectors")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"paired values must be finite, found {int((~np.isfinite(a)).sum())} and "
                         f"{int((~np.isfinite(b)).sum())} non-finite values")
    d = a - b
    lo, hi = bootstrap_ci(d, n_boot=n_boot, confidence=confidence, seed=seed)
    if np.all(d == 0):
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(d)
        stat, p = float(res.statistic), float(res.pvalue)
    return {"n": int(d.size), "mean_a": float(a.mean()), "mean_b": float(b.mean()), "mean_diff": float(d.mean()),
            "ci_low": lo, "ci_high": hi, "median_diff": float(np.median(d)), "n_a_lower": int(np.sum(d < 0)),
            "n_a_higher": int(np.sum(d > 0)), "statistic": stat, "p_value": p}


# ---------------------------------------------------------------------------------------------------------------
# seed replicates: several restorations (one per restorer seed) of the same images
# ---------------------------------------------------------------------------------------------------------------
# A row of Table 2 (or a method of the quality report) may hold R runs of the same N images: an array
# ``[R, N]`` of per-image values (0/1 correctness, or PSNR...). Two sources of variance make its mean uncertain:
# the restorer's seed (another training run) and the images (another test set). The images are crossed with
# the seeds (every run restored the same images), so the bootstrap makes ONE image draw, shared by every run of
# every group compared, and draws each group's seeds on its own; the test adds a seed term to the paired image
# term.


def _as_runs(values, name: str) -> np.ndarray:
    """``values`` as a float ``[R, N]`` array of runs (a 1-D vector is one run), R >= 1, N >= 1."""
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be a [runs, images] array with at least one of each, got shape {arr.shape}")
    return _as_float(arr, name)


def _check_boot(n_boot: int, confidence: float | None = None) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def two_level_bootstrap(groups: Sequence, coefs: Sequence[float] | None = None, n_boot: int = 1000,
                        seed: int | np.random.Generator = 0, chunk_elems: int = 4_000_000) -> np.ndarray:
    """Bootstrap distribution (``n_boot`` values) of ``sum_g coefs[g] * mean(groups[g])`` under two-level
    resampling: seeds, then images.

    ``groups``: arrays ``[R_g, N]`` (runs x images; a 1-D vector is one run) over the same N images in the
    same order. Each resample draws N image indices with replacement, shared by every run of every group
    (the images are crossed with the seeds), then, for each group with R_g > 1, R_g of its runs with
    replacement (groups draw their seeds independently: the runs of two rows are separate trainings); its
    value is the coefficient-weighted sum of the groups' means over the drawn runs and images. Default
    ``coefs``: 1 for each group (one group: its mean; two groups with ``(-1, 1)``: the difference B - A).

    Draws come from ``numpy.random.default_rng(seed)``, chunk by chunk: per chunk the image indices
    ``(k, N)`` first, then each replicated group's seed indices ``(k, R_g)``. With one group of one run it
    is exactly `bootstrap_ci`'s resampling (the same draws, the same means).
    """
    runs = [_as_runs(g, f"groups[{i}]") for i, g in enumerate(groups)]
    if not runs:
        raise ValueError("two_level_bootstrap needs at least one group")
    n = runs[0].shape[1]
    if any(r.shape[1] != n for r in runs):
        raise ValueError(f"every group must hold the same images; got {[r.shape[1] for r in runs]} images")
    coefs = np.ones(len(runs)) if coefs is None else np.asarray(coefs, dtype=np.float64)
    if coefs.shape != (len(runs),):
        raise ValueError(f"one coefficient per group: {len(runs)} groups, {coefs.shape} coefficients")
    _check_boot(n_boot)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    per_chunk = max(1, int(chunk_elems) // (n * max(r.shape[0] for r in runs)))
    out = np.zeros(int(n_boot), dtype=np.float64)
    done = 0
    while done < n_boot:
        k = min(per_chunk, int(n_boot) - done)
        idx = rng.integers(0, n, size=(k, n))
        counts = None
        for c, r in zip(coefs, runs):
            if r.shape[0] == 1:
                out[done:done + k] += c * r[0][idx].mean(axis=1)
                continue
            if counts is None:  # how often each image was drawn: the runs' means become one matrix product
                counts = np.bincount((np.arange(k)[:, None] * n + idx).ravel(), minlength=k * n).reshape(k, n)
            run_means = counts @ r.T / n  # [k, R]: each run's mean over the drawn images
            drawn = rng.integers(0, r.shape[0], size=(k, r.shape[0]))
            out[done:done + k] += c * np.take_along_axis(run_means, drawn, axis=1).mean(axis=1)
        done += k
    return out


def _percentile_ci(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def two_level_ci(groups: Sequence, coefs: Sequence[float] | None = None, n_boot: int = 1000,
                 confidence: float = 0.95, seed: int | np.random.Generator = 0) -> tuple[float, float]:
    """Percentile confidence interval of `two_level_bootstrap`'s statistic (units of the values)."""
    _check_boot(n_boot, confidence)
    return _percentile_ci(two_level_bootstrap(groups, coefs, n_boot=n_boot, seed=seed), confidence)


def replicated_top1_with_ci(correct, n_boot: int = 1000, confidence: float = 0.95,
                            seed: int = 0) -> dict[str, float | int]:
    """Top-1 of a cell with R runs (``correct``: 0/1 ``[R, N]``, runs x images), in percent (0-100):
    ``{"seeds": R, "n": N, "correct": right predictions summed over the runs, "top1": mean over runs,
    "ci_low", "ci_high": two-level bootstrap CI (`two_level_bootstrap`), "seed_sd": standard deviation of the
    runs' top-1 (ddof 1; None for one run)}``."""
    arr = _as_runs(correct, "correct")
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"correct must hold only 0/1 values, found {np.unique(arr)[:5]}")
    lo, hi = two_level_ci([arr], n_boot=n_boot, confidence=confidence, seed=seed)
    per_run = arr.mean(axis=1) * 100.0
    return {"seeds": int(arr.shape[0]), "n": int(arr.shape[1]), "correct": int(arr.sum()),
            "top1": float(arr.mean() * 100.0), "ci_low": lo * 100.0, "ci_high": hi * 100.0,
            "seed_sd": float(per_run.std(ddof=1)) if arr.shape[0] > 1 else None}


def two_level_t_test(a, b) -> dict[str, float]:
    """Welch-Satterthwaite t-test of ``mean(b) - mean(a)`` for two groups of runs over the same images
    (``[R_a, N]`` and ``[R_b, N]``; a 1-D vector is one run). Both sources of variance enter its standard error:

        d_i  = mean over b's runs of b[:, i] - mean over a's runs of a[:, i]     (per-image, paired)
        se^2 = var(d) / N  +  var(run means of a) / R_a  +  var(run means of b) / R_b   (ddof 1; a group of
               one run has no seed term)
        df   = se^4 / (sum of each term^2 / its degrees of freedom: N - 1, R_a - 1, R_b - 1)
        t    = delta / se,  p = two-sided Student t tail at df

    With one run per group it is the paired t-test over images (``scipy.stats.ttest_rel(b, a)``); when every
    run is constant over the images it is Welch's t-test over the runs' means (``scipy.stats.ttest_ind(...,
    equal_var=False)``). The seed x image interaction enters both terms (a slight overestimate of se: the test
    errs on the conservative side). se = 0: p = 1 if delta = 0, else 0.
    Returns ``{"delta", "se", "t", "df", "p_value"}``.
    """
    from scipy.stats import t as student_t

    a, b = _as_runs(a, "a"), _as_runs(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must hold the same images, got {a.shape[1]} and {b.shape[1]}")
    n = a.shape[1]
    d = b.mean(axis=0) - a.mean(axis=0)
    delta = float(d.mean())
    terms = [(float(d.var(ddof=1)) / n if n > 1 else 0.0, n - 1)]
    for g in (a, b):
        if g.shape[0] > 1:
            terms.append((float(g.mean(axis=1).var(ddof=1)) / g.shape[0], g.shape[0] - 1))
    var = sum(v for v, _ in terms)
    if not var > 0:
        return {"delta": delta, "se": 0.0, "t": float("nan") if delta == 0 else float(np.copysign(np.inf, delta)),
                "df": float("nan"), "p_value": 1.0 if delta == 0 else 0.0}
    df = var ** 2 / sum(v ** 2 / k for v, k in terms if k > 0 and v > 0)
    se = float(np.sqrt(var))
    t = delta / se
    return {"delta": delta, "se": se, "t": float(t), "df": float(df), "p_value": float(min(1.0, 2 * student_t.sf(abs(t), df)))}


def paired_delta_with_ci(a, b, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``mean(b) - mean(a)`` of two groups of runs over the same images (``[R, N]`` each) with its two-level
    bootstrap CI (`two_level_bootstrap` with coefficients ``(-1, 1)``: one image draw for both, each group's
    seeds drawn on their own): ``{"delta", "ci_low", "ci_high"}`` in the values' units."""
    a, b = _as_runs(a, "a"), _as_runs(b, "b")
    lo, hi = two_level_ci([a, b], (-1.0, 1.0), n_boot=n_boot, confidence=confidence, seed=seed)
    return {"delta": float(b.mean() - a.mean()), "ci_low": lo, "ci_high": hi}




def benjamini_hochberg_adjust(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg step-up adjusted p-values of one family of ``m`` tests (same order as ``p_values``).

    With the p-values sorted ascending, p_(1) <= ... <= p_(m): adj_(i) = min_{j >= i} min(1, m p_(j) / j).
    Rejecting every test with adj <= q controls the false discovery rate at q for independent or positively
    dependent tests (weaker than Holm's family-wise control). E.g. [0.01, 0.04, 0.03, 0.005] ->
    [0.02, 0.04, 0.04, 0.02] (statsmodels calls it ``fdr_bh``).
    """
    p = _as_p_values(p_values)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, m * p[order] / np.arange(1, m + 1))
    out = np.empty(m, dtype=np.float64)
    out[order] = np.minimum.accumulate(scaled[::-1])[::-1] if m else scaled
    return [float(v) for v in out]
