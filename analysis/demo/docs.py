"""The README's and docs' demo tables, made from the demo's own output.

    python -m analysis.demo.docs runs/demo-table2      # after python -m analysis.classify (the demo); make docs-figures runs both
    python -m analysis.demo.docs --check                # exit 1 when README.md or docs/table2.md differ from the record

From a demo run folder (``python -m analysis.classify`` with no classifier) it writes ``docs/demo/table2-demo.json``,
the committed *record* of the demo: the table's cells, the paired comparisons, the notes (the collapse flags among
them) and every scored set's per-image predictions, and the figure ``docs/figures/demo-table2.png``. Then it rewrites the blocks between
``<!-- demo-table2:start -->`` and ``<!-- demo-table2:end -->`` of README.md and docs/table2.md from the record
(`readme_block`, `table2_block`). Without RUN_DIR it re-renders the blocks from the committed record. A test checks
that the blocks equal what the record renders to, and that a cell of the record is what the current code computes
from the shipped weights; a slow test re-runs the whole demo against it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runkit.files import atomic_write_text
from runkit.files import replace_block as _replace_block

__all__ = ["RECORD", "BLOCKS", "record_from_run", "read_record", "readme_block", "table2_block", "verdicts",
           "replace_block", "main"]

REPO = Path(__file__).resolve().parents[2]
#: The committed record of the demo's output.
RECORD = REPO / "docs" / "demo" / "table2-demo.json"
#: The demo's figure (`analysis.table2_plot.plot_table2_bars` of the record's rows), shown in docs/table2.md.
FIGURE = REPO / "docs" / "figures" / "demo-table2.png"
#: The files whose demo block is generated, and the function that renders it.
BLOCKS = {"README.md": "readme_block", "docs/table2.md": "table2_block"}
START, END = "<!-- demo-table2:start -->", "<!-- demo-table2:end -->"
#: A comparison counts as significant when its Holm-corrected p is below this.
ALPHA = 0.05
_COMMAND = "`make docs-figures` (= `python -m analysis.classify --out runs/demo-table2` then " \
           "`python -m analysis.demo.docs runs/demo-table2`)"


# ---------------------------------------------------------------------------------------------- the record
def record_from_run(run_dir: str | Path) -> dict[str, Any]:
    """The portable record of a demo run folder: table rows, comparisons, notes, collapse flags, the settings
    behind them and every set's predictions (``"CONFIG|DEGRADATION|CLASSIFIER|REPLICATE": "p p p ..."``, in
    test-split order). Machine-specific paths are left out."""
    from analysis.classify import load_predictions

    run_dir = Path(run_dir)
    table = json.loads((run_dir / "table.json").read_text(encoding="utf-8"))
    meta = table["meta"]
    if not meta.get("synthetic"):
        raise ValueError(f"{run_dir} is not a demo run (python -m analysis.classify with no classifier)")
    preds, _ = load_predictions(run_dir)
    return {
        "format": "diffloss-demo-record/1",
        "command": "python -m analysis.classify --out runs/demo-table2",
        "stats": {k: meta[k] for k in ("n_boot", "confidence", "seed", "p_adjust")},
        "notes": meta["notes"], "collapsed": meta.get("collapsed", []),
        "columns": table["columns"], "rows": table["rows"],
        "comparisons": table.get("comparisons", table.get("mcnemar", [])),
        "predictions": {f"{p.config}|{p.degradation}|{p.classifier}|{p.replicate}": " ".join(map(str, p.pred.tolist()))
                        for p in preds},
        "image_ids": " ".join(map(str, preds[0].image_id.tolist())),
    }


def read_record(path: str | Path = RECORD) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_record(record: dict[str, Any], path: str | Path = RECORD) -> None:
    atomic_write_text(Path(path), json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- rendering
def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _cells(record) -> dict[tuple[str, str, str], dict]:
    return {(r["config"], r["degradation"], r["classifier"]): r for r in record["rows"]}


def _order(record) -> tuple[list[str], list[str], list[str]]:
    rows = record["rows"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    degs = list(dict.fromkeys(r["degradation"] for r in rows if r["degradation"] != "clean"))
    clfs = list(dict.fromkeys(r["classifier"] for r in rows))
    return configs, degs, clfs


def _cell_text(r: dict) -> str:
    return f"{r['top1']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"


def main_table(record) -> str:
    """Rows = configurations, columns = degradation x classifier, cells ``mean [CI]``."""
    configs, degs, clfs = _order(record)
    cells = _cells(record)
    head = "| row | " + " | ".join(f"{d} {c}" for d in degs for c in clfs) + " |"
    lines = [head, "|---|" + "---:|" * (len(degs) * len(clfs))]
    for config in configs:
        vals = [_cell_text(cells[("clean", "clean", c)] if config == "clean" else cells[(config, d, c)])
                for d in degs for c in clfs]
        lines.append(f"| {config} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def comparisons_table(record, pairs: tuple[tuple[str, str], ...] | None = None) -> str:
    """Delta Top-1 (B - A) with its CI and Holm-corrected p for the ``pairs`` of rows (default: all)."""
    lines = ["| degradation | classifier | A | B | Delta B - A [CI] | test | p (Holm) |", "|---|---|---|---|---:|---|---:|"]
    for t in record["comparisons"]:
        if pairs is not None and (t["config_a"], t["config_b"]) not in pairs:
            continue
        lines.append(f"| {t['degradation']} | {t['classifier']} | {t['config_a']} | {t['config_b']} | "
                     f"{t['delta']:+.1f} [{t['ci_low']:+.1f}, {t['ci_high']:+.1f}] | {t['test']} | "
                     f"{_fmt_p(t['p_adjusted'])} |")
    return "\n".join(lines)


def verdicts(record) -> list[str]:
    """One plain sentence per (A, B) pair of rows over every degradation and classifier: which comparisons are
    significant (Holm p < `ALPHA`) and in which direction, and which are not."""
    out = []
    by_pair: dict[tuple[str, str], list[dict]] = {}
    for t in record["comparisons"]:
        by_pair.setdefault((t["config_a"], t["config_b"]), []).append(t)
    for (a, b), tests in by_pair.items():
        up = [t for t in tests if t["p_adjusted"] < ALPHA and t["delta"] > 0]
        down = [t for t in tests if t["p_adjusted"] < ALPHA and t["delta"] < 0]
        name = lambda ts: ", ".join(f"{t['degradation']} / {t['classifier']} ({t['delta']:+.1f})" for t in ts)  # noqa: E731
        parts = []
        if up:
            parts.append(f"{b} is significantly above {a} for {name(up)}")
        if down:
            parts.append(f"{b} is significantly *below* {a} for {name(down)}")
        rest = [t for t in tests if t not in up and t not in down]
        if rest:
            lo, hi = min(t["delta"] for t in rest), max(t["delta"] for t in rest)
            parts.append(f"{'the other' if up or down else 'all'} {len(rest)} of {len(tests)} comparisons show no "
                         f"significant difference (Delta from {lo:+.1f} to {hi:+.1f} points)")
        out.append(f"**{a} -> {b}:** " + "; ".join(parts) + ".")
    return out


def _setup_line(record) -> str:
    n = {r["n"] for r in record["rows"]}
    seeds = max(int(r.get("seeds", 1)) for r in record["rows"])
    s = record["stats"]
    return (f"Top-1 (%) on the {', '.join(map(str, sorted(n)))} mini-CUB test images per cell; restored rows: the "
            f"mean over {seeds} restorer seeds, with a {s['confidence']:.0%} two-level bootstrap CI (seeds, then "
            f"images; {s['n_boot']} resamples, seed {s['seed']}). Other rows: one run, bootstrap over images.")


def readme_block(record) -> str:
    """The README's demo block: the main table, the verdicts, the collapse flags and the command."""
    collapse = [n for n in record["notes"] if n.startswith("Collapsed predictions")]
    parts = [f"Generated by {_COMMAND} from the demo's output; do not edit by hand.", "",
             _setup_line(record), "", main_table(record), "",
             "Paired comparisons (Delta Top-1 with its two-level CI; p Holm-corrected over all "
             f"{len(record['comparisons'])} comparisons of the table), in words:", ""]
    parts += [f"- {v}" for v in verdicts(record)]
    if collapse:
        parts += ["", collapse[0]]
    parts += ["", "Every comparison with its CI and test: [docs/table2.md](docs/table2.md#the-demos-numbers)."]
    return "\n".join(parts)


def table2_block(record) -> str:
    """docs/table2.md's demo block: the main table, every comparison and every note."""
    parts = [f"Generated by {_COMMAND} from the demo's output (the record: `docs/demo/table2-demo.json`); do not "
             "edit by hand.", "", _setup_line(record), "", main_table(record), "",
             "![the demo's Table 2](figures/demo-table2.png)", "",
             "Every pair of rows on the same images (Delta = B - A in points, two-level bootstrap CI; the two-level "
             "t-test where a row holds several seeds, McNemar's exact test where both hold one; p Holm-corrected "
             f"over all {len(record['comparisons'])} comparisons):", "", comparisons_table(record), ""]
    parts += [f"- {v}" for v in verdicts(record)]
    parts += ["", "Notes of the run:", ""] + [f"- {n}" for n in record["notes"]]
    return "\n".join(parts)


def write_figure(record, path: Path = FIGURE) -> Path:
    """`analysis.table2_plot.plot_table2_bars` of the record's rows (means over seeds with their CIs) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.table2_plot import plot_table2_bars

    fig, ax = plt.subplots(figsize=(11, 4))
    plot_table2_bars(record["rows"], ax=ax)
    ax.set_title("make demo: Top-1 on mini-CUB (synthetic smoke benchmark)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def replace_block(text: str, block: str, where: str = "", start: str = START, end: str = END) -> str:
    """``text`` with its demo block (or the one between ``start`` and ``end``) replaced by ``block``."""
    return _replace_block(text, block, start, end, where)


def rendered_files(record, repo: Path = REPO) -> dict[Path, str]:
    """``{path: new text}`` of every file in `BLOCKS`."""
    out = {}
    for rel, fn in BLOCKS.items():
        path = repo / rel
        out[path] = replace_block(path.read_text(encoding="utf-8"), globals()[fn](record), rel)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.demo.docs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a demo run folder; without it the blocks are re-rendered from the "
                                              "committed record")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block differs from the record")
    args = p.parse_args(argv)
    record = record_from_run(args.run_dir) if args.run_dir else read_record()
    files = rendered_files(record)
    stale = [str(path.relative_to(REPO)) for path, text in files.items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        if args.run_dir and record != read_record():
            stale.append(str(RECORD.relative_to(REPO)))
        print("up to date" if not stale else f"stale: {', '.join(stale)} (run make docs-figures)")
        return 1 if stale else 0
    if args.run_dir:
        write_record(record)
        write_figure(record)
    for path, text in files.items():
        atomic_write_text(path, text)
    print((f"wrote {RECORD.relative_to(REPO)} and {FIGURE.relative_to(REPO)}; " if args.run_dir else "")
          + f"rendered the demo blocks of {', '.join(map(str, BLOCKS))} from the record")
    return 0


if __name__ == "__main__":
    sys.exit(main())
