"""The times the README and docs state, measured as a new user gets them: each command from an empty cache
(a fresh ``$DIFFLOSS_CACHE``), the CPU count and the load average printed beside every time.

    python benchmarks/timings.py                        # demo, hspace-quick, naturalness-quick, hprobe-quick, test
    python benchmarks/timings.py --only demo,test       # a subset
    python benchmarks/timings.py --only setup           # make setup into a fresh virtual environment (minutes, GBs)
    python benchmarks/timings.py --write docs/timings.json   # also record the figures the docs quote
    python benchmarks/timings.py --render docs/timings.json  # rewrite the README's block from the record

The commands are exactly the ones the README gives: ``python -m analysis.classify`` (what ``make demo`` runs),
``python -m analysis.hspace --quick``, ``python -m analysis.naturalness --quick``, ``python -m analysis.hprobe
--quick``, ``python -m pytest`` (what ``make test`` runs) and, with ``setup``, ``pip install -e '.[test]'`` into a
new venv with an empty pip cache (what ``make setup`` runs). The three quick modes are timed twice: from an empty
cache (they then build the demo's sets first) and from the cache the demo left behind. Run it on a quiet machine:
a load average above the CPU count makes every figure slower, and the printout says what the load was.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: name -> argv (every command but the test suite gets a fresh ``--out`` folder)
COMMANDS = {
    "demo": [PY, "-m", "analysis.classify", "--no-progress"],
    "hspace-quick": [PY, "-m", "analysis.hspace", "--quick", "--no-progress"],
    "naturalness-quick": [PY, "-m", "analysis.naturalness", "--quick", "--no-progress"],
    "hprobe-quick": [PY, "-m", "analysis.hprobe", "--quick", "--no-progress"],
    "test": [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
}
ORDER = tuple(COMMANDS)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def timed(name: str, argv: list[str], env: dict[str, str]) -> dict:
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    if res.returncode != 0:
        tail = (res.stdout + res.stderr)[-2000:]
        raise SystemExit(f"{name} failed (exit {res.returncode}):\n{tail}")
    row = {"name": name, "seconds": round(seconds, 1), "load_before": round(load_before[0], 2),
           "load_after_1min": round(load_after[0], 2), "cpus": os.cpu_count()}
    print(f"{name:<36} {seconds:7.1f} s   load {load_before[0]:.2f} -> {load_after[0]:.2f} "
          f"(1-min average), {os.cpu_count()} CPUs", flush=True)
    return row


def run_commands(names: list[str], record: Path | None = None) -> list[dict]:
    """Time ``names`` in order; with ``record``, each row is merged into it as soon as it is measured (a failed
    or interrupted run keeps the rows measured before it)."""
    rows = []

    def add(row: dict) -> None:
        rows.append(row)
        if record is not None:
            write_record(record, [row])

    with tempfile.TemporaryDirectory(prefix="timings-") as tmp:
        tmp = Path(tmp)

        def env_for(cache: Path) -> dict[str, str]:
            return dict(os.environ, DIFFLOSS_CACHE=str(cache), PYTHONHASHSEED="0")

        warm = tmp / "cache-warm"  # the cache the demo leaves behind
        for name in names:
            argv = COMMANDS[name]
            if name == "demo":
                add(timed("demo (empty cache)", argv + ["--out", str(tmp / "out-demo")], env_for(warm)))
            elif name in ("hspace-quick", "naturalness-quick", "hprobe-quick"):
                cold = tmp / f"cache-{name}"
                add(timed(f"{name} (empty cache)", argv + ["--out", str(tmp / f"out-{name}-cold")],
                          env_for(cold)))
                shutil.rmtree(cold, ignore_errors=True)
                if (warm / "").exists() and "demo" in names:
                    add(timed(f"{name} (after the demo)", argv + ["--out", str(tmp / f"out-{name}-warm")],
                              env_for(warm)))
            else:
                add(timed(name, argv, env_for(tmp / "cache-test")))
    return rows


def time_setup() -> dict:
    """``make setup`` into a fresh venv with an empty pip cache (a new user's first run): creation, pip install -e
    '.[test]', and the folder's size."""
    with tempfile.TemporaryDirectory(prefix="timings-venv-") as tmp:
        venv = Path(tmp) / ".venv"
        env = dict(os.environ, PIP_CACHE_DIR=str(Path(tmp) / "pip-cache"))
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        subprocess.run(pip + ["install", "-q", "--upgrade", "pip"], check=True, env=env)
        subprocess.run(pip + ["install", "-q", "-e", f"{ROOT}[test]"], check=True, cwd=ROOT, env=env)
        seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
        cuda = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and "nvidia" in p.parts)
    row = {"name": "setup (fresh venv)", "seconds": round(seconds, 1), "load_before": round(load_before[0], 2),
           "cpus": os.cpu_count(), "venv_gb": round(size / 1e9, 1), "cuda_libraries_gb": round(cuda / 1e9, 1)}
    print(f"{row['name']:<36} {seconds:7.1f} s   venv {row['venv_gb']} GB ({row['cuda_libraries_gb']} GB CUDA "
          f"libraries), load before {load_before[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    return row


README = ROOT / "README.md"
BLOCK = ("<!-- timings:start -->", "<!-- timings:end -->")
#: README label of each measured row: the command a user types
LABELS = {
    "setup (fresh venv)": "`make setup` (a new `.venv`, an empty pip cache, packages from the machine's local "
                          "index: a download adds its own time; `make demo` and `make test` run it first)",
    "demo (empty cache)": "`make demo` (`python -m analysis.classify`)",
    "hspace-quick (empty cache)": "`python -m analysis.hspace --quick`",
    "hspace-quick (after the demo)": "`python -m analysis.hspace --quick`, after `make demo`",
    "naturalness-quick (empty cache)": "`python -m analysis.naturalness --quick`",
    "naturalness-quick (after the demo)": "`python -m analysis.naturalness --quick`, after `make demo`",
    "hprobe-quick (empty cache)": "`python -m analysis.hprobe --quick`",
    "hprobe-quick (after the demo)": "`python -m analysis.hprobe --quick`, after `make demo`",
    "test": "`make test` (`python -m pytest`)",
}


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def render_block(doc: dict) -> str:
    """The README block of a ``--write`` record: one row per command, its time and the load beside it."""
    lines = [f"Measured by `python benchmarks/timings.py --write docs/timings.json` on {doc['machine']} "
             f"({', '.join(sorted({r['measured'] for r in doc['rows']}))}), each command from an empty cache "
             "unless the row says otherwise, one after another on an otherwise idle machine (the 1-minute load "
             "average when each started and when it ended; a one-thread command lifts it towards 1 by itself); "
             "`python benchmarks/timings.py --render docs/timings.json` writes this block.", "",
             "| command | wall time | load average at start, at end |", "|---|---:|---|"]
    for row in doc["rows"]:
        extra = (f"; {row['venv_gb']} GB, {row['cuda_libraries_gb']} GB of it CUDA libraries"
                 if "venv_gb" in row else "")
        after = f"{row['load_after_1min']:.2f}" if "load_after_1min" in row else "-"
        lines.append(f"| {LABELS.get(row['name'], row['name'])} | {_fmt(row['seconds'])}{extra} | "
                     f"{row['load_before']:.2f}, {after} |")
    return "\n".join(lines)


def render_readme(record: Path, readme: Path = README) -> str:
    """README text with its timings block replaced by the one of ``record``."""
    from runkit.files import replace_block

    block = render_block(json.loads(Path(record).read_text()))
    return replace_block(readme.read_text(encoding="utf-8"), block, *BLOCK, where=str(readme))


def write_record(path: Path, rows: list[dict]) -> dict:
    """Merge ``rows`` into the record at ``path`` (a row of the same name is replaced, the others kept, in the
    README's order) and write it atomically: ``--only setup`` adds to the record of the other commands."""
    old = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    merged = {r["name"]: r for r in old["rows"]}
    merged.update({r["name"]: dict(r, measured=time.strftime("%Y-%m-%d")) for r in rows})
    rank = {name: i for i, name in enumerate(LABELS)}
    doc = {"machine": machine(), "rows": sorted(merged.values(), key=lambda r: rank.get(r["name"], len(rank)))}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ORDER), help="comma-separated subset of "
                    f"{','.join(ORDER)},setup (default: all but setup)")
    ap.add_argument("--write", default=None, metavar="JSON", help="also write the figures to this JSON file")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="measure nothing: rewrite the README's timings block from this record")
    args = ap.parse_args(argv)
    if args.render:
        from runkit.files import atomic_write_text

        try:
            text = render_readme(Path(args.render))
        except (OSError, ValueError, KeyError, TypeError) as err:  # missing, a folder, not JSON, not a record
            ap.error(f"--render {args.render}: not a record of --write ({type(err).__name__}: {err})")
        atomic_write_text(README, text)
        print(f"rewrote the timings block of {README}")
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ORDER) - {"setup"})
    if unknown:
        ap.error(f"unknown: {', '.join(unknown)}; choose from {', '.join(ORDER)}, setup")
    if args.write:  # checked before minutes of measuring, not after
        target = Path(args.write)
        if target.is_dir() or not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
            ap.error(f"--write {args.write}: not a writable file path (its folder must exist)")
        if target.exists():
            try:
                json.loads(target.read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError):
                ap.error(f"--write {args.write}: exists and is not a record of --write (rows are merged into it)")
    print(f"machine: {machine()}; load average now {os.getloadavg()[0]:.2f}", flush=True)
    record = Path(args.write) if args.write else None
    run_commands([n for n in ORDER if n in names], record)
    if "setup" in names:
        row = time_setup()
        if record is not None:
            write_record(record, [row])
    if record is not None:
        print(f"wrote {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
