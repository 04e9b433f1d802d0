"""Image classifiers for Table 2: the registry, backbones with ImageNet weights, and checkpoint loading.

``CLASSIFIERS`` maps the architecture names users type (``--arch``) to factories::

    model = CLASSIFIERS["resnet50"](num_classes=200, weights="imagenet")   # new 200-way head

* ``"vgg16"``, ``"resnet50"``: the torchvision networks the paper fine-tunes; ``weights`` is
  ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` enum, read from the torch hub cache), a local ``.pth``
  path (an ImageNet state dict, e.g. the file torchvision would download) or ``"none"`` (random init, on
  purpose only).
* ``"vgg-mini"``, ``"resnet-mini"``: small members of the same families (3x3 conv stacks + max-pool + FC
  head; basic residual blocks + global pool + linear head), for the built-in mini benchmark. They have no
  pretrained weights and train from scratch on CPU in seconds.
* User code registers the same way (``@CLASSIFIERS.register("name", head=..., img_size=...)``) or plugs in
  as ``"pkg.module:factory"``: either way a factory ``() -> nn.Module`` building the network with its
  original head, which `build_classifier` replaces with a ``num_classes``-way one (a plug-in's head: its
  last ``nn.Linear``).

Every model takes ImageNet-normalised ``float NCHW`` input (see `eval_transform`) and returns logits.
A fine-tuned checkpoint (written by `classifiers.finetune`) records the architecture, the class names, the
preprocessing, the protocol it was trained and measured on (whole images, or box crops as in URIE's CUB-C:
`eval_protocol`, `protocol_transform`) and the clean test top-1; `load_classifier` rebuilds the model from it.

Modules: `registry` (`CLASSIFIERS`, `ClassifierArch`), `models` (the registered networks),
`weights` (ImageNet enums, weight files, strict loading), `build` (backbone + new head), `preprocess`
(transforms and protocols), `checkpoint` (`load_classifier`), `predict` (batched inference), `finetune` (CLI).
"""
from classifiers.build import build_backbone, build_classifier, classifier_head
from classifiers.checkpoint import CHECKPOINT_FORMAT, checkpoint_protocol, load_classifier, read_checkpoint
from classifiers.models import ResNetMini, VGGMini
from classifiers.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    URIE_BBOX_SIZE,
    default_preprocess,
    describe_protocol,
    eval_protocol,
    eval_transform,
    parse_bbox_size,
    protocol_preprocess,
    protocol_transform,
    train_transform,
)
from classifiers.registry import CLASSIFIERS, ClassifierArch
from classifiers.weights import imagenet_weights_file, load_strict, read_weights_file

__all__ = [
    "CLASSIFIERS",
    "CHECKPOINT_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassifierArch",
    "ResNetMini",
    "VGGMini",
    "build_backbone",
    "build_classifier",
    "checkpoint_protocol",
    "classifier_head",
    "URIE_BBOX_SIZE",
    "default_preprocess",
    "describe_protocol",
    "eval_protocol",
    "eval_transform",
    "imagenet_weights_file",
    "load_classifier",
    "load_strict",
    "parse_bbox_size",
    "protocol_preprocess",
    "protocol_transform",
    "read_checkpoint",
    "read_weights_file",
    "train_transform",
]
