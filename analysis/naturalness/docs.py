"""The README's and docs/prior.md's naturalness numbers, made from the quick run's own output.

    python -m analysis.naturalness --quick --out runs/naturalness-quick
    python -m analysis.naturalness.docs runs/naturalness-quick    # the record, the figure and the blocks from it
    python -m analysis.naturalness.docs --check                   # exit 1 when a block differs from the record

From a ``--quick`` run folder it writes ``docs/figures/naturalness-mini.json`` (the committed *record*: the
settings, notes, per-set means and paired tests) and copies the run's
figure to ``docs/figures/naturalness-mini.png``. Then it rewrites the blocks between ``<!-- naturalness:start -->``
and ``<!-- naturalness:end -->`` of README.md and docs/prior.md from the record. Without RUN_DIR it re-renders the
blocks from the committed record. A test checks that the blocks equal what the record renders to; a slow test
re-runs ``--quick`` against the record.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runkit.files import atomic_write_bytes, atomic_write_text, read_csv
from runkit.files import replace_block as _replace_block

__all__ = ["RECORD", "FIGURE", "BLOCKS", "COMMAND", "record_from_run", "read_record", "readme_block", "prior_block",
           "replace_block", "rendered_files", "main"]

REPO = Path(__file__).resolve().parents[2]
RECORD = REPO / "docs" / "figures" / "naturalness-mini.json"
FIGURE = REPO / "docs" / "figures" / "naturalness-mini.png"
#: The files whose naturalness block is generated, and the function that renders it.
BLOCKS = {"README.md": "readme_block", "docs/prior.md": "prior_block"}
START, END = "<!-- naturalness:start -->", "<!-- naturalness:end -->"
ALPHA = 0.05
RUN = "runs/naturalness-quick"
COMMAND = (f"`python -m analysis.naturalness --quick --out {RUN}` then `python -m analysis.naturalness.docs {RUN}`")
_INTS = ("t", "n", "replicates", "replicates_a", "replicates_b", "n_a_lower", "n_a_higher")


def _numbers(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        new = {}
        for k, v in row.items():
            if k in _INTS:
                new[k] = int(v)
            else:
                try:
                    new[k] = float(v)
                except ValueError:
                    new[k] = v
        out.append(new)
    return out


def record_from_run(run_dir: str | Path) -> dict[str, Any]:
    """The portable record of a ``--quick`` run folder (machine-specific paths and timings left out: a resumed run
    would record only its resume; the time is `benchmarks/timings.py`'s)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["settings"]
    done = json.loads((run_dir / "done.json").read_text(encoding="utf-8"))
    if not config.get("quick"):
        raise ValueError(f"{run_dir} is not a --quick run of python -m analysis.naturalness")
    return {
        "format": "diffloss-naturalness-record/1",
        "command": f"python -m analysis.naturalness --quick --out {RUN}",
        "title": done["title"], "images": done["images"], "prior": done["prior"],
        "sets": {name: len(roots) for name, roots in done["sets"].items()},
        "notes": done["notes"], "trained_against_this_prior": done["trained_against_this_prior"],
        "stats": {k: config[k] for k in ("n_boot", "confidence", "seed", "p_adjust")},
        "summary": _numbers(read_csv(run_dir / "naturalness.csv")),
        "paired": _numbers(read_csv(run_dir / "paired.csv")),
    }


def read_record(path: str | Path = RECORD) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- rendering
def _fmt_p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _timesteps(record) -> list[int]:
    return sorted({r["t"] for r in record["summary"]})


def means_table(record, metric: str) -> str:
    """Rows = sets, columns = timesteps: the mean of ``metric`` over images (replicates averaged first)."""
    ts = _timesteps(record)
    cell = {(r["set"], r["t"]): r["mean"] for r in record["summary"] if r["metric"] == metric}
    lines = [f"| {metric} | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---:|" * len(ts)]
    for s in dict.fromkeys(r["set"] for r in record["summary"]):
        lines.append(f"| {s} | " + " | ".join(f"{cell[(s, t)]:.3g}" for t in ts) + " |")
    return "\n".join(lines)


def paired_table(record, metrics: tuple[str, ...] = ("nat", "sem", "sem_rel"), pairs=None) -> str:
    """Rows = comparison x metric, columns = timesteps, cells ``mean a - b [CI]`` in % of b's mean, ``*`` where
    the adjusted p < 0.05."""
    ts = _timesteps(record)
    cell = {(r["set_a"], r["set_b"], r["metric"], r["t"]): r for r in record["paired"]}
    lines = ["| a - b | metric | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|---|" + "---:|" * len(ts)]
    for a, b in dict.fromkeys((r["set_a"], r["set_b"]) for r in record["paired"]):
        if pairs is not None and (a, b) not in pairs:
            continue
        for m in metrics:
            vals = []
            for t in ts:
                r = cell[(a, b, m, t)]
                pct = 100.0 / r["mean_b"]
                star = " *" if r["p_adjusted"] < ALPHA else ""
                vals.append(f"{r['mean_diff'] * pct:+.1f}% [{r['ci_low'] * pct:+.1f}, {r['ci_high'] * pct:+.1f}]{star}")
            lines.append(f"| {a} - {b} | {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def verdicts(record, metrics: tuple[str, ...] = ("nat", "sem", "sem_rel")) -> list[str]:
    """One sentence per comparison: where a is significantly lower or higher than b (adjusted p < 0.05)."""
    out = []
    by: dict[tuple[str, str], list[dict]] = {}
    for r in record["paired"]:
        if r["metric"] in metrics:
            by.setdefault((r["set_a"], r["set_b"]), []).append(r)
    all_ts = _timesteps(record)
    for (a, b), tests in by.items():
        def where(ts):
            per = {m: [r["t"] for r in ts if r["metric"] == m] for m in metrics}
            return ", ".join(f"{m} ({'every t' if got == all_ts else 't = ' + ', '.join(map(str, got))})"
                             for m, got in per.items() if got)

        lower = [r for r in tests if r["p_adjusted"] < ALPHA and r["mean_diff"] < 0]
        higher = [r for r in tests if r["p_adjusted"] < ALPHA and r["mean_diff"] > 0]
        parts = []
        if lower:
            parts.append(f"lower for {where(lower)}")
        if higher:
            parts.append(f"*higher* for {where(higher)}")
        rest = len(tests) - len(lower) - len(higher)
        if rest:
            parts.append(f"{'no significant difference in the other' if parts else 'no significant difference in all'}"
                         f" {rest} of {len(tests)} tests")
        out.append(f"**{a} against {b}:** " + "; ".join(parts) + ".")
    return out


def _setup_line(record) -> str:
    s = record["stats"]
    reps = sorted({n for n in record["sets"].values()})
    ts = ", ".join(map(str, _timesteps(record)))
    return (f"The built-in prior ({record['prior']}) on {record['images']} mini-CUB test images (spread over the 10 "
            f"classes), timesteps {ts}, noise seed {s['seed']}; restored sets: the mean over {max(reps)} restorer "
            f"seeds. Paired tests: the mean per-image difference a - b in % of b's mean, {s['confidence']:.0%} CI (bootstrap over images, and over seeds where a set has several), "
            f"`*`: p < {ALPHA} after {s['p_adjust'].capitalize()} over all {len(record['paired'])} tests (two-level "
            f"t-test where a set has several seeds, Wilcoxon signed-rank otherwise; with {max(reps)} seeds the "
            "bootstrap CI can exclude 0 where the t-test, which weighs the few seeds with their degrees of freedom, "
            "finds no significant difference: read the star). Its time: the README's timings table "
            "(`python benchmarks/timings.py`).")


def _restored_pairs(record, row: str) -> set[tuple[str, str]]:
    return {(r["set_a"], r["set_b"]) for r in record["paired"] if r["set_a"].startswith(row)}


def readme_block(record) -> str:
    """The README's block: the setup, the w/ - w/o DiffLoss paired table, the verdicts, the same-prior note."""
    parts = [f"Generated by {COMMAND}; do not edit by hand.", "", _setup_line(record), "",
             paired_table(record, ("nat", "sem_rel"), _restored_pairs(record, "w/ DiffLoss")), ""]
    parts += [f"- {v}" for v in verdicts(record)]
    if record["trained_against_this_prior"]:
        parts += ["", f"The {', '.join(record['trained_against_this_prior'])} restorers were trained with DiffLoss "
                      "against this same prior, to lower exactly these terms: where they score lower, that is partly "
                      "by construction, not independent evidence (score them with an independent prior too: "
                      "[docs/prior.md](docs/prior.md#trained-against-the-same-prior))."]
    return "\n".join(parts)


def prior_block(record) -> str:
    """docs/prior.md's block: the setup, every paired comparison, the verdicts, the notes and the per-set means."""
    parts = [f"Generated by {COMMAND} (the record: `docs/figures/naturalness-mini.json`); do not edit by hand.", "",
             _setup_line(record), "", paired_table(record), ""]
    parts += [f"- {v}" for v in verdicts(record)]
    parts += [""] + [f"Note: {n}" for n in record["notes"]]
    parts += ["", "Per-set means over images (unpaired; their bands in the figure are not a test):", ""]
    parts += [means_table(record, m) + "\n" for m in ("denoise", "nat", "sem", "sem_rel")]
    return "\n".join(parts).rstrip()


def replace_block(text: str, block: str, where: str = "") -> str:
    """``text`` with the part between `START` and `END` replaced by ``block``."""
    return _replace_block(text, block, START, END, where)


def rendered_files(record, repo: Path = REPO) -> dict[Path, str]:
    """``{path: new text}`` of every file in `BLOCKS`."""
    renderers = {"readme_block": readme_block, "prior_block": prior_block}
    return {repo / rel: replace_block((repo / rel).read_text(encoding="utf-8"), renderers[fn](record), rel)
            for rel, fn in BLOCKS.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.naturalness.docs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a --quick run folder; without it the blocks are re-rendered from the "
                                              "committed record")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a block differs from the record")
    args = p.parse_args(argv)
    record = record_from_run(args.run_dir) if args.run_dir else read_record()
    files = rendered_files(record)
    stale = [str(path.relative_to(REPO)) for path, text in files.items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        print("up to date" if not stale else f"stale: {', '.join(stale)} (run {COMMAND})")
        return 1 if stale else 0
    if args.run_dir:
        atomic_write_text(RECORD, json.dumps(record, indent=1) + "\n")
        atomic_write_bytes(FIGURE, (Path(args.run_dir) / "naturalness.png").read_bytes())
    for path, text in files.items():
        atomic_write_text(path, text)
    print(f"updated {', '.join(BLOCKS)}" + (f", {RECORD.relative_to(REPO)} and {FIGURE.relative_to(REPO)}"
                                            if args.run_dir else " from the committed record"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
