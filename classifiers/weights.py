"""Pretrained weights of the registered architectures: torchvision's ImageNet enums (read from the torch hub
cache; downloaded only on request), local state-dict files, and strict loading that says what does not fit."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from runkit.files import load_torch_file, unwrap_state_dict

from classifiers.registry import CLASSIFIERS, ClassifierArch

log = logging.getLogger(__name__)

__all__ = ["imagenet_weights_file", "read_weights_file", "load_strict", "backbone_state_dict"]


def _weights_enum(entry: ClassifierArch):
    import torchvision.models as tvm

    enum_name, member = entry.imagenet.split(".")  # type: ignore[union-attr]
    return getattr(getattr(tvm, enum_name), member)


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision's ImageNet weights of ``arch`` live in the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/<file>``; e.g. ``resnet50-0676ba61.pth``)."""
    entry = CLASSIFIERS[arch]
    if entry.imagenet is None:
        raise ValueError(f"architecture {arch!r} has no ImageNet weights; use weights='none' or a path")
    url = _weights_enum(entry).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict (name -> tensor) in the file ``path``: a bare state dict or one under ``"state_dict"``,
    DataParallel/DDP ``module.`` prefixes dropped. Loaded with ``weights_only=True``; an unreadable file or one
    that holds something else -> one-line ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = load_torch_file(path, "weights file (a state dict of tensors)")
    return unwrap_state_dict(obj, path, wrappers=("state_dict",))


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], arch: str, source: str) -> None:
    """``model.load_state_dict(state, strict=True)``, after a check whose ValueError counts (and shows a few of)
    the missing keys, unexpected keys and shape mismatches: usually a checkpoint of another architecture."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(state[k].shape)}"
              for k in own if k in state and own[k].shape != state[k].shape]
    detail = [f"{len(found)} {what} (e.g. {found[:n]})"
              for what, found, n in (("missing keys", missing, 3), ("unexpected keys", unexpected, 3),
                                     ("shape mismatches", shapes, 2)) if found]
    if detail:
        raise ValueError(
            f"the weights in {source} do not fit architecture {arch!r}: {'; '.join(detail)}. "
            "Is it a checkpoint of another architecture?"
        )
    model.load_state_dict(state, strict=True)


def _imagenet_state_dict(entry: ClassifierArch, download: bool) -> tuple[dict[str, torch.Tensor], str]:
    if entry.imagenet is None:
        raise ValueError(
            f"architecture {entry.name!r} has no ImageNet-pretrained weights; train it from scratch with "
            "--weights none, or pass --weights PATH to a state dict of this architecture"
        )
    enum = _weights_enum(entry)
    cached = imagenet_weights_file(entry.name)
    if cached.is_file():
        log.info("loading ImageNet weights of %s from %s", entry.name, cached)
        return read_weights_file(cached), str(cached)
    if not download:
        # checked before anything could reach the network: torchvision would download silently
        raise FileNotFoundError(
            f"ImageNet weights for {entry.name} not found: expected {cached.name} in the torch hub cache "
            f"{cached.parent} (set TORCH_HOME to move it). Get the file from {enum.url} and either put it "
            f"there or pass --weights PATH (a local copy of {cached.name}); pass --download to let "
            "torchvision fetch it, or --weights none to train from scratch on purpose."
        )
    log.info("downloading ImageNet weights of %s from %s", entry.name, enum.url)
    return enum.get_state_dict(progress=True, check_hash=True), enum.url


def backbone_state_dict(entry: ClassifierArch, weights: str | os.PathLike,
                        download: bool = False) -> tuple[dict[str, torch.Tensor] | None, str]:
    """``(state dict, where it came from)`` for ``weights`` = ``"imagenet"`` (hub cache; fetched only with
    ``download``), ``"none"`` (``(None, "none")``: random init) or a path to a state-dict file. Missing files
    -> FileNotFoundError naming the file and the ways out, before any network is built."""
    w = str(weights)
    if w == "none":
        return None, w
    if w == "imagenet":
        return _imagenet_state_dict(entry, download)
    path = Path(w).expanduser()
    if not path.is_file():
        hint = (f"e.g. torchvision's {imagenet_weights_file(entry.name).name} from {_weights_enum(entry).url}"
                if entry.imagenet else "a state dict of this architecture")
        raise FileNotFoundError(
            f"weights file {path} not found (arch {entry.name}). Pass an existing state dict file ({hint}), "
            "or --weights imagenet / none."
        )
    log.info("loading %s weights from %s", entry.name, path)
    return read_weights_file(path), str(path)
