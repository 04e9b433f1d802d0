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

__all__ = ["TABLE_COLUMNS", "MCNEMAR_COLUMNS", "PREDICTION_COLUMNS", "PREDICTIONS_FORMAT", "format_markdown",
           "format_latex", "write_outputs", "load_table", "load_mcnemar", "load_predictions", "slug", "table_grid"]

TABLE_COLUMNS = ("config", "degradation", "classifier", "n", "correct", "top1", "ci_low", "ci_high")
#: p_value: the exact McNemar p-value of the test alone; p_adjusted: corrected over all McNemar tests of the table
#: by the method named in p_adjust ("holm", or "none": p_adjusted == p_value).
MCNEMAR_COLUMNS = ("config_a", "config_b", "degradation", "classifier", "n", "b", "c", "p_value", "p_adjusted",
                   "p_adjust")
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
def format_markdown(rows: Sequence[dict], tests: Sequence[dict] = (), meta: dict | None = None) -> str:
    """Table 2 as Markdown: rows = configurations (clean first), columns = degradation x classifier, cells
    ``top-1 [CI low, CI high]`` in percent; then the McNemar tests."""
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
        text += _mcnemar_markdown(tests)
    return text


def _markdown_notes(rows: Sequence[dict], meta: dict, has_degradations: bool) -> list[str]:
    ns = sorted({r["n"] for r in rows})
    conf = meta.get("confidence", 0.95)
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
    """``folder/NNN_config__degradation__classifier.csv`` per `Predictions`, then ``manifest.json`` (their
    order and the run's meta without the statistics' settings)."""
    files = []
    for i, p in enumerate(preds):
        name = f"{i:03d}_{slug(p.config)}__{slug(p.degradation)}__{slug(p.classifier)}.csv"
        write_csv(folder / name, _prediction_rows(p), PREDICTION_COLUMNS)
        files.append({"file": name, "config": p.config, "degradation": p.degradation,
                      "classifier": p.classifier, "n": int(len(p.image_id))})
    manifest = {"format": PREDICTIONS_FORMAT, "files": files,
                "meta": {k: v for k, v in meta.items() if k not in _STATS_KEYS}}
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def write_outputs(out: str | Path, rows: Sequence[dict], tests: Sequence[dict], preds: Sequence[Predictions] | None,
                  meta: dict[str, Any]) -> dict[str, str]:
    """Write table.csv/md/tex/json, mcnemar.csv and (if ``preds``) predictions/*.csv + manifest.json
    into ``out`` (atomically, file by file). Returns ``{"markdown": the Markdown text}``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if preds is not None:
        _write_predictions(out / "predictions", preds, meta)
    md = format_markdown(rows, tests, meta)
    write_csv(out / "table.csv", rows, TABLE_COLUMNS, ".4f")
    write_csv(out / "mcnemar.csv", tests, MCNEMAR_COLUMNS, ".6g")
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.tex", format_latex(rows, meta))
    atomic_write_text(out / "table.json", json.dumps({"meta": meta, "columns": list(TABLE_COLUMNS), "rows": list(rows),
                                                      "mcnemar": list(tests)}, indent=2) + "\n")
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
    (str), ``n``, ``correct`` (int), ``top1``, ``ci_low``, ``ci_high`` (float, percent)."""
    return _read_checked(Path(out_dir) / "table.csv", TABLE_COLUMNS, ("n", "correct"), ("top1", "ci_low", "ci_high"))


def load_mcnemar(out_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``out_dir/mcnemar.csv`` back (``n``, ``b``, ``c`` int; ``p_value``, ``p_adjusted`` float;
    ``p_adjust`` the correction's name)."""
    return _read_checked(Path(out_dir) / "mcnemar.csv", MCNEMAR_COLUMNS, ("n", "b", "c"), ("p_value", "p_adjusted"))


def _prediction_files(d: Path) -> tuple[list[Path], dict[str, Any], bool]:
    """The CSV files of a predictions folder in recorded order, the recorded meta, and whether a manifest
    recorded them (else: every ``*.csv``, sorted by name)."""
    manifest_path = d / "manifest.json"
    if not manifest_path.is_file():
        return sorted(d.glob("*.csv")), {}, False
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != PREDICTIONS_FORMAT:
        raise ValueError(f"{manifest_path}: unknown format {manifest.get('format')!r}")
    return [d / f["file"] for f in manifest["files"]], manifest.get("meta", {}), True


def load_predictions(directory: str | Path) -> tuple[list[Predictions], dict[str, Any]]:
    """Per-image predictions written by a previous run: ``directory`` is its OUT folder (with
    ``predictions/``) or the ``predictions/`` folder itself. Returns ``(predictions, meta)``."""
    d = Path(directory)
    if (d / "predictions").is_dir():
        d = d / "predictions"
    if not d.is_dir():
        raise FileNotFoundError(f"no predictions folder at {directory} (expected OUT/predictions/ of an earlier run)")
    files, meta, recorded = _prediction_files(d)
    if not files:
        raise FileNotFoundError(f"no prediction CSV files in {d}")
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for f in files:
        for r in _read_checked(f, PREDICTION_COLUMNS, ("image_id", "label", "pred", "correct"), ()):
            groups.setdefault((r["config"], r["degradation"], r["classifier"]), []).append(r)
    preds = [Predictions(config, deg, clf, *(np.array([r[c] for r in rs], np.int64) for c in ("image_id", "label", "pred")),
                         [r["rel_path"] for r in rs])
             for (config, deg, clf), rs in groups.items()]
    if not recorded:  # no recorded order: clean first, then file order
        preds.sort(key=lambda p: p.config != CLEAN)
    return preds, meta
