"""The settings of a fine-tuning run (`FinetuneConfig`): one dataclass field per command-line option of
``python -m classifiers.finetune`` (`runkit.cli.option`), checked by ``validate()`` before any work."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from runkit.cli import option

from classifiers.preprocess import URIE_BBOX_SIZE, default_preprocess, eval_protocol, parse_bbox_size, protocol_preprocess
from classifiers.registry import get_arch

__all__ = ["FinetuneConfig", "run_preprocess", "jsonable"]

#: Fields that do not change the trained weights (left out of `FinetuneConfig.training_key`).
_RUN_ONLY = frozenset({"out", "workers", "device", "resume", "overwrite", "progress", "download", "eval_every",
                       "threads"})


def _bbox_size_arg(text: str) -> tuple[int, int] | None:
    try:
        return parse_bbox_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning run (saved in the checkpoint under ``"config"``).

    ``img_size=None`` uses the architecture's default (448 for vgg16/resnet50, 64 for the mini nets).
    ``lr`` applies to the pretrained body, ``lr * head_lr_mult`` to the new head. ``crop_scale`` is the
    RandomResizedCrop area range. ``workers`` DataLoader processes per GPU/process. ``eval_every`` > 0 also
    measures test top-1 every that many epochs (the final test top-1 is always measured). ``threads``: torch
    intra-op threads during the run (restored afterwards; ``None`` leaves torch's setting alone; 1 is the
    fastest for the tiny mini nets on a busy CPU). ``bbox_crop``: train and test on images cropped to their
    CUB boxes; the test transform resizes the box to ``bbox_size[0]`` square and centre-crops ``bbox_size[1]``
    (which is then also the training crop size; ``bbox_size=None``: the arch's / ``img_size``'s own sizes).

    ``arch``, ``crop_scale`` and ``amp`` are command-line options written by hand in `classifiers.finetune`
    (registry choices that admit plugins, two values, ``--amp/--no-amp``); every other field is generated.
    """

    arch: str
    cub_root: str = option(help="the clean CUB_200_2011 folder (train split is used)")
    out: str = option(help="checkpoint file to write (rewritten after every epoch)")
    weights: str = option("imagenet", help="'imagenet' (torchvision enum, from the torch hub cache), a local .pth "
                                           "state dict, or 'none' to train from scratch on purpose")
    img_size: int | None = option(None, help="training/test crop size (448 or 224 for the paper's nets); "
                                             "default: the arch's")
    bbox_crop: bool = option(False, help="train and test on images cropped to their CUB bounding boxes (URIE's "
                                         "CUB-C protocol, as python -m analysis.classify --bbox-crop scores)")
    bbox_size: tuple[int, int] | None = option(
        URIE_BBOX_SIZE, parse=_bbox_size_arg, metavar="RESIZE,CROP",
        help="with --bbox-crop: test by resizing the box to RESIZE x RESIZE and centre-cropping CROP (also the "
             "training crop size); 'classifier': the arch's own sizes (or --img-size's)")
    epochs: int = option(50, help="number of epochs (cosine schedule length)")
    batch_size: int = option(32, help="images per step (per process under DDP)")
    lr: float = option(2e-3, help="SGD learning rate of the pretrained body")
    head_lr_mult: float = option(10.0, help="head lr = lr x this")
    momentum: float = option(0.9, help="SGD momentum")
    weight_decay: float = option(1e-4, help="SGD weight decay")
    warmup_epochs: float = option(1.0, help="linear warm-up length")
    crop_scale: tuple[float, float] = (0.25, 1.0)
    label_smoothing: float = option(0.0, help="cross-entropy smoothing")
    workers: int = option(4, help="DataLoader worker processes per process (0: load in the main process)")
    device: str = option("auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    amp: bool = True
    seed: int = option(0, help="seed of init, shuffling and augmentation")
    download: bool = option(False, help="let torchvision download missing ImageNet weights")
    eval_every: int = option(0, help="also measure test top-1 every N epochs (0: only at the end)")
    threads: int | None = option(None, cli_default=0, help="torch CPU threads (0: torch's choice)")
    resume: bool = option(False, help="continue an unfinished --out (or reuse a finished one)")
    overwrite: bool = option(False, help="start again even if --out exists")
    progress: bool = option(True, help="progress bars", negative_help="disable progress bars (shown by default)")

    def validate(self) -> None:
        """ValueError naming the first bad setting (unknown arch: the valid names)."""
        get_arch(self.arch)  # unknown names -> ValueError listing the valid ones
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0 or not self.head_lr_mult > 0:
            raise ValueError(f"lr and head_lr_mult must be > 0, got {self.lr}, {self.head_lr_mult}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
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

    def training_key(self) -> dict[str, Any]:
        """The fields that change the trained weights (used to check a resumed run and to key caches)."""
        skip = set(_RUN_ONLY)
        if not self.bbox_crop:  # whole images: the key runs had before the protocol existed (caches stay valid)
            skip |= {"bbox_crop", "bbox_size"}
        key = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        if self.bbox_crop:
            key["bbox_size"] = parse_bbox_size(self.bbox_size)
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
