"""The demo's shipped weights: its classifiers and restorers as ``NAME.safetensors`` (float16) + ``NAME.json``.

Shipped as the built-in prior is (`diffloss.prior.builtin`): each ``.json`` records the exact command that
made the weights, the recipe (settings, seeds, step counts) with its digest, and the SHA-256 of the
``.safetensors`` file, which `read_shipped` checks. A shipped file stands for one *recipe*: the demo uses it
only while the recipe it would train (`analysis.demo.classifiers.classifier_recipe`,
`analysis.demo.restorers.restorer_recipe`) has the digest recorded beside it; otherwise it trains (cached).
``python -m analysis.demo.ship`` rebuilds every file from scratch.

Before use a shipped file is written out, once, as the checkpoint its loader reads (``classifier.pt`` of
`classifiers.finetune`, ``ckpt.pt`` of `restoration.train`) under ``cache_dir()/demo-weights/``, so the rest of
the pipeline (`restoration.restore`, `analysis.classify`) reads it like any trained run.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import safetensors.torch
import torch

from runkit.files import atomic_write_bytes, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

__all__ = ["WEIGHTS_DIR", "SHIPPED_FORMAT", "recipe_digest", "shipped_path", "shipped_info", "read_shipped",
           "write_shipped", "shipped_names"]

#: Where the shipped weights live (package data, see pyproject.toml).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: ``format`` of every shipped ``.json``.
SHIPPED_FORMAT = "diffloss-demo-weights/1"


def recipe_digest(recipe: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 16 characters) of ``recipe`` as sorted JSON: the name of what a recipe trains."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shipped_path(name: str, folder: Path | None = None) -> Path:
    """``folder/NAME.safetensors`` (default folder `WEIGHTS_DIR`)."""
    return Path(folder or WEIGHTS_DIR) / f"{name}.safetensors"


def shipped_names(folder: Path | None = None) -> list[str]:
    """Names of the shipped files in ``folder`` (default `WEIGHTS_DIR`), sorted."""
    return sorted(p.stem for p in Path(folder or WEIGHTS_DIR).glob("*.json") if p.with_suffix(".safetensors").is_file())


def shipped_info(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    """The ``.json`` of shipped file ``name`` (None when it is not shipped)."""
    path = shipped_path(name, folder).with_suffix(".json")
    if not path.is_file() or not shipped_path(name, folder).is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    if info.get("format") != SHIPPED_FORMAT:
        raise ValueError(f"{path}: format {info.get('format')!r}, expected {SHIPPED_FORMAT!r}; rebuild the demo "
                         "weights with python -m analysis.demo.ship")
    return info


def read_shipped(name: str, folder: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict in float32, info)`` of shipped file ``name``; ValueError when the file's SHA-256 is not the
    one its ``.json`` records (a damaged or mismatched export), FileNotFoundError when it is not shipped."""
    info = shipped_info(name, folder)
    path = shipped_path(name, folder)
    if info is None:
        raise FileNotFoundError(f"demo weights {path} (and its .json) not found; rebuild them with "
                                "python -m analysis.demo.ship, or run the demo with --retrain")
    digest = sha256_file(path)
    if digest != info["sha256"]:
        raise ValueError(f"{path} has SHA-256 {digest[:12]}..., but {path.with_suffix('.json').name} records "
                         f"{info['sha256'][:12]}...: the file is damaged or from another export; reinstall the "
                         "package or rebuild with python -m analysis.demo.ship")
    tensors = safetensors.torch.load_file(str(path), device="cpu")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}, info


def write_shipped(name: str, state_dict: Mapping[str, torch.Tensor], info: Mapping[str, Any],
                  folder: Path | None = None) -> Path:
    """Write ``state_dict`` (floating tensors as float16) to ``folder/NAME.safetensors`` and ``info`` plus
    ``format``, ``dtype`` and the file's ``sha256`` to ``NAME.json``; both atomic, weights first. Returns the
    ``.safetensors`` path."""
    path = shipped_path(name, folder)
    tensors = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in state_dict.items()}
    data = safetensors.torch.save(tensors)
    atomic_write_bytes(path, data)
    record = {"format": SHIPPED_FORMAT, **dict(info), "dtype": "float16",
              "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path
