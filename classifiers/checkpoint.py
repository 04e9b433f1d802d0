"""Classifier checkpoints written by `classifiers.finetune`: the format tag, reading one back as a frozen model.

A checkpoint is a dict (``torch.save``, tensors and plain values only) with ``format`` = `CHECKPOINT_FORMAT`,
``arch``, ``num_classes``, ``class_names``, ``preprocess``, ``protocol``, ``state_dict``, ``epoch``/``epochs``,
``complete`` and ``clean_test_top1``; unfinished runs also hold the optimiser, scheduler and RNG states.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runkit.files import load_torch_file

from classifiers.build import build_classifier
from classifiers.preprocess import eval_protocol
from classifiers.weights import load_strict

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "read_checkpoint", "checkpoint_protocol", "load_classifier"]

CHECKPOINT_FORMAT = "diffloss-toolkit/classifier-v1"
_WHAT = "classifier checkpoint of this toolkit (python -m classifiers.finetune)"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict at ``path`` (``weights_only=True``); ValueError when the file is not one of ours."""
    ckpt = load_torch_file(path, _WHAT)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a classifier checkpoint of this toolkit (expected format {CHECKPOINT_FORMAT!r}, "
            f"found {found!r}); write one with python -m classifiers.finetune"
        )
    return ckpt


def checkpoint_protocol(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """The protocol a checkpoint was trained and measured on (`eval_protocol`'s dict)."""
    raw = ckpt.get("protocol")
    if not isinstance(raw, dict) or "bbox_crop" not in raw:
        raise ValueError(f"checkpoint {path}: 'protocol' must be a mapping with bbox_crop and bbox_size, found {raw!r}")
    return eval_protocol(bool(raw["bbox_crop"]), raw.get("bbox_size"))


def load_classifier(ckpt_path: str | os.PathLike, device: str | torch.device = "cpu", *,
                    expect_arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned classifier from a `classifiers.finetune` run folder or its ``classifier.pt``.

    Returns ``(model, info)``: the model in eval mode with ``requires_grad_(False)`` on ``device``; ``info``
    holds ``arch``, ``num_classes``, ``class_names`` (index = 0-based label), ``preprocess`` (``img_size``,
    ``resize``, ``mean``, ``std``, ``interpolation``), ``protocol`` (what it was trained and measured on,
    `eval_protocol`'s dict), ``clean_test_top1`` (percent or None),
    ``epoch``, ``complete`` and ``path``. ``expect_arch`` (e.g. the name a user gave) must match the recorded arch.
    """
    path = Path(ckpt_path)
    if path.is_dir():
        path = path / "classifier.pt"  # a python -m classifiers.finetune run folder
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier checkpoint {path} not found; train one with "
            "`python -m classifiers.finetune --arch resnet50 --cub-root CUB_200_2011 --out runs/resnet50` and pass "
            "the run folder (or its classifier.pt)"
        )
    ckpt = read_checkpoint(path)
    arch = ckpt["arch"]
    if expect_arch is not None and expect_arch != arch:
        raise ValueError(f"checkpoint {path} holds a {arch!r} classifier, but {expect_arch!r} was expected")
    if not ckpt.get("complete", True):
        log.warning("checkpoint %s is from an unfinished run (epoch %s of %s)", path, ckpt.get("epoch"),
                    ckpt.get("epochs"))
    model = build_classifier(arch, int(ckpt["num_classes"]), "none")
    load_strict(model, ckpt["state_dict"], arch, str(path))
    model = model.to(device).eval().requires_grad_(False)
    info = {
        "arch": arch,
        "num_classes": int(ckpt["num_classes"]),
        "class_names": list(ckpt["class_names"]),
        "preprocess": dict(ckpt["preprocess"]),
        "protocol": checkpoint_protocol(ckpt, path),
        "clean_test_top1": ckpt.get("clean_test_top1"),
        "epoch": ckpt.get("epoch"),
        "epochs": ckpt.get("epochs"),
        "complete": bool(ckpt.get("complete", True)),
        "path": str(path),
    }
    return model, info
