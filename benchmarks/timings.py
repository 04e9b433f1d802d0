"""The times the README and docs state, measured as a new user gets them: each command from an empty cache
(a fresh ``$DIFFLOSS_CACHE``), the CPU count and the load average printed beside every time.

    python benchmarks/timings.py                        # demo, hspace-quick, naturalness-quick, test
    python benchmarks/timings.py --only demo,test       # a subset
    python benchmarks/timings.py --only setup           # make setup into a fresh virtual environment (minutes, GBs)
    python benchmarks/timings.py --write docs/timings.json   # also record the figures the docs quote

The commands are exactly the ones the README gives: ``python -m analysis.classify`` (what ``make demo`` runs),
``python -m analysis.hspace --quick``, ``python -m analysis.naturalness --quick``, ``python -m pytest`` (what
``make test`` runs) and, with ``setup``, ``pip install -e '.[test]'`` into a new venv (what ``make setup`` runs).
``hspace-quick`` and ``naturalness-quick`` are timed twice: from an empty cache (they then build the demo's
sets first) and from the cache the demo left behind ("warm"). Run it on a quiet machine: a load average
above the CPU count makes every figure slower, and the printout says what the load was.
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

#: name -> (argv, whether it needs a fresh output folder as its last two arguments)
COMMANDS = {
    "demo": ([PY, "-m", "analysis.classify", "--no-progress"], True),
    "hspace-quick": ([PY, "-m", "analysis.hspace", "--quick", "--no-progress"], True),
    "naturalness-quick": ([PY, "-m", "analysis.naturalness", "--quick", "--no-progress"], True),
    "test": ([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider"], False),
}
ORDER = ("demo", "hspace-quick", "naturalness-quick", "test")


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
    print(f"{name:<28} {seconds:7.1f} s   load {load_before[0]:.2f} -> {load_after[0]:.2f} "
          f"(1-min average), {os.cpu_count()} CPUs", flush=True)
    return row


def run_commands(names: list[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="timings-") as tmp:
        tmp = Path(tmp)

        def env_for(cache: Path) -> dict[str, str]:
            return dict(os.environ, DIFFLOSS_CACHE=str(cache), PYTHONHASHSEED="0")

        warm = tmp / "cache-warm"  # the cache the demo leaves behind
        for name in names:
            argv, wants_out = COMMANDS[name]
            if name == "demo":
                rows.append(timed("demo (empty cache)", argv + ["--out", str(tmp / "out-demo")], env_for(warm)))
            elif name in ("hspace-quick", "naturalness-quick"):
                cold = tmp / f"cache-{name}"
                rows.append(timed(f"{name} (empty cache)", argv + ["--out", str(tmp / f"out-{name}-cold")],
                                  env_for(cold)))
                shutil.rmtree(cold, ignore_errors=True)
                if (warm / "").exists() and "demo" in names:
                    rows.append(timed(f"{name} (after the demo)", argv + ["--out", str(tmp / f"out-{name}-warm")],
                                      env_for(warm)))
            else:
                rows.append(timed(name, argv, env_for(tmp / "cache-test")))
    return rows


def time_setup() -> dict:
    """``make setup`` into a fresh venv: creation, pip install -e '.[test]', and the folder's size."""
    with tempfile.TemporaryDirectory(prefix="timings-venv-") as tmp:
        venv = Path(tmp) / ".venv"
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        subprocess.run([PY, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        subprocess.run(pip + ["install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run(pip + ["install", "-q", "-e", f"{ROOT}[test]"], check=True, cwd=ROOT)
        seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
        cuda = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and "nvidia" in p.parts)
    row = {"name": "setup (fresh venv)", "seconds": round(seconds, 1), "load_before": round(load_before[0], 2),
           "cpus": os.cpu_count(), "venv_gb": round(size / 1e9, 1), "cuda_libraries_gb": round(cuda / 1e9, 1)}
    print(f"{row['name']:<28} {seconds:7.1f} s   venv {row['venv_gb']} GB ({row['cuda_libraries_gb']} GB CUDA "
          f"libraries), load before {load_before[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ORDER), help="comma-separated subset of "
                    f"{','.join(ORDER)},setup (default: all but setup)")
    ap.add_argument("--write", default=None, metavar="JSON", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ORDER) - {"setup"})
    if unknown:
        ap.error(f"unknown: {', '.join(unknown)}; choose from {', '.join(ORDER)}, setup")
    print(f"machine: {machine()}; load average now {os.getloadavg()[0]:.2f}", flush=True)
    rows = run_commands([n for n in ORDER if n in names])
    if "setup" in names:
        rows.append(time_setup())
    if args.write:
        doc = {"machine": machine(), "measured": time.strftime("%Y-%m-%d"), "rows": rows}
        Path(args.write).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
