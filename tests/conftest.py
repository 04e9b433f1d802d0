"""Shared fixtures. Every fixture is generated here; nothing is downloaded."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Keep the suite predictable on a 2-core machine and isolate caches from the user's home.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory) -> Path:
    """Point $DIFFLOSS_CACHE at a per-session temp folder so tests never touch ~/.cache."""
    cache = tmp_path_factory.mktemp("diffloss-cache")
    old = os.environ.get("DIFFLOSS_CACHE")
    os.environ["DIFFLOSS_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("DIFFLOSS_CACHE", None)
    else:
        os.environ["DIFFLOSS_CACHE"] = old


@pytest.fixture(scope="session")
def mini_root(_isolated_cache) -> Path:
    """The built-in mini benchmark (10 classes x 12 images, CUB layout), generated once per session.
    Treat it as read-only; copy it (shutil.copytree) before modifying."""
    from cubdata import mini_cub_root

    return mini_cub_root()
