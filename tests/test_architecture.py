"""The layering and size rules of the library, as tests (issue 10).

Import rules (every import statement counts, including those inside functions), in the order of the layers:
- runkit (run plumbing) imports nothing of the project;
- cubdata (the data layer) imports runkit only;
- corruptions imports cubdata and runkit;
- diffloss (criterion + prior) imports cubdata and runkit;
- restoration imports diffloss, corruptions (synthetic pairs), cubdata and runkit;
- classifiers imports cubdata, corruptions and runkit, never diffloss or restoration;
- analysis may use them all; no library package imports analysis (except analysis itself) or benchmarks.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("runkit", "cubdata", "corruptions", "diffloss", "restoration", "classifiers", "analysis", "benchmarks")
LIBRARY = ("runkit", "cubdata", "corruptions", "diffloss", "restoration", "classifiers", "analysis")
ALLOWED = {
    "runkit": set(),
    "cubdata": {"runkit"},
    "corruptions": {"runkit", "cubdata"},
    "diffloss": {"runkit", "cubdata"},
    "restoration": {"runkit", "cubdata", "corruptions", "diffloss"},
    "classifiers": {"runkit", "cubdata", "corruptions"},
    "analysis": {"runkit", "cubdata", "corruptions", "diffloss", "restoration", "classifiers"},
}
MAX_MODULE_LINES = 500


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path, module: str | None = None) -> set[str]:
    """Top-level project packages imported anywhere in ``path`` (relative imports resolved against its dotted
    ``module`` name, by default read from its place in the repository)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = (module or _module_name(path)).split(".")
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "resolve_name"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names = [node.args[0].value.split(":")[0]]
        for name in names:
            top = name.split(".")[0]
            if top in PROJECT:
                found.add(top)
    return found


@pytest.mark.parametrize("package", LIBRARY)
def test_import_rules(package):
    bad = []
    for path in _modules(package):
        for imported in project_imports(path) - {package}:
            if imported not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not bad, "import rules broken:\n" + "\n".join(bad)


def test_import_rule_checker_sees_imports_inside_functions(tmp_path):
    """The checker itself: an import hidden in a function body, a relative one and a plugin string are seen."""
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from diffloss import prior\n    from ..analysis import classify\n"
                     "    from . import models\n    importlib.import_module('benchmarks.x')\n")
    assert project_imports(probe, "classifiers.probe") == {"diffloss", "analysis", "classifiers", "benchmarks"}


@pytest.mark.parametrize("package", LIBRARY)
def test_no_library_module_over_500_lines(package):
    long = [f"{p.relative_to(ROOT)}: {n}" for p in _modules(package)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
def test_documents_link_only_to_files_in_the_repository(doc):
    path = ROOT / doc
    missing = []
    for target in _LINK.findall(path.read_text(encoding="utf-8")):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (path.parent / target).exists():
            missing.append(target)
    assert not missing, f"{doc} links to files that do not exist: {missing}"
