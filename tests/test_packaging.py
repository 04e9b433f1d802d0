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


def test_core_pins():
    deps = _pyproject_deps()
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    names = {d.split("=")[0].split(">")[0].split("<")[0] for d in deps}
    for required in ("guided-diffusion-sdk", "imagecorruptions-imaug", "numpy", "scikit-learn", "matplotlib",
                     "jupyter", "tqdm"):
        assert required in names
    # the original imagecorruptions shares the import name and breaks on NumPy 2
    assert "imagecorruptions" not in names


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
