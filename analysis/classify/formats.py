"""Table 2's files: the Markdown and LaTeX tables, the tidy CSVs (`cubdata.io` CSV) and the per-image
predictions, written atomically, and the readers that load them back."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runkit.files import atomic_write_text, read_csv, write_csv

from analysis.classify.scoring import Predictions
from analysis.classify.spec import CLEAN

__all__ = ["TABLE_COLUMNS", "MCNEMAR_COLUMNS", "REPLICATE_TABLE_COLUMNS", "COMPARISON_COLUMNS", "PREDICTION_COLUMNS",
           "PREDICTIONS_FORMAT", "format_markdown", "format_latex", "write_outputs", "load_table", "load_mcnemar",
           "load_comparisons", "load_predictions", "slug", "table_grid"]

TABLE_COLUMNS = ("config", "degradation", "classifier", "n", "correct", "top1", "ci_low", "ci_high")
#: p_value: the exact McNemar p-value of the test alone; p_adjusted: corrected over all McNemar tests of the table
#: by the method named in p_adjust ("holm", or "none": p_adjusted == p_value).
MCNEMAR_COLUMNS = ("config_a", "config_b", "degradation", "classifier", "n", "b", "c", "p_value", "p_adjusted",
                   "p_adjust")
#: A table with replicates (some set holds several roots, one per restorer seed): ``seeds`` runs per cell, top1 the
#: mean over them, ci_low/ci_high the two-level bootstrap CI, correct summed over the runs, seed_sd the runs' spread
#: (points, ddof 1; empty for one run).
REPLICATE_TABLE_COLUMNS = ("config", "degradation", "classifier", "seeds", "n", "correct", "top1", "ci_low", "ci_high",
                           "seed_sd")
#: Every pair of rows of a table with replicates: delta = top1_b - top1_a (points) with its two-level bootstrap CI;
#: test "mcnemar" (both rows one run: b, c filled) or "two-level t" (t, df filled); p_adjusted as in MCNEMAR_COLUMNS.
COMPARISON_COLUMNS = ("config_a", "config_b", "degradation", "classifier", "n", "seeds_a", "seeds_b", "top1_a", "top1_b",
                      "delta", "ci_low", "ci_high", "test", "b", "c", "t", "df", "p_value", "p_adjusted", "p_adjust")
PREDICTION_COLUMNS = ("config", "degradation", "classifier", "image_id", "rel_path", "label", "pred", "correct")
PREDICTIONS_FORMAT = "diffloss-toolkit/table2-predictions-v1"
#: Keys of the run's meta that belong to the statistics, not to the predictions (re-chosen on every re-make).
_STATS_KEYS = ("n_boot", "confidence", "seed", "p_adjust")


# ---------------------------------------------------------------------------------------------- the grid
def table_grid(rows: Sequence[dict]) -> tuple[dict[str, list[str]], dict[tuple[str, str, str], dict]]:
    """Row, column-group and classifier order (first appearance; clean first) and the cells by key."""
    configs = list(dict.fromkeys(r["config"] for r in rows))
    if CLEAN in configs:
        configs.remove(CLEAN)
        configs.insert(0, CLEAN)
    order = {"configs": configs,
             "degradations": list(dict.fromkeys(r["degradation"] for r in rows if r["degradation"] != CLEAN)),
             "classifiers": list(dict.fromkeys(r["classifier"] for r in rows))}
    cells = {(r["config"], r["degradation"], r["classifier"]): r for r in rows}
    return order, cells


def _cell_for(cells, config, deg, clf):
    if config == CLEAN:  # the clean row is the same clean test images under every degradation column
        return cells.get((CLEAN, CLEAN, clf))
    return cells.get((config, deg, clf))


def _fmt_cell(row: dict | None, digits: int = 1) -> str:
    if row is None:
        return "–"
    return f"{row['top1']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"


def _fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


# ---------------------------------------------------------------------------------------------- Markdown
def _replicated(rows: Sequence[dict]) -> bool:
    return bool(rows) and "seeds" in rows[0]


def format_markdown(rows: Sequence[dict], tests: Sequence[dict] = (), meta: dict | None = None) -> str:
    """Table 2 as Markdown: rows = configurations (clean first), columns = degradation x classifier, cells
    ``top-1 [CI low, CI high]`` in percent (with replicates: the mean over the runs); then the tests (McNemar,
    or with replicates the paired comparisons)."""
    order, cells = table_grid(rows)
    meta = meta or {}
    degs = order["degradations"] or [CLEAN]
    header = ["config"] + [f"{d} · {c}" for d in degs for c in order["classifiers"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for config in order["configs"]:
        vals = [_fmt_cell(_cell_for(cells, config, d, c)) for d in degs for c in order["classifiers"]]
        lines.append("| " + " | ".join([config] + vals) + " |")
    text = "\n".join(lines) + "\n\n" + "\n".join(_markdown_notes(rows, meta, bool(order["degradations"]))) + "\n"
    if tests:
        text += _comparisons_markdown(tests) if _replicated(rows) else _mcnemar_markdown(tests)
    return text


def _runs_note(rows: Sequence[dict]) -> str:
    """Which rows hold several runs: ``w/o DiffLoss 3, w/ DiffLoss 3`` (a row with differing counts: ``2-3``)."""
    counts: dict[str, set[int]] = {}
    for r in rows:
        counts.setdefault(r["config"], set()).add(int(r["seeds"]))
    many = {c: k for c, k in counts.items() if max(k) > 1}
    return ", ".join(f"{c} {min(k)}" + (f"-{max(k)}" if len(k) > 1 else "") for c, k in many.items())


def _markdown_notes(rows: Sequence[dict], meta: dict, has_degradations: bool) -> list[str]:
    ns = sorted({r["n"] for r in rows})
    conf = meta.get("confidence", 0.95)
    if _replicated(rows):
        notes = [f"Top-1 accuracy (%) on the test split. Rows with several runs (one restoration per restorer seed: "
                 f"{_runs_note(rows)}) show the mean over their runs. {conf:.0%} CI in brackets: two-level percentile "
                 f"bootstrap ({meta.get('n_boot', 1000)} resamples, seed {meta.get('seed', 0)}; each resample draws "
                 "a row's runs with replacement, then the images, one image draw shared by all runs); rows of one run: "
                 f"images only. n = {', '.join(map(str, ns))} images per cell."
                 + (" The clean row repeats each classifier's clean accuracy under every degradation." if has_degradations else "")]
    else:
            notes = [f"Top-1 accuracy (%) on the test split, {conf:.0%} percentile-bootstrap CI in brackets "
                 f"({meta.get('n_boot', 1000)} resamples, seed {meta.get('seed', 0)}); "
                 f"n = {', '.join(map(str, ns))} images per cell."
                 + (" The clean row repeats each classifier's clean accuracy under every degradation." if has_degradations else "")]
    if meta.get("bbox_crop"):
        size = meta.get("bbox_size")
        notes.append("Images cropped to their bounding boxes, " + (
            f"resized to {size[0]}x{size[0]} and centre-cropped to {size[1]} (URIE's CUB-C protocol)."
            if size else "then resized and centre-cropped with each classifier's own sizes."))
    return notes


def _mcnemar_markdown(tests: Sequence[dict]) -> str:
    holm = tests[0].get("p_adjust", "none") == "holm"
    t = ["", "McNemar's exact test (same images; b = A right & B wrong, c = A wrong & B right):", "",
         "| degradation | classifier | A | B | n | b | c | p |" + (" p (Holm) |" if holm else ""),
         "|---|---|---|---|---:|---:|---:|---:|" + ("---:|" if holm else "")]
    for r in tests:
        t.append(f"| {r['degradation']} | {r['classifier']} | {r['config_a']} | {r['config_b']} | {r['n']} | "
                 f"{r['b']} | {r['c']} | {_fmt_p(r['p_value'])} |"
                 + (f" {_fmt_p(r['p_adjusted'])} |" if holm else ""))
    if holm:
        t += ["", f"p: exact two-sided p-value of each test alone (uncorrected). p (Holm): Holm-corrected over all "
                  f"{len(tests)} McNemar tests of this table (family-wise error rate); read this column when asking "
                  "whether a difference holds up among all the comparisons made here."]
    else:
        t += ["", f"p: exact two-sided p-values, not corrected for multiple comparisons ({len(tests)} tests; "
                  "--p-adjust none)."]
    return "\n".join(t) + "\n"


def _comparisons_markdown(tests: Sequence[dict]) -> str:
    holm = tests[0].get("p_adjust", "none") == "holm"
    t = ["", "Paired comparisons (same images; Δ = top-1 of B minus top-1 of A, points, with its two-level bootstrap "
             "CI; runs = A's and B's runs, one per restorer seed):", "",
         "| degradation | classifier | A | B | runs | Δ top-1 [CI] | test | p |" + (" p (Holm) |" if holm else ""),
         "|---|---|---|---|:---:|:---:|---|---:|" + ("---:|" if holm else "")]
    for r in tests:
        test = (f"McNemar b={r['b']} c={r['c']}" if r["test"] == "mcnemar" else
                f"two-level t, df {r['df']:.1f}" if r["df"] is not None else "two-level t (no variance)")
        t.append(f"| {r['degradation']} | {r['classifier']} | {r['config_a']} | {r['config_b']} | "
                 f"{r['seeds_a']} v {r['seeds_b']} | {r['delta']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] | "
                 f"{test} | {_fmt_p(r['p_value'])} |" + (f" {_fmt_p(r['p_adjusted'])} |" if holm else ""))
    t += ["", "Test: where a row holds several runs, the two-level t-test (Welch-Satterthwaite: the paired per-image "
              "variance of the run-averaged difference plus each row's between-seed variance of its runs' top-1; "
              "docs/table2.md); where both rows hold one run, McNemar's exact test (b = A right & B wrong, c = A "
              "wrong & B right)."]
    if holm:
        t += [f"p: two-sided p-value of each test alone (uncorrected). p (Holm): Holm-corrected over all {len(tests)} "
              "tests of this table (family-wise error rate); read this column when asking whether a difference "
              "holds up among all the comparisons made here."]
    else:
        t += [f"p: two-sided p-values, not corrected for multiple comparisons ({len(tests)} tests; --p-adjust none)."]
    return "\n".join(t) + "\n"


# ---------------------------------------------------------------------------------------------- LaTeX
_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(s))


def _tex_cell(row: dict | None) -> str:
    return "--" if row is None else rf"{row['top1']:.1f} {{\scriptsize[{row['ci_low']:.1f}, {row['ci_high']:.1f}]}}"


def format_latex(rows: Sequence[dict], meta: dict | None = None) -> str:
    """Table 2 as a LaTeX ``table`` (booktabs): a header row of degradations spanning their classifiers."""
    order, cells = table_grid(rows)
    meta = meta or {}
    degs = order["degradations"] or [CLEAN]
    clfs = order["classifiers"]
    k = len(clfs)
    colspec = "l" + ("|" + "c" * k) * len(degs)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{colspec}}}", r"\toprule"]
    lines.append(" & " + " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{_tex(d)}}}" for d in degs) + r" \\")
    lines.append(" ".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(degs))))
    lines.append("Config & " + " & ".join(_tex(c) for _ in degs for c in clfs) + r" \\")
    lines.append(r"\midrule")
    for config in order["configs"]:
        vals = [_tex_cell(_cell_for(cells, config, d, c)) for d in degs for c in clfs]
        lines.append(_tex(config) + " & " + " & ".join(vals) + r" \\")
        if config == CLEAN:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    ns = sorted({r["n"] for r in rows})
    if _replicated(rows):
        lines.append(rf"\caption{{Top-1 accuracy (\%) on the test split; rows with several restorations (one per "
                     rf"restorer seed: {_tex(_runs_note(rows))}) show their mean; "
                     rf"{meta.get('confidence', 0.95) * 100:.0f}\% two-level bootstrap confidence intervals (seeds, "
                     rf"then images) in brackets ({meta.get('n_boot', 1000)} resamples); "
                     rf"$n = {', '.join(map(str, ns))}$ images per cell.}}")
    else:
        lines.append(rf"\caption{{Top-1 accuracy (\%) on the test split; {meta.get('confidence', 0.95) * 100:.0f}\% "
                     rf"bootstrap confidence intervals in brackets ({meta.get('n_boot', 1000)} resamples); "
                     rf"$n = {', '.join(map(str, ns))}$ images per cell.}}")
    lines += [r"\label{tab:table2}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- files
def slug(s: str) -> str:
    """``s`` as a file-name part: runs of characters other than letters, digits, ``.``, ``_``, ``-`` -> ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-") or "x"


def _prediction_rows(p: Predictions):
    return ({"config": p.config, "degradation": p.degradation, "classifier": p.classifier,
             "image_id": int(i), "rel_path": rp, "label": int(y), "pred": int(q), "correct": int(y == q)}
            for i, rp, y, q in zip(p.image_id, p.rel_path, p.label, p.pred))


def _write_predictions(folder: Path, preds: Sequence[Predictions], meta: dict[str, Any]) -> None:
    """``folder/NNN_config__degradation__classifier.csv`` per `Predictions` (one file per run: a replicate
    ``k`` > 0 adds ``__rK``), then ``manifest.json`` (their order and replicate, and the run's meta without the
    statistics' settings)."""
    files = []
    for i, p in enumerate(preds):
        name = (f"{i:03d}_{slug(p.config)}__{slug(p.degradation)}__{slug(p.classifier)}"
                f"{f'__r{p.replicate}' if p.replicate else ''}.csv")
        write_csv(folder / name, _prediction_rows(p), PREDICTION_COLUMNS)
        files.append({"file": name, "config": p.config, "degradation": p.degradation,
                      "classifier": p.classifier, "replicate": int(p.replicate), "n": int(len(p.image_id))})
    manifest = {"format": PREDICTIONS_FORMAT, "files": files,
                "meta": {k: v for k, v in meta.items() if k not in _STATS_KEYS}}
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def write_outputs(out: str | Path, rows: Sequence[dict], tests: Sequence[dict], preds: Sequence[Predictions] | None,
                  meta: dict[str, Any]) -> dict[str, str]:
    """Write table.csv/md/tex/json, the tests (mcnemar.csv; with replicates comparisons.csv) and (if ``preds``)
    predictions/*.csv + manifest.json into ``out`` (atomically, file by file). Returns ``{"markdown": the
    Markdown text}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if preds is not None:
        _write_predictions(out / "predictions", preds, meta)
    md = format_markdown(rows, tests, meta)
    replicated = _replicated(rows)
    columns = REPLICATE_TABLE_COLUMNS if replicated else TABLE_COLUMNS
    tests_file, tests_columns, tests_key = (("comparisons.csv", COMPARISON_COLUMNS, "comparisons") if replicated
                                            else ("mcnemar.csv", MCNEMAR_COLUMNS, "mcnemar"))
    write_csv(out / "table.csv", rows, columns, ".4f")
    write_csv(out / tests_file, tests, tests_columns, ".6g")
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.tex", format_latex(rows, meta))
    atomic_write_text(out / "table.json", json.dumps({"meta": meta, "columns": list(columns), "rows": list(rows),
                                                      tests_key: list(tests)}, indent=2) + "\n")
    return {"markdown": md}


# ---------------------------------------------------------------------------------------------- readers
def _read_checked(path: Path, columns: Sequence[str], ints: Sequence[str], floats: Sequence[str]) -> list[dict]:
    """`cubdata.read_csv` of ``path``, whose header must be ``columns``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write it with python -m analysis.classify --out {path.parent}")
    with open(path, encoding="utf-8") as fh:  # our column names are plain words: the header splits on commas
        found = fh.readline().rstrip("\r\n").split(",")
    if found != list(columns):
        raise ValueError(f"{path}: expected columns {list(columns)}, found {found}")
    return read_csv(path, ints, floats)


def load_table(out_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``out_dir/table.csv`` back: one dict per cell with ``config``, ``degradation``, ``classifier``
    (str), ``n``, ``correct`` (int), ``top1``, ``ci_low``, ``ci_high`` (float, percent); a table with
    replicates (`REPLICATE_TABLE_COLUMNS`) also ``seeds`` (int) and ``seed_sd`` (float, None for one run)."""
    path = Path(out_dir) / "table.csv"
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            if fh.readline().rstrip("\r\n").split(",") == list(REPLICATE_TABLE_COLUMNS):
                return _read_checked(path, REPLICATE_TABLE_COLUMNS, ("seeds", "n", "correct"),
                                     ("top1", "ci_low", "ci_high", "seed_sd"))
    return _read_checked(path, TABLE_COLUMNS, ("n", "correct"), ("top1", "ci_low", "ci_high"))


def load_mcnemar(out_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``out_dir/mcnemar.csv`` back (``n``, ``b``, ``c`` int; ``p_value``, ``p_adjusted`` float;
    ``p_adjust`` the correction's name)."""
    return _read_checked(Path(out_dir) / "mcnemar.csv", MCNEMAR_COLUMNS, ("n", "b", "c"), ("p_value", "p_adjusted"))


def load_comparisons(out_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``out_dir/comparisons.csv`` (a table with replicates) back: `COMPARISON_COLUMNS`, numbers as int /
    float, empty cells (b, c of a t-test; t, df of McNemar's) as None."""
    return _read_checked(Path(out_dir) / "comparisons.csv", COMPARISON_COLUMNS, ("n", "seeds_a", "seeds_b", "b", "c"),
                         ("top1_a", "top1_b", "delta", "ci_low", "ci_high", "t", "df", "p_value", "p_adjusted"))


def _prediction_files(d: Path) -> tuple[list[tuple[Path, int | None]], dict[str, Any], bool]:
    """The CSV files of a predictions folder in recorded order with their recorded replicate, the recorded
    meta, and whether a manifest recorded them (else: every ``*.csv``, sorted by name, replicates unknown)."""
    manifest_path = d / "manifest.json"
    if not manifest_path.is_file():
        return [(f, None) for f in sorted(d.glob("*.csv"))], {}, False
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != PREDICTIONS_FORMAT:
        raise ValueError(f"{manifest_path}: unknown format {manifest.get('format')!r}")
    return [(d / f["file"], f.get("replicate")) for f in manifest["files"]], manifest.get("meta", {}), True


def load_predictions(directory: str | Path) -> tuple[list[Predictions], dict[str, Any]]:
    """Per-image predictions written by a previous run: ``directory`` is its OUT folder (with
    ``predictions/``) or the ``predictions/`` folder itself. Returns ``(predictions, meta)``. Each file is one
    run; several files of one (config, degradation, classifier) are its replicates (numbered as the manifest
    records, else in file order)."""
    d = Path(directory)
    if (d / "predictions").is_dir():
        d = d / "predictions"
    if not d.is_dir():
        raise FileNotFoundError(f"no predictions folder at {directory} (expected OUT/predictions/ of an earlier run)")
    files, meta, recorded = _prediction_files(d)
    if not files:
        raise FileNotFoundError(f"no prediction CSV files in {d}")
    groups: dict[tuple[str, str, str, int], list[dict]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for f, replicate in files:
        in_file: dict[tuple[str, str, str], list[dict]] = {}
        for r in _read_checked(f, PREDICTION_COLUMNS, ("image_id", "label", "pred", "correct"), ()):
            in_file.setdefault((r["config"], r["degradation"], r["classifier"]), []).append(r)
        for key, rs in in_file.items():
            k = seen.get(key, 0) if replicate is None else int(replicate)
            seen[key] = max(seen.get(key, 0), k + 1)
            if (*key, k) in groups:
                raise ValueError(f"{d}: {'/'.join(key)} replicate {k} is recorded twice")
            groups[(*key, k)] = rs
    preds = [Predictions(config, deg, clf, *(np.array([r[c] for r in rs], np.int64) for c in ("image_id", "label", "pred")),
                         [r["rel_path"] for r in rs], k)
             for (config, deg, clf, k), rs in groups.items()]
    if not recorded:  # no recorded order: clean first, then file order
        preds.sort(key=lambda p: p.config != CLEAN)
    return preds, meta
