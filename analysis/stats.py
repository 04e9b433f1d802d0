"""Statistics for Table 2: bootstrap confidence intervals of top-1 accuracy, McNemar's exact test and the
Holm correction of a family of p-values.

The bootstrap and McNemar functions take per-image 0/1 correctness vectors (``bool`` or ``int`` arrays of
shape ``[N]``) and return plain Python numbers; randomness comes from an explicit ``seed``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "top1_with_ci", "mcnemar_counts", "mcnemar_exact_p", "mcnemar_test", "holm_adjust",
           "adjust_p_values", "P_ADJUST_METHODS"]

#: Multiple-comparison corrections `adjust_p_values` knows ("none": the p-values as they are).
P_ADJUST_METHODS = ("none", "holm")


def _as_vector(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be numeric or bool, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


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
