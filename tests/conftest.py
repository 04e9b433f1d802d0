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


@pytest.fixture(scope="session")
def mini_root_unreadable_test(mini_root, tmp_path_factory) -> Path:
    """A copy of the mini benchmark whose every test-split image is replaced by bytes no decoder reads: code
    that trains, validates or sweeps on it must never notice (the test split is read only by evaluation)."""
    import shutil

    from cubdata import read_cub

    dst = tmp_path_factory.mktemp("unreadable-test") / "cub"
    shutil.copytree(mini_root, dst)
    index = read_cub(dst)
    for rec in index.split("test"):
        index.image_path(rec).write_bytes(b"not an image")
    return dst


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests: small convolutions gain nothing from two OpenMP
    threads, and on a shared, oversubscribed 2-core machine they lose up to 20x (spin-waiting). The suite's
    setting is restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The tiny classifiers' recipe, shared by tests/test_classifiers.py and tests/test_classify.py: one training per
# session, cached where the demo caches its classifiers, so the fast demo test reuses them too.
TINY_CLASSIFIER_SETTINGS = {"img_size": 48, "epochs": 14, "batch_size": 12, "lr": 0.05, "threads": 1}


@pytest.fixture(scope="session")
def tiny_ckpts(mini_root):
    """{arch: checkpoint path} of the mini benchmark's two small classifiers (trained once per session)."""
    from analysis.demo.classifiers import demo_classifiers
    from cubdata import cache_dir

    return demo_classifiers(cache_dir() / "demo-classifiers", device="cpu", progress=False,
                            settings=TINY_CLASSIFIER_SETTINGS)
