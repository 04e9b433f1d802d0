"""The demo's small classifiers: VGG-mini and ResNet-mini trained from scratch on the built-in mini-CUB.

Shared by the Table 2 demo (``python -m analysis.classify``), the h-space quick mode and the prior's
evidence benchmark, so all of them judge images with the same cached networks.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from classifiers import CHECKPOINT_FORMAT
from classifiers.finetune import FinetuneConfig, finetune
from cubdata import MINI_VERSION, cache_dir, mini_cub_root

log = logging.getLogger(__name__)

__all__ = ["DEMO_ARCHS", "DEMO_FINETUNE", "demo_classifiers", "digest"]

DEMO_ARCHS = ("vgg-mini", "resnet-mini")
#: From-scratch recipe of the demo's small classifiers (same SGD + cosine + RandomResizedCrop/flip recipe
#: as the real one, without pretrained weights, at 64 px).
DEMO_FINETUNE = {"weights": "none", "img_size": 64, "epochs": 40, "batch_size": 12, "lr": 0.05,
                 "head_lr_mult": 1.0, "weight_decay": 5e-4, "warmup_epochs": 1.0, "crop_scale": (0.5, 1.0),
                 "loader_workers": 0, "seed": 0, "threads": 1}


def digest(obj: Any, n: int = 12) -> str:
    """Short SHA-256 of ``obj`` as sorted JSON: names cached artefacts by the settings that made them."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def demo_checkpoint(folder: Path, arch: str, settings: dict) -> Path:
    """Where the demo keeps ``arch``'s run folder: named by a hash of the recipe, the mini benchmark's
    version and the checkpoint format, so a change of any of them trains anew."""
    key = digest({"arch": arch, "settings": settings, "mini": MINI_VERSION, "format": CHECKPOINT_FORMAT})
    return folder / f"{arch}-{key}"


def demo_classifiers(cache: str | Path | None = None, device: str = "auto", progress: bool = True,
                     archs: Sequence[str] = DEMO_ARCHS, settings: dict | None = None) -> dict[str, Path]:
    """Fine-tune (or reuse) the demo's small classifiers from scratch on the mini-CUB train split.

    Checkpoints live under ``cache`` (default ``cubdata.cache_dir()/"demo-classifiers"``), named by
    `demo_checkpoint`. ``settings`` override `DEMO_FINETUNE`'s. Returns ``{arch: classifier.pt path}``.
    """
    settings = dict(DEMO_FINETUNE, **(settings or {}))
    folder = Path(cache) if cache is not None else cache_dir() / "demo-classifiers"
    mini = mini_cub_root()
    out = {}
    for arch in archs:
        ckpt = demo_checkpoint(folder, arch, settings)
        cfg = FinetuneConfig(arch=arch, cub_root=str(mini), out=str(ckpt), device=device, progress=progress,
                             **settings)
        summary = finetune(cfg)
        log.info("demo classifier %s: clean top-1 %.1f%% (%s)", arch, summary["clean_test_top1"],
                 "cached" if summary["skipped"] else f"trained in {summary['seconds']:.1f} s")
        out[arch] = Path(summary["ckpt"])
    return out
