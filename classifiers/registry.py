"""The classifier registry: one `ClassifierArch` per architecture name users type (``--arch``).

Entries are registered where each network is defined (`classifiers.models`)::

    @CLASSIFIERS.register("resnet-mini", family="resnet", head="fc", img_size=64, resize=72)
    class ResNetMini(nn.Module): ...

The decorated object builds the network with its original 1000-way ImageNet head. User code plugs in as
``"pkg.module:factory"`` (`runkit.registry.resolve_name`), a ``factory(num_classes, weights) -> nn.Module``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from runkit.registry import Registry, is_plugin_spec

__all__ = ["ClassifierArch", "ClassifierRegistry", "CLASSIFIERS", "RegistryChoices", "get_arch"]


@dataclass(frozen=True)
class ClassifierArch:
    """One registry entry. Calling it builds the network with a fresh ``num_classes``-way head.

    ``head``: dotted attribute path of the final ``nn.Linear`` (gets the higher learning rate);
    ``img_size`` / ``resize``: the default test preprocessing (resize shorter side, centre crop);
    ``imagenet``: name of the torchvision weights enum member (``None``: no pretrained weights exist).
    """

    name: str
    family: str
    build_imagenet_head: Callable[[], nn.Module] = field(repr=False)
    head: str
    img_size: int
    resize: int
    imagenet: str | None = None
    description: str = ""

    def __call__(self, num_classes: int, weights: str | os.PathLike = "none", *, download: bool = False) -> nn.Module:
        from classifiers.build import build_classifier

        return build_classifier(self.name, num_classes, weights, download=download)


def _plugin_factory(spec: str, obj: Any) -> Callable[..., nn.Module]:
    if not callable(obj):
        raise ValueError(f"classifier {spec!r} is a {type(obj).__name__}, not a factory(num_classes, weights)")
    return obj


class ClassifierRegistry(Registry[ClassifierArch]):
    """`runkit.registry.Registry` of `ClassifierArch` entries; ``register(name, **fields)`` wraps the decorated
    builder into an entry. Item access (``CLASSIFIERS["resnet50"]``, assignment, ``del``) works as on the dict
    it replaces; ``get("pkg.module:factory")`` returns the user's factory."""

    def wrap(self, name: str, obj: Any, **extra: Any) -> ClassifierArch:
        return ClassifierArch(name=name, build_imagenet_head=obj, **extra)


CLASSIFIERS = ClassifierRegistry("classifier", plugin=_plugin_factory)


def get_arch(name: str) -> ClassifierArch | None:
    """The registry entry of ``name``; ``None`` for a ``pkg.module:factory`` spec; unknown -> ValueError."""
    if name in CLASSIFIERS:
        return CLASSIFIERS[name]
    if is_plugin_spec(name):
        return None
    raise ValueError(
        f"unknown classifier architecture {name!r}; valid names: {', '.join(CLASSIFIERS.names())} "
        "(or 'pkg.module:factory' for your own)"
    )


class RegistryChoices(list):
    """argparse ``choices`` listing the registry names while also admitting ``pkg.module:factory`` specs."""

    def __contains__(self, item) -> bool:
        return list.__contains__(self, item) or (isinstance(item, str) and is_plugin_spec(item))
