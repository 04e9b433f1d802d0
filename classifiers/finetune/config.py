"""The settings of a fine-tuning run (`FinetuneConfig`): one dataclass field per command-line option of
``python -m classifiers.finetune`` (`runkit.options.option`), checked by ``validate()`` before any work."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from runkit.checks import fraction, nonnegative_int, nonnegative_number, positive_int, positive_number
from runkit.options import LoaderOptions, RunOptions, option

from classifiers.preprocess import NO_COLOR_JITTER, URIE_BBOX_SIZE, default_preprocess, eval_protocol, parse_bbox_size, protocol_preprocess
from classifiers.registry import CLASSIFIERS

__all__ = ["FinetuneConfig", "run_preprocess", "jsonable"]


def _bbox_size_arg(text: str) -> tuple[int, int] | None:
    try:
        return parse_bbox_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclass(kw_only=True)
class FinetuneConfig(RunOptions, LoaderOptions):
    """Everything that defines a fine-tuning run (``config.json`` and the checkpoint record it).

    ``img_size=None`` uses the architecture's default (448 for vgg16/resnet50, 64 for the mini nets).
    ``lr`` applies to the pretrained body, ``lr * head_lr_mult`` to the new head. ``crop_scale`` is the
    RandomResizedCrop area range. ``eval_every`` > 0 measures top-1 on the held-out ``val_fraction`` of the
    train split every that many epochs (the test split is read only once, for the final test top-1). ``bbox_crop``: train and test on images cropped to their CUB boxes;
    the test transform resizes the box to ``bbox_size[0]`` square and centre-crops ``bbox_size[1]`` (which is
    then also the training crop size; ``bbox_size=None``: the arch's / ``img_size``'s own sizes).
    """

    arch: str = option(required=True, result=True, help="architecture: a registry name or 'pkg.module:factory' "
                                                        "for your own")
    cub_root: str = option(required=True, result=True, help="the clean CUB root (its train split is used)")
    out: str = option(required=True, help="run folder (classifier.pt, rewritten after every epoch; log.csv)")
    weights: str = option("imagenet", result=True, help="'imagenet' (torchvision enum, from the torch hub cache), "
                          "a local .pth state dict, or 'none' to train from scratch on purpose")
    img_size: int | None = option(None, result=True, help="training/test crop size (448 or 224 for the paper's "
                                                          "nets); default: the arch's")
    bbox_crop: bool = option(False, result=True, help="train and test on images cropped to their CUB bounding "
                             "boxes (URIE's CUB-C protocol, as python -m analysis.classify --bbox-crop scores)")
    bbox_size: tuple[int, int] | None = option(
        URIE_BBOX_SIZE, parse=_bbox_size_arg, metavar="RESIZE,CROP", result=True,
        help="with --bbox-crop: test by resizing the box to RESIZE x RESIZE and centre-cropping CROP (also the "
             "training crop size); 'classifier': the arch's own sizes (or --img-size's)")
    epochs: int = option(50, check=positive_int, result=True, help="number of epochs (cosine schedule length)")
    batch_size: int = option(32, check=positive_int, result=True, help="images per step (per process under DDP)")
    lr: float = option(2e-3, check=positive_number, result=True, help="SGD learning rate of the pretrained body")
    head_lr_mult: float = option(10.0, check=positive_number, result=True, help="head lr = lr x this")
    momentum: float = option(0.9, check=fraction(zero=True, one=False), result=True, help="SGD momentum")
    weight_decay: float = option(1e-4, check=nonnegative_number, result=True, help="SGD weight decay")
    warmup_epochs: float = option(1.0, check=nonnegative_number, result=True, help="linear warm-up length")
    crop_scale: tuple[float, float] = option((0.25, 1.0), parse=float, nargs=2, metavar=("LOW", "HIGH"),
                                             result=True, help="RandomResizedCrop area range")
    color_jitter: tuple[float, float, float, float] = option(
        NO_COLOR_JITTER, parse=float, nargs=4, metavar=("B", "C", "S", "H"), result=True,
        help="colour jitter of the training images: brightness, contrast, saturation in [0, 1) (factor drawn from "
             "[1 - v, 1 + v]) and hue in [0, 0.5] (shift, in turns); all 0 (default): off")
    label_smoothing: float = option(0.0, check=fraction(zero=True, one=False), result=True,
                                    help="cross-entropy smoothing")
    amp: bool = option(True, result=True, help="mixed precision on CUDA (bf16 where supported, else fp16 + "
                       "grad scaling)", negative_help="train in fp32 on CUDA too")
    seed: int = option(0, check=nonnegative_int, result=True, help="seed of init, shuffling and augmentation")
    download: bool = option(False, help="let torchvision download missing ImageNet weights")
    val_fraction: float = option(0.0, check=fraction(zero=True, one=False), result=True,
                                 help="hold out this fraction of the train split (class-stratified, seeded by --seed) "
                                      "for --eval-every; 0: train on all of it")
    eval_every: int = option(0, check=nonnegative_int, help="measure top-1 on the held-out part of the train split "
                                                           "(--val-fraction) every N epochs (0: never); the test "
                                                           "split is scored once, at the end")

    def __post_init__(self) -> None:
        self.crop_scale = tuple(self.crop_scale)
        self.color_jitter = tuple(self.color_jitter)

    def check(self) -> None:
        """ValueError naming the first bad setting (unknown arch: the valid names)."""
        CLASSIFIERS[self.arch]  # unknown names -> an error listing the valid ones
        if self.eval_every and not self.val_fraction:
            raise ValueError("--eval-every measures the held-out part of the train split: pass --val-fraction too "
                             "(e.g. 0.1); the test split is scored only at the end")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"--crop-scale must satisfy 0 < LOW <= HIGH <= 1, got {lo} {hi}")
        *bcs, hue = self.color_jitter
        if not all(0 <= v < 1 for v in bcs) or not 0 <= hue <= 0.5:
            raise ValueError(f"--color-jitter needs brightness, contrast, saturation in [0, 1) and hue in [0, 0.5], "
                             f"got {' '.join(f'{v:g}' for v in self.color_jitter)}")
        if self.bbox_crop:
            self._check_bbox_size()

    def _check_bbox_size(self) -> None:
        size = parse_bbox_size(self.bbox_size)
        if size is not None and self.img_size is not None and int(self.img_size) != size[1]:
            s = int(self.img_size)
            raise ValueError(
                f"--img-size {s} conflicts with --bbox-size {size[0]},{size[1]}: with --bbox-crop the network "
                f"trains and is tested at the box protocol's crop size ({size[1]}); pass --bbox-size "
                f"{round(s * 256 / 227)},{s} (URIE's ratio) or --bbox-size classifier, or drop --img-size")

    def result_settings(self) -> dict[str, Any]:
        """The settings that change the trained weights; the box sizes only count with box crops."""
        key = super().result_settings()
        if not self.bbox_crop:
            key.pop("bbox_size")
        return key


def run_preprocess(config: FinetuneConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(preprocess, protocol)`` of a run, as its checkpoint records them: the arch's preprocessing at
    ``img_size`` (or, with box crops at set sizes, at ``bbox_size``) and `classifiers.eval_protocol`'s dict
    with the box sizes resolved (never None when ``bbox_crop``)."""
    protocol = eval_protocol(config.bbox_crop, config.bbox_size)
    size = protocol["bbox_size"][1] if protocol["bbox_size"] else config.img_size
    preprocess = protocol_preprocess(default_preprocess(config.arch, size), protocol)
    if protocol["bbox_crop"]:
        protocol["bbox_size"] = [int(preprocess["resize"]), int(preprocess["img_size"])]
    return preprocess, protocol


def jsonable(obj):
    """``obj`` with tuples turned into lists (recursively), as it reads back from a checkpoint."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
