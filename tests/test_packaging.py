"""Packaging: pyproject.toml and environment.yml pin the same dependencies; layout and CI entry exist."""
from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_deps() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def _conda_pip_deps() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["dependencies"][0] == "python=3.11"
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [p for p in pip if not p.startswith("-e")]


def test_environment_yml_matches_pyproject():
    assert sorted(_conda_pip_deps()) == sorted(_pyproject_deps())


def _pins() -> dict[str, str]:
    """``{name: specifier}`` of pyproject's dependencies, e.g. ``{"torch": "==2.14.1", "numpy": ">=2"}``."""
    import re

    out = {}
    for dep in _pyproject_deps():
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", dep)
        out[m.group(1).lower()] = m.group(2).strip()
    return out


def test_core_pins_are_exact_and_installed():
    """torch/torchvision (the wheels on this machine's disk) and the two forks are pinned exactly, and what is
    installed is what is pinned: the pins are read from pyproject, not copied here."""
    from importlib.metadata import PackageNotFoundError, version

    pins = _pins()
    for name in ("torch", "torchvision", "guided-diffusion-sdk", "imagecorruptions-imaug"):
        spec = pins.get(name, "")
        assert spec.startswith("==") and spec.count("=") == 2, f"{name} must be pinned exactly, got {spec!r}"
        try:
            installed = version(name)
        except PackageNotFoundError:
            raise AssertionError(f"{name} is pinned but not installed") from None
        assert installed.split("+")[0] == spec[2:], f"{name}: installed {installed}, pyproject pins {spec}"
    for required in ("numpy", "scikit-learn", "matplotlib", "jupyter", "tqdm", "torchmetrics"):
        assert required in pins, required
    # the original imagecorruptions shares the import name and breaks on NumPy 2
    assert "imagecorruptions" not in pins
    assert pins["numpy"].startswith(">=2")


def test_layout_and_ci_entry():
    for d in ("analysis", "notebooks", "corruptions", "classifiers", "diffloss", "tests", "benchmarks", "cubdata"):
        assert (ROOT / d).is_dir(), d
    for f in ("environment.yml", "README.md", "pyproject.toml", "Makefile"):
        assert (ROOT / f).is_file(), f
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [l.strip() for l in readme[:15] if l.strip().startswith("make ")]
    assert commands[:2] == ["make demo", "make test"]


def test_guided_diffusion_imports_without_mpi():
    import guided_diffusion.script_util  # noqa: F401  (dist_util needs MPI; we never import it)
    import sys

    assert "guided_diffusion.dist_util" not in sys.modules
