"""The classifier registry: one `ClassifierArch` per architecture name users type (``--arch``).

Entries are registered where each network is defined (`classifiers.models`)::

    @CLASSIFIERS.register("resnet-mini", family="resnet", head="fc", img_size=64, resize=72)
    class ResNetMini(nn.Module): ...

The contract, the same for a registered entry and a plug-in ``"pkg.module:factory"``
(`runkit.registry.resolve_name`): the decorated (or named) object is a factory called with no arguments that
builds the network with its original head (1000-way for an ImageNet model). `build_classifier` loads the
weights into that network and replaces the head with a fresh ``num_classes``-way ``nn.Linear``. A plug-in
gets `ClassifierArch`'s defaults: the head is the last ``nn.Linear``, 224 px test crops, no ImageNet weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from runkit.registry import Registry, is_plugin_spec

__all__ = ["ClassifierArch", "ClassifierRegistry", "CLASSIFIERS", "RegistryChoices"]


@dataclass(frozen=True)
class ClassifierArch:
    """One registry entry. Calling it builds the network with a fresh ``num_classes``-way head.

    ``build_imagenet_head``: the factory, ``() -> nn.Module`` with its original head;
    ``head``: dotted attribute path of that final ``nn.Linear`` (replaced, and trained at a higher learning
    rate; ``None``: the last ``nn.Linear`` in module order); ``img_size`` / ``resize``: the default test
    preprocessing (resize shorter side, centre crop); ``imagenet``: name of the torchvision weights enum member
    (``None``: no pretrained weights exist); ``family``, ``description``: for people reading the registry.
    """

    name: str
    build_imagenet_head: Callable[[], nn.Module] = field(repr=False)
    family: str = ""
    head: str | None = None
    img_size: int = 224
    resize: int = 256
    imagenet: str | None = None
    description: str = ""

    def __call__(self, num_classes: int, weights: str | os.PathLike = "none", *, download: bool = False) -> nn.Module:
        """The network with ``weights`` (``"imagenet"``, ``"none"`` or a state-dict path of the factory's
        network) and a fresh ``num_classes``-way head (`classifiers.build.build_from_entry`)."""
        from classifiers.build import build_from_entry

        return build_from_entry(self, num_classes, weights, download=download)


def _plugin_entry(spec: str, obj: Any) -> ClassifierArch:
    if not callable(obj):
        raise TypeError(f"classifier {spec!r} is a {type(obj).__name__}, not a factory () -> nn.Module")
    return ClassifierArch(name=spec, build_imagenet_head=obj, family="plug-in")


class ClassifierRegistry(Registry[ClassifierArch]):
    """`runkit.registry.Registry` of `ClassifierArch` entries; ``register(name, **fields)`` wraps the decorated
    factory into an entry, and ``CLASSIFIERS["pkg.module:factory"]`` wraps a plug-in the same way."""

    def wrap(self, name: str, obj: Any, **extra: Any) -> ClassifierArch:
        return ClassifierArch(name=name, build_imagenet_head=obj, **extra)


CLASSIFIERS = ClassifierRegistry("classifier", plugin=_plugin_entry)


class RegistryChoices(list):
    """argparse ``choices`` listing the registry names while also admitting ``pkg.module:factory`` specs."""

    def __contains__(self, item) -> bool:
        return list.__contains__(self, item) or (isinstance(item, str) and is_plugin_spec(item))
