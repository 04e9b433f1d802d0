"""Building classifiers: a registered backbone with its weights, then a fresh ``num_classes``-way head."""
from __future__ import annotations

import os

from torch import nn

from classifiers.registry import CLASSIFIERS, ClassifierArch
from classifiers.weights import backbone_state_dict, load_strict

__all__ = ["build_backbone", "build_classifier", "build_from_entry", "classifier_head"]


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
    """``(dotted name, module)`` of the model's final ``nn.Linear``: the ``head`` of ``arch``'s registry entry
    (registered name or ``"pkg.module:factory"``), else (no arch, or an entry without ``head``) the last
    ``nn.Linear`` in module order."""
    if arch is not None:
        return _entry_head(model, CLASSIFIERS[arch])
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise ValueError(f"cannot find the classification head: {type(model).__name__} has no nn.Linear")
    return last


def _entry_head(model: nn.Module, entry: ClassifierArch) -> tuple[str, nn.Linear]:
    if entry.head is None:
        return classifier_head(model)
    module = _get_module(model, entry.head)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"registry head {entry.head!r} of {entry.name} is {type(module).__name__}, expected nn.Linear")
    return entry.head, module  # type: ignore[return-value]


def _backbone(entry: ClassifierArch, weights: str | os.PathLike, download: bool) -> nn.Module:
    state, source = backbone_state_dict(entry, weights, download)
    model = entry.build_imagenet_head()
    if not isinstance(model, nn.Module):
        raise TypeError(f"classifier factory {entry.name!r} returned {type(model).__name__}, not an nn.Module")
    if state is not None:
        load_strict(model, state, entry.name, source)
    return model


def build_backbone(arch: str, weights: str | os.PathLike = "imagenet", *, download: bool = False) -> nn.Module:
    """The network ``arch`` (registry name or ``"pkg.module:factory"``) as its factory builds it, with its
    original (e.g. 1000-way ImageNet) head.

    ``weights``: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` weights read from the torch hub cache;
    with ``download=True`` torchvision may fetch them when they are not cached), ``"none"`` (random init)
    or a path to a state dict (loaded with ``weights_only=True``, strictly). Offline and not cached ->
    ``FileNotFoundError`` naming the expected file, the cache folder and ``--weights PATH``; nothing is
    downloaded unless ``download=True``.
    """
    return _backbone(CLASSIFIERS[arch], weights, download)


def build_from_entry(entry: ClassifierArch, num_classes: int, weights: str | os.PathLike = "none", *,
                     download: bool = False) -> nn.Module:
    """The network of ``entry`` with ``weights`` (as in `build_backbone`) and its head replaced by a freshly
    initialised ``num_classes``-way ``nn.Linear`` (``entry.head``, default the last Linear)."""
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    model = _backbone(entry, weights, download)
    head, old = _entry_head(model, entry)
    new = nn.Linear(old.in_features, int(num_classes), device=old.weight.device, dtype=old.weight.dtype)
    _set_module(model, head, new)
    return model


def build_classifier(arch: str, num_classes: int, weights: str | os.PathLike = "none", *,
                     download: bool = False) -> nn.Module:
    """``arch`` (registry name or ``"pkg.module:factory"``, built alike) with ``weights`` as in `build_backbone`
    and a freshly initialised ``num_classes``-way head. Unknown ``arch``: `runkit.registry.UnknownNameError`."""
    return CLASSIFIERS[arch](num_classes, weights, download=download)
