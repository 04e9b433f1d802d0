"""Building classifiers: a registered backbone with its weights, then a fresh ``num_classes``-way head."""
from __future__ import annotations

import os

from torch import nn

from classifiers.registry import CLASSIFIERS, get_arch
from classifiers.weights import backbone_state_dict, load_strict

__all__ = ["build_backbone", "build_classifier", "classifier_head"]


def _get_module(model: nn.Module, dotted: str) -> nn.Module:
    m = model
    for part in dotted.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)  # type: ignore[index]
    return m


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_path, _, last = dotted.rpartition(".")
    parent = _get_module(model, parent_path) if parent_path else model
    if last.isdigit():
        parent[int(last)] = new  # type: ignore[index]
    else:
        setattr(parent, last, new)


def classifier_head(model: nn.Module, arch: str | None = None) -> tuple[str, nn.Linear]:
    """``(dotted name, module)`` of the model's final ``nn.Linear`` (the registry's ``head`` for built-in
    architectures, else the last Linear in module order)."""
    if arch in CLASSIFIERS:
        head = CLASSIFIERS[arch].head  # type: ignore[index]
        return head, _get_module(model, head)  # type: ignore[return-value]
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise ValueError(f"cannot find the classification head: {type(model).__name__} has no nn.Linear")
    return last


def build_backbone(arch: str, weights: str | os.PathLike = "imagenet", *, download: bool = False) -> nn.Module:
    """The network ``arch`` with its original 1000-way ImageNet head.

    ``weights``: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` weights read from the torch hub cache;
    with ``download=True`` torchvision may fetch them when they are not cached), ``"none"`` (random init)
    or a path to a state dict (loaded with ``weights_only=True``, strictly). Offline and not cached ->
    ``FileNotFoundError`` naming the expected file, the cache folder and ``--weights PATH``; nothing is
    downloaded unless ``download=True``.
    """
    entry = get_arch(arch)
    if entry is None:
        raise ValueError(f"build_backbone supports the registry architectures ({', '.join(CLASSIFIERS.names())}), "
                         f"got {arch!r}")
    state, source = backbone_state_dict(entry, weights, download)
    model = entry.build_imagenet_head()
    if state is not None:
        load_strict(model, state, arch, source)
    return model


def build_classifier(arch: str, num_classes: int, weights: str | os.PathLike = "none", *,
                     download: bool = False) -> nn.Module:
    """``arch`` (registry name or ``"pkg.module:factory"``) with a freshly initialised ``num_classes``-way
    head; ``weights`` as in `build_backbone` (user factories receive it unchanged)."""
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    entry = get_arch(arch)
    if entry is None:
        model = CLASSIFIERS.get(arch)(int(num_classes), str(weights))
        if not isinstance(model, nn.Module):
            raise TypeError(f"classifier factory {arch!r} returned {type(model).__name__}, not an nn.Module")
        return model
    model = build_backbone(arch, weights, download=download)
    old = _get_module(model, entry.head)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"registry head {entry.head!r} of {arch} is {type(old).__name__}, expected nn.Linear")
    new = nn.Linear(old.in_features, int(num_classes), device=old.weight.device, dtype=old.weight.dtype)
    _set_module(model, entry.head, new)
    return model
