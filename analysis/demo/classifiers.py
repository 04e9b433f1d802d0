"""The demo's small classifiers: VGG-mini and ResNet-mini trained from scratch on the built-in mini-CUB.

Shared by the Table 2 demo (``python -m analysis.classify``), the h-space quick mode and the prior's
evidence benchmark, so all of them judge images with the same networks: the shipped ones
(`analysis.demo.weights`) while the recipe matches, else trained and cached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from classifiers import CHECKPOINT_FORMAT
from classifiers.finetune import FinetuneConfig, finetune
from classifiers.finetune.loop import COMMAND, OUTPUTS
from cubdata import MINI_VERSION, cache_dir, mini_cub_root
from runkit.files import atomic_save_torch
from runkit.rundir import RunDir

from analysis.demo.weights import read_shipped, recipe_digest, shipped_info

log = logging.getLogger(__name__)

__all__ = ["DEMO_ARCHS", "DEMO_FINETUNE", "demo_classifiers", "classifier_recipe", "shipped_classifier_name",
           "digest"]

DEMO_ARCHS = ("vgg-mini", "resnet-mini")
#: From-scratch recipe of the demo's small classifiers at 64 px: the fine-tuning recipe's SGD + cosine +
#: RandomResizedCrop/flip (crop scale 0.5-1: the objects fill a small part of the image), no pretrained weights.
#: No colour jitter (``color_jitter``, off by default): in mini-CUB the class is the object's hue and form, jitter
#: lowered clean accuracy in a trial on the validation draw, and the demo's restorers leave no colour cast that
#: collapses these classifiers (the demo's collapse check names any set on which one does).
DEMO_FINETUNE = {"weights": "none", "img_size": 64, "epochs": 40, "batch_size": 12, "lr": 0.05,
                 "head_lr_mult": 1.0, "weight_decay": 5e-4, "warmup_epochs": 1.0, "crop_scale": (0.5, 1.0),
                 "loader_workers": 0, "seed": 0, "threads": 1}


def digest(obj: Any, n: int = 12) -> str:
    """Short SHA-256 of ``obj`` as sorted JSON: names cached artefacts by the settings that made them."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def classifier_recipe(arch: str, settings: dict) -> dict:
    """Everything a demo classifier's weights depend on; its `recipe_digest` names the shipped file that
    stands for it, its `digest` the cached run folder."""
    return {"arch": arch, "settings": settings, "mini": MINI_VERSION, "format": CHECKPOINT_FORMAT}


def shipped_classifier_name(arch: str) -> str:
    return f"classifier-{arch}"


def demo_checkpoint(folder: Path, arch: str, settings: dict) -> Path:
    """Where the demo trains ``arch``: a run folder named by a hash of its `classifier_recipe`, so a change of
    the recipe, the mini benchmark's version or the checkpoint format trains anew."""
    return folder / f"{arch}-{digest(classifier_recipe(arch, settings))}"


def _materialise(name: str, folder: Path) -> Path:
    """The shipped classifier ``name`` as a ``classifier.pt`` of `classifiers.finetune` (written once)."""
    info = shipped_info(name)
    dst = folder / "shipped" / f"{name}-{info['sha256'][:12]}" / "classifier.pt"
    if not dst.is_file():
        state, info = read_shipped(name)
        atomic_save_torch({"format": CHECKPOINT_FORMAT, "arch": info["arch"], "num_classes": info["num_classes"],
                           "class_names": info["class_names"], "preprocess": info["preprocess"],
                           "protocol": info["protocol"], "state_dict": state, "epoch": info["epochs"],
                           "epochs": info["epochs"], "complete": True, "clean_test_top1": info["clean_test_top1"],
                           "shipped": {"name": name, "sha256": info["sha256"]}}, dst)
    return dst


def demo_classifiers(cache: str | Path | None = None, device: str = "auto", progress: bool = True,
                     archs: Sequence[str] = DEMO_ARCHS, settings: dict | None = None,
                     retrain: bool = False) -> dict[str, Path]:
    """The demo's small classifiers: ``{arch: classifier.pt path}``.

    The shipped one (`analysis.demo.weights`, written out once under ``cache/"shipped"``) when its recipe
    (`DEMO_FINETUNE` updated with ``settings``) has the digest recorded beside the shipped file and
    ``retrain`` is False; otherwise fine-tuned from scratch on the mini-CUB train split (or reused) in
    ``cache`` (default ``cubdata.cache_dir()/"demo-classifiers"``), in a folder named by `demo_checkpoint`.
    """
    settings = dict(DEMO_FINETUNE, **(settings or {}))
    folder = Path(cache) if cache is not None else cache_dir() / "demo-classifiers"
    out = {}
    for arch in archs:
        name = shipped_classifier_name(arch)
        info = None if retrain else shipped_info(name)
        if info is not None and info.get("recipe_digest") == recipe_digest(classifier_recipe(arch, settings)):
            out[arch] = _materialise(name, folder)
            continue
        ckpt = demo_checkpoint(folder, arch, settings)
        cfg = FinetuneConfig(arch=arch, cub_root=str(mini_cub_root()), out=str(ckpt), device=device,
                             progress=progress, **settings)
        try:
            RunDir(cfg.out, COMMAND, cfg, outputs=OUTPUTS).check()
        except ValueError:
            shutil.rmtree(cfg.out)  # our own cache folder, trained with other (e.g. older default) settings
        summary = finetune(cfg)
        log.info("demo classifier %s: clean top-1 %.1f%% (%s)", arch, summary["clean_test_top1"],
                 "cached" if summary["skipped"] else f"trained in {summary['seconds']:.1f} s")
        out[arch] = Path(summary["ckpt"])
    return out
