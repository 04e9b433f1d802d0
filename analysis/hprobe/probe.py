"""The linear probe (functional core, scikit-learn): fit on the train images' h, score each group's test images,
and the 2-D PCA of h.

Arrays in, numbers out: features ``[N, D]`` float, labels ``[N]`` int (0-based classes). Nothing here reads an
image; the caller decides which images a probe is fitted on (`analysis.hprobe.cli` fits on the train split only).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from analysis.stats import bootstrap_ci, holm_adjust, mcnemar_test

__all__ = ["PROBE_CS", "fit_probe", "score_probe", "compare_probes", "pca_projection"]

#: The inverse regularisation strengths the cross-validation chooses from (LogisticRegression's C).
PROBE_CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _check_xy(x, y, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: expected features [N, D] and labels [N], got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: no images")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: the features hold {int((~np.isfinite(x)).sum())} non-finite values")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name}: labels must be integers, got dtype {y.dtype}")
    return x, y


def fit_probe(features, labels, seed: int = 0, folds: int = 5, cs: Sequence[float] = PROBE_CS,
              max_iter: int = 2000, jobs: int | None = None) -> tuple[Pipeline, dict]:
    """A linear probe of ``labels`` from ``features`` (the train images only): ``StandardScaler`` +
    ``LogisticRegression`` (multinomial, L2, lbfgs), its C chosen among ``cs`` by ``GridSearchCV`` over
    ``StratifiedKFold(folds, shuffle=True, random_state=seed)`` (folds capped at the smallest class's count, at
    least 2), the scaler refitted inside every fold, then refitted on all train images with the best C.

    Returns ``(pipeline, info)``: info holds ``C`` (the chosen one), ``cv_accuracy`` (its mean accuracy over the
    held-out folds), ``folds``, ``n_train``, ``n_classes`` and ``dim``."""
    x, y = _check_xy(features, labels, "train")
    counts = np.unique(y, return_counts=True)[1]
    if counts.size < 2:
        raise ValueError(f"the probe needs at least 2 classes in the train images, got {counts.size}")
    k = int(min(folds, counts.min()))
    if k < 2:
        raise ValueError(f"every class needs at least 2 train images for the cross-validation; the smallest has "
                         f"{int(counts.min())}")
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=int(max_iter)))
    search = GridSearchCV(pipe, {"logisticregression__C": list(cs)}, cv=StratifiedKFold(k, shuffle=True,
                          random_state=int(seed)), scoring="accuracy", n_jobs=jobs, refit=True)
    search.fit(x, y)
    info = {"C": float(search.best_params_["logisticregression__C"]), "cv_accuracy": float(search.best_score_),
            "folds": k, "n_train": int(x.shape[0]), "n_classes": int(counts.size), "dim": int(x.shape[1])}
    return search.best_estimator_, info


def score_probe(probe: Pipeline, features, labels, seed: int = 0, n_boot: int = 1000) -> dict:
    """Accuracy of the fitted ``probe`` on ``features`` / ``labels`` (test images), in percent, with its 95%
    percentile bootstrap interval over images (`analysis.stats.bootstrap_ci`, ``seed``): ``{"n", "correct",
    "accuracy", "ci_low", "ci_high", "majority", "per_image"}``; ``majority`` is the share of the most frequent
    true class (the accuracy of always guessing it), ``per_image`` the [N] bool vector of correct predictions
    (for the paired tests, `compare_probes`)."""
    x, y = _check_xy(features, labels, "test")
    correct = probe.predict(x) == y
    lo, hi = bootstrap_ci(correct.astype(np.float64), n_boot=n_boot, seed=seed)
    return {"n": int(y.size), "correct": int(correct.sum()), "accuracy": 100.0 * float(correct.mean()),
            "ci_low": 100.0 * lo, "ci_high": 100.0 * hi,
            "majority": 100.0 * float(np.unique(y, return_counts=True)[1].max() / y.size), "per_image": correct}


def compare_probes(correct: Mapping[tuple, np.ndarray], pairs: Sequence[tuple[tuple, tuple]]) -> list[dict]:
    """Paired comparisons of probe results on the same images: for each ``(a, b)`` of ``pairs`` (keys of
    ``correct``, each a [N] bool vector of correct predictions on the same N images in the same order),
    McNemar's exact test (`analysis.stats.mcnemar_test`): ``{"a", "b", "n", "accuracy_a", "accuracy_b", "b_only_a"
    (a right, b wrong), "c_only_b", "p_value", "p_holm"}``, Holm-corrected over all ``pairs`` (one family)."""
    rows = []
    for a, b in pairs:
        ca, cb = np.asarray(correct[a], dtype=bool), np.asarray(correct[b], dtype=bool)
        res = mcnemar_test(ca, cb)
        rows.append({"a": a, "b": b, "n": res["n"], "accuracy_a": 100.0 * float(ca.mean()),
                     "accuracy_b": 100.0 * float(cb.mean()), "b_only_a": res["b"], "c_only_b": res["c"],
                     "p_value": res["p_value"]})
    for r, p in zip(rows, holm_adjust([r["p_value"] for r in rows])):
        r["p_holm"] = p
    return rows


def pca_projection(train_features, groups: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """2-D PCA (``StandardScaler`` + ``sklearn.decomposition.PCA``) fitted on ``train_features`` [N, D] and
    applied to each group's features: ``{"train": [N, 2], group: [M, 2], ...}``."""
    x = np.asarray(train_features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"the PCA needs train features [N >= 2, D], got shape {x.shape}")
    pipe = make_pipeline(StandardScaler(), PCA(n_components=2, random_state=int(seed))).fit(x)
    return {"train": pipe.transform(x), **{g: pipe.transform(np.asarray(v, dtype=np.float64))
                                           for g, v in groups.items()}}
