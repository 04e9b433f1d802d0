"""From per-image predictions to Table 2: top-1 with bootstrap CIs per cell, McNemar's exact test per pair of
rows (Holm-corrected as one family), and the whole run (score, summarise, write).

A table whose sets each hold one root keeps its classic form (`TABLE_COLUMNS`, McNemar's test). When a set
holds several roots (replicates: one restoration per restorer seed), each cell is the mean over its runs
with a two-level bootstrap CI, and each pair of rows gets Delta top-1 with the same CI and the two-level
t-test (`analysis.stats.two_level_t_test`; McNemar's exact test where both rows hold one run)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from classifiers.predict import resolve_device
from runkit.checks import positive_int
from runkit.options import Options, option
from runkit.distributed import distributed, on_rank0

from analysis.stats import (
    P_ADJUST_METHODS,
    adjust_p_values,
    mcnemar_test,
    paired_delta_with_ci,
    replicated_top1_with_ci,
    top1_with_ci,
    two_level_t_test,
)
from analysis.classify.formats import table_grid, write_outputs
from analysis.classify.scoring import Predictions, score_table2
from analysis.classify.spec import CLEAN, Table2Spec

__all__ = ["DEFAULT_P_ADJUST", "StatsConfig", "replicated", "summarize", "finish_table2", "run_table2"]

DEFAULT_P_ADJUST = "holm"


def _confidence(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        hint = f"; for {value:g}% pass {name} {value / 100:g}" if isinstance(value, (int, float)) and 1 < value < 100 else ""
        raise ValueError(f"{name} must be in (0, 1), got {value:g}{hint}" if isinstance(value, (int, float)) else f"{name} must be in (0, 1), got {value!r}")
    return value


@dataclass(kw_only=True)
class StatsConfig(Options):
    """The statistics of the table (`summarize`); each field is also a command-line option."""

    _options_title = "statistics"

    n_boot: int = option(1000, check=positive_int, help="bootstrap resamples per cell")
    confidence: float = option(0.95, check=_confidence,
                               help="confidence level of the intervals, in (0, 1): 0.95, not 95")
    seed: int = option(0, help="seed of the bootstrap resampling (numpy default_rng; every cell's CI draws from it, in "
                            "every mode, the demo included); the only randomness of the table")
    p_adjust: str = option(DEFAULT_P_ADJUST, choices=P_ADJUST_METHODS,
                           help="multiple-comparison correction over all McNemar tests of the table (mcnemar.csv: "
                                "p_adjusted beside the raw p_value); none: raw p-values only (the demo always uses "
                                "holm)")


def _row_pairs(cells: dict[tuple[str, str, str], list[Predictions]], order: dict[str, list[str]]):
    """``(degradation, classifier, config_a, config_b, runs_a, runs_b)`` for every pair of non-clean rows scored
    in the same degradation and classifier (A before B in row order), checked to hold the same images."""
    configs = [c for c in order["configs"] if c != CLEAN]
    for deg in order["degradations"]:
        for clf in order["classifiers"]:
            for i, ca in enumerate(configs):
                for cb in configs[i + 1:]:
                    a, b = cells.get((ca, deg, clf)), cells.get((cb, deg, clf))
                    if a is None or b is None:
                        continue
                    if not np.array_equal(a[0].image_id, b[0].image_id):
                        raise ValueError(f"{ca}/{deg} and {cb}/{deg} ({clf}) were scored on different images; "
                                         "a paired comparison needs the same images in the same order")
                    yield deg, clf, ca, cb, a, b


def _mcnemar_pairs(preds: Sequence[Predictions], order: dict[str, list[str]]) -> list[dict[str, Any]]:
    """McNemar's test of every pair of non-clean rows scored on the same images, per degradation and
    classifier (A before B in row order)."""
    cells = {p.key: [p] for p in preds}
    return [{"config_a": ca, "config_b": cb, "degradation": deg, "classifier": clf,
             **mcnemar_test(a[0].correct, b[0].correct)} for deg, clf, ca, cb, a, b in _row_pairs(cells, order)]


def _cells(preds: Sequence[Predictions]) -> dict[tuple[str, str, str], list[Predictions]]:
    """The runs of every cell (first-appearance order of the cells; runs by replicate), checked to be scored
    on the same images in the same order."""
    cells: dict[tuple[str, str, str], list[Predictions]] = {}
    for p in preds:
        cells.setdefault(p.key, []).append(p)
    for key, runs in cells.items():
        runs.sort(key=lambda p: p.replicate)
        if any(not np.array_equal(r.image_id, runs[0].image_id) for r in runs):
            raise ValueError(f"the replicates of {'/'.join(key)} were scored on different images")
    return cells


def _correct(runs: Sequence[Predictions]) -> np.ndarray:
    return np.stack([r.correct for r in runs])


def _replicate_pairs(cells, order: dict[str, list[str]], n_boot: int, confidence: float,
                     seed: int) -> list[dict[str, Any]]:
    """Every pair of non-clean rows scored on the same images, per degradation and classifier (A before B in
    row order): Delta top-1 (B - A, points) with its two-level bootstrap CI, and the test: McNemar's exact
    test when both rows hold one run, else the two-level t-test."""
    tests = []
    for deg, clf, ca, cb, a, b in _row_pairs(cells, order):
        ca_, cb_ = _correct(a), _correct(b)
        d = paired_delta_with_ci(ca_, cb_, n_boot=n_boot, confidence=confidence, seed=seed)
        row = {"config_a": ca, "config_b": cb, "degradation": deg, "classifier": clf,
               "n": int(ca_.shape[1]), "seeds_a": len(a), "seeds_b": len(b),
               "top1_a": 100.0 * float(ca_.mean()), "top1_b": 100.0 * float(cb_.mean()),
               "delta": 100.0 * d["delta"], "ci_low": 100.0 * d["ci_low"], "ci_high": 100.0 * d["ci_high"]}
        if len(a) == len(b) == 1:
            m = mcnemar_test(ca_[0], cb_[0])
            row.update(test="mcnemar", b=m["b"], c=m["c"], t=None, df=None, p_value=m["p_value"])
        else:
            t = two_level_t_test(ca_, cb_)
            finite = np.isfinite(t["t"])  # not when nothing varies (se = 0): p is then 0 or 1
            row.update(test="two-level t", b=None, c=None, t=t["t"] if finite else None,
                       df=t["df"] if finite else None, p_value=t["p_value"])
        tests.append(row)
    return tests


def replicated(preds: Sequence[Predictions]) -> bool:
    """Whether some cell holds several runs (replicates): the table then takes its replicated form."""
    return len({p.run_key for p in preds}) != len({p.key for p in preds})


def summarize(preds: Sequence[Predictions], n_boot: int = 1000, confidence: float = 0.95,
              seed: int = 0, p_adjust: str = DEFAULT_P_ADJUST) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tidy table rows (top1/ci in percent) and one test row for every pair of non-clean configurations
    scored on the same images, per degradation and classifier (rows in table order; pairs A before B in row
    order).

    One run per cell: rows in `TABLE_COLUMNS` (percentile bootstrap CI), tests in `MCNEMAR_COLUMNS`.
    Several runs in some cell (`replicated`): rows in `REPLICATE_TABLE_COLUMNS` (mean over the runs,
    two-level bootstrap CI: seeds, then images; ``seed_sd`` the runs' spread), tests in
    `COMPARISON_COLUMNS` (Delta top-1 = B - A with its two-level CI; McNemar's exact test where both rows
    hold one run, else `analysis.stats.two_level_t_test`).

    Every bootstrap draws from ``seed``. All tests of the table form one family: ``p_adjusted`` is their
    p-value corrected by ``p_adjust`` (`analysis.stats.P_ADJUST_METHODS`; "holm": Holm's step-down
    correction, family-wise error rate; "none": the raw p-value)."""
    if p_adjust not in P_ADJUST_METHODS:
        raise ValueError(f"unknown p-value adjustment {p_adjust!r}; valid: {', '.join(P_ADJUST_METHODS)}")
    if len({p.run_key for p in preds}) != len(preds):
        raise ValueError("duplicate (config, degradation, classifier, replicate) among the predictions")
    if replicated(preds):
        cells = _cells(preds)
        rows = [{"config": k[0], "degradation": k[1], "classifier": k[2],
                 **replicated_top1_with_ci(_correct(runs), n_boot=n_boot, confidence=confidence, seed=seed)}
                for k, runs in cells.items()]
        tests = _replicate_pairs(cells, table_grid(rows)[0], n_boot, confidence, seed)
    else:
        rows = [{"config": p.config, "degradation": p.degradation, "classifier": p.classifier,
                 **top1_with_ci(p.correct, n_boot=n_boot, confidence=confidence, seed=seed)} for p in preds]
        tests = _mcnemar_pairs(preds, table_grid(rows)[0])
    for t, adj in zip(tests, adjust_p_values([t["p_value"] for t in tests], p_adjust)):
        t.update(p_adjusted=adj, p_adjust=p_adjust)
    return rows, tests


def finish_table2(preds: Sequence[Predictions], meta: dict[str, Any], out: str | Path, n_boot: int = 1000,
                  confidence: float = 0.95, seed: int = 0, p_adjust: str = DEFAULT_P_ADJUST,
                  write_predictions: bool = True) -> dict[str, Any]:
    """`summarize` ``preds`` and write every file into ``out`` (the predictions too if ``write_predictions``).
    Returns ``{"rows", "tests", "replicated", "markdown", "out", "meta"}`` (``tests``: the McNemar rows, or with
    replicates the comparison rows; ``replicated``: which of the two forms, `replicated`)."""
    rows, tests = summarize(preds, n_boot=n_boot, confidence=confidence, seed=seed, p_adjust=p_adjust)
    meta = dict(meta, n_boot=int(n_boot), confidence=float(confidence), seed=int(seed), p_adjust=p_adjust)
    md = write_outputs(out, rows, tests, preds if write_predictions else None, meta)["markdown"]
    return {"rows": rows, "tests": tests, "replicated": replicated(preds), "markdown": md, "out": str(out),
            "meta": meta}


def run_table2(spec: Table2Spec, out: str | Path, device: str = "auto", batch_size: int = 64, workers: int = 2,
               n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, progress: bool = True,
               extra_meta: dict | None = None, p_adjust: str = DEFAULT_P_ADJUST) -> dict[str, Any]:
    """Score, summarise and write everything for ``spec`` into ``out``. ``seed``: the bootstrap's;
    ``p_adjust``: the tests' correction (`summarize`). Returns `finish_table2`'s dict.

    Under ``torchrun --nproc_per_node N`` the ranks share the scoring (`score_table2`); rank 0 alone
    summarises and writes, the same files as a one-process run, and every rank returns its result."""
    with distributed(str(resolve_device(device))) as (rank, world, _):
        preds, meta = score_table2(spec, device=device, batch_size=batch_size, workers=workers, progress=progress)
        meta.update(extra_meta or {})
        return on_rank0(lambda: finish_table2(preds, meta, out, n_boot, confidence, seed, p_adjust), rank, world)
