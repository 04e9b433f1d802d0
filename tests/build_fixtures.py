"""Fixtures and helpers shared by the builder's tests (tests/test_build.py, tests/test_build_safety.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cubdata import generate_mini_cub

__all__ = ["REPO", "small_root", "snapshot", "tree_bytes"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """2 classes x 4 images (2 test per class): 4 test images."""
    root = tmp_path_factory.mktemp("small-cub") / "CUB_200_2011"
    generate_mini_cub(root, n_classes=2, per_class=4)
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tree_bytes(out: Path) -> dict[str, bytes]:
    """Every image file under ``out`` (relative path -> bytes)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("images/*/*")) if p.is_file()}
