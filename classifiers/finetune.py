"""Fine-tune an ImageNet classifier (VGG16 / ResNet50) on the clean CUB-200-2011 training split.

Recipe (defaults): SGD with momentum 0.9 and weight decay 1e-4, batch 32, lr 2e-3 on the pretrained body
and 10x (2e-2) on the new 200-way head, one epoch of linear warm-up then a cosine decay to zero over 50
epochs; training images RandomResizedCrop(448, scale 0.25-1) + horizontal flip; test images resized to 512
and centre-cropped to 448; ImageNet mean/std. Mixed precision on CUDA. On real CUB this should reach about
85-87% top-1 for ResNet50 and 75-80% for VGG16 at 448 px (HaoMood/fine-grained-baseline: 85.99 / 78.79).

``--bbox-crop`` trains and measures on bounding-box crops instead, the protocol `analysis.classify
--bbox-crop` scores with (URIE's CUB-C): every image is cropped to its CUB box first; training then applies
RandomResizedCrop(CROP) + flip, testing resizes the box to RESIZE x RESIZE and centre-crops CROP
(``--bbox-size RESIZE,CROP``, default 256,227).

The checkpoint (``--out``, written atomically after every epoch) records the architecture, the class
names, the preprocessing, the protocol (``{"bbox_crop", "bbox_size"}``) and, once training has finished,
the clean test top-1; ``--resume`` continues an interrupted run from its last epoch. Several GPUs:
``torchrun --nproc_per_node N -m classifiers.finetune ...`` (DDP; ``--batch-size`` is per process).

    python -m classifiers.finetune --arch resnet50 --cub-root data/CUB_200_2011 --out ckpt/resnet50.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from cubdata import CubDataset, atomic_save_torch, read_cub

from . import (
    CHECKPOINT_FORMAT,
    CLASSIFIERS,
    URIE_BBOX_SIZE,
    build_classifier,
    classifier_head,
    default_preprocess,
    describe_protocol,
    eval_protocol,
    get_arch,
    parse_bbox_size,
    protocol_preprocess,
    protocol_transform,
)
from .predict import evaluate_top1, make_loader, resolve_device

log = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "RegistryChoices", "finetune", "run_preprocess", "train_transform", "build_parser",
           "main"]


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
    """

    arch: str
    cub_root: str
    out: str
    weights: str = "imagenet"
    img_size: int | None = None
    bbox_crop: bool = False
    bbox_size: tuple[int, int] | None = URIE_BBOX_SIZE
    epochs: int = 50
    batch_size: int = 32
    lr: float = 2e-3
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    crop_scale: tuple[float, float] = (0.25, 1.0)
    label_smoothing: float = 0.0
    workers: int = 4
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    download: bool = False
    eval_every: int = 0
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
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
            size = parse_bbox_size(self.bbox_size)
            if size is not None and self.img_size is not None and int(self.img_size) != size[1]:
                s = int(self.img_size)
                raise ValueError(
                    f"--img-size {s} conflicts with --bbox-size {size[0]},{size[1]}: with --bbox-crop the network "
                    f"trains and is tested at the box protocol's crop size ({size[1]}); pass --bbox-size "
                    f"{round(s * 256 / 227)},{s} (URIE's ratio) or --bbox-size classifier, or drop --img-size")

    def training_key(self) -> dict[str, Any]:
        """The fields that change the trained weights (used to check a resumed run and to key caches)."""
        skip = {"out", "workers", "device", "resume", "overwrite", "progress", "download", "eval_every", "threads"}
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


def train_transform(preprocess: dict[str, Any], crop_scale=(0.25, 1.0)):
    """PIL RGB image -> augmented ``[3, S, S]`` normalised float tensor: RandomResizedCrop(S, crop_scale)
    + horizontal flip (S = ``preprocess["img_size"]``). Randomness comes from torch's RNG (seeded per
    DataLoader worker from the loader's generator)."""
    from torchvision import transforms as T

    return T.Compose([
        T.RandomResizedCrop(int(preprocess["img_size"]), scale=tuple(crop_scale),
                            interpolation=T.InterpolationMode(preprocess.get("interpolation", "bilinear"))),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(preprocess["mean"], preprocess["std"]),
    ])


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def _class_names(index) -> list[str]:
    ids = sorted(index.classes)
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(f"{index.root}/classes.txt: class ids must be 1..K without gaps, found {ids[:5]}...")
    return [index.classes[i] for i in ids]


def _read_existing(out: Path) -> dict[str, Any] | None:
    if not out.is_file():
        return None
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{out} exists but is not a classifier checkpoint; choose another --out")
    return ckpt


def finetune(config: FinetuneConfig, on_epoch_end: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume, or skip if already finished) the fine-tuning described by ``config``.

    Writes the checkpoint ``config.out`` after every epoch (atomically) and returns a summary dict:
    ``ckpt`` (path), ``arch``, ``epochs``, ``clean_test_top1`` (percent), ``seconds`` (this call's training
    time), ``skipped`` (True when a finished checkpoint with the same settings was reused).
    ``on_epoch_end(epoch, record)`` is called on rank 0 after each epoch's checkpoint is saved.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) trains with DDP; only rank 0 writes.
    """
    config.validate()
    out = Path(config.out)
    world, rank, local_rank = _dist_info()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        device = resolve_device(config.device)

    existing = _read_existing(out)
    if existing is not None:
        same = existing.get("training_key") == _jsonable(config.training_key())
        if config.overwrite:
            existing = None
        elif not config.resume:
            raise FileExistsError(
                f"{out} already exists ({'finished' if existing.get('complete') else 'unfinished'} run, epoch "
                f"{existing.get('epoch')} of {existing.get('epochs')}); pass --resume to continue or reuse it, "
                "--overwrite to start again, or another --out"
            )
        elif not same:
            diff = {k: (existing.get("training_key", {}).get(k), v)
                    for k, v in _jsonable(config.training_key()).items()
                    if existing.get("training_key", {}).get(k) != v}
            raise ValueError(f"cannot resume {out}: its settings differ (saved, requested): {diff}; "
                             "use the same settings, --overwrite, or another --out")
        elif existing.get("complete"):
            log.info("%s is finished (clean test top-1 %.2f%%); nothing to do", out, existing["clean_test_top1"])
            return {"ckpt": str(out), "arch": config.arch, "epochs": existing["epochs"],
                    "clean_test_top1": existing["clean_test_top1"], "seconds": 0.0, "skipped": True}

    index = read_cub(config.cub_root)
    class_names = _class_names(index)
    preprocess, protocol = run_preprocess(config)
    # with bbox_crop both splits are cropped to their boxes before the transforms (missing boxes: ValueError)
    train_set = CubDataset(index, "train", transform=train_transform(preprocess, config.crop_scale),
                           bbox_crop=protocol["bbox_crop"])
    test_set = CubDataset(index, "test", transform=protocol_transform(preprocess, protocol),
                          bbox_crop=protocol["bbox_crop"])
    if len(train_set) == 0 or len(test_set) == 0:
        raise ValueError(f"{index.root} has {len(train_set)} train and {len(test_set)} test images; need both")

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        # Library code never touches the caller's global RNG: fork it, seed the fork, restore on exit.
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(config.seed)
            # a resumed run loads its own weights: no need for the pretrained file again
            weights = "none" if existing is not None else config.weights
            model = build_classifier(config.arch, len(class_names), weights, download=config.download)
            if rank > 0:
                # other augmentation draws per process (DDP copies rank 0's initial weights to every rank)
                torch.manual_seed(config.seed + rank)
            return _train(config, model, index, class_names, preprocess, protocol, train_set, test_set, device,
                          existing, distributed, rank, world, on_epoch_end)
    finally:
        torch.set_num_threads(old_threads)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _train(config, model, index, class_names, preprocess, protocol, train_set, test_set, device, existing,
           distributed, rank, world, on_epoch_end):
    out = Path(config.out)
    head_name, head = classifier_head(model, config.arch if config.arch in CLASSIFIERS else None)
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.SGD(
        [{"params": body, "lr": config.lr},
         {"params": list(head.parameters()), "lr": config.lr * config.head_lr_mult}],
        momentum=config.momentum, weight_decay=config.weight_decay,
    )
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    loader_gen = torch.Generator().manual_seed(config.seed + rank)  # per-rank worker seeds under DDP
    sampler = None
    if distributed:
        sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                                      seed=config.seed, drop_last=True)
    drop_last = len(train_set) >= 2 * config.batch_size
    loader = make_loader(train_set, config.batch_size, config.workers, device, shuffle=True,
                         generator=loader_gen, sampler=sampler, drop_last=drop_last)
    steps_per_epoch = max(1, len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(config.epochs * steps_per_epoch, int(round(config.warmup_epochs * steps_per_epoch))))
    use_amp = bool(config.amp) and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    start_epoch, history = 0, []
    if existing is not None:  # resume
        model.load_state_dict(existing["state_dict"])
        opt.load_state_dict(existing["optimizer"])
        sched.load_state_dict(existing["scheduler"])
        if existing.get("scaler"):
            scaler.load_state_dict(existing["scaler"])
        rng = existing["rng"]
        start_epoch, history = int(existing["epoch"]), list(existing.get("history", []))
        if rank == 0:  # the checkpoint holds rank 0's RNG streams; other ranks draw fresh ones
            torch.set_rng_state(rng["torch"])
            loader_gen.set_state(rng["loader"])
            if device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"], device)
        else:
            torch.manual_seed(config.seed + 1000 * start_epoch + rank)
            loader_gen.manual_seed(config.seed + 1000 * start_epoch + rank)
        log.info("resuming %s at epoch %d of %d", out, start_epoch + 1, config.epochs)

    train_model: nn.Module = model
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    if rank == 0:
        log.info("fine-tuning %s (%s weights, head %s) on %s: %d train / %d test images, %d classes, %d px, "
                 "%s, %d epochs, device %s%s", config.arch, config.weights, head_name, index.root, len(train_set),
                 len(test_set), len(class_names), preprocess["img_size"], describe_protocol(protocol), config.epochs,
                 device,
                 f", DDP x{world}" if distributed else "")
    t_start = time.perf_counter()
    base = {
        "format": CHECKPOINT_FORMAT, "arch": config.arch, "num_classes": len(class_names),
        "class_names": class_names, "preprocess": preprocess, "protocol": protocol, "weights": str(config.weights),
        "config": _jsonable(dataclasses.asdict(config)), "training_key": _jsonable(config.training_key()),
        "epochs": config.epochs, "cub_root": str(index.root),
    }
    top1 = None
    from tqdm.auto import tqdm

    for epoch in range(start_epoch, config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch",
                   disable=not config.progress or rank != 0)
        for x, y, _ in bar:
            x = x.to(device, non_blocking=True)
            y = torch.as_tensor(y).to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        totals = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=device)])
        if distributed:  # epoch statistics over all processes
            import torch.distributed as dist

            dist.all_reduce(totals)
        loss_total, correct_total, seen_total = (float(v) for v in totals)
        record = {"epoch": epoch + 1, "train_loss": loss_total / max(1.0, seen_total),
                  "train_top1": correct_total / max(1.0, seen_total) * 100.0, "lr": opt.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - t0}
        final = epoch + 1 == config.epochs
        if rank == 0 and (final or (config.eval_every and (epoch + 1) % config.eval_every == 0)):
            record["test_top1"] = evaluate_top1(model, test_set, device, batch_size=config.batch_size,
                                                workers=config.workers)
            top1 = record["test_top1"] if final else None
        history.append(record)
        if rank == 0:
            log.info("epoch %d/%d: loss %.4f, train top-1 %.1f%%%s (%.1fs)", epoch + 1, config.epochs,
                     record["train_loss"], record["train_top1"],
                     f", test top-1 {record['test_top1']:.2f}%" if "test_top1" in record else "", record["seconds"])
            ckpt = dict(base)
            ckpt.update({
                "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
                # a finished run needs no optimizer state (halves the file: SGD momentum = one more model)
                "optimizer": None if final else opt.state_dict(), "scheduler": None if final else sched.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": {"torch": torch.get_rng_state(), "loader": loader_gen.get_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "epoch": epoch + 1, "history": history, "complete": final, "clean_test_top1": top1,
            })
            atomic_save_torch(ckpt, out)
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    seconds = time.perf_counter() - t_start
    if top1 is None and history and "test_top1" in history[-1]:
        top1 = history[-1]["test_top1"]
    return {"ckpt": str(out), "arch": config.arch, "epochs": config.epochs, "clean_test_top1": top1,
            "seconds": seconds, "skipped": False}


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
class RegistryChoices(list):
    """argparse ``choices`` listing the registry names while also admitting ``pkg.module:factory`` specs."""

    def __contains__(self, item) -> bool:
        return list.__contains__(self, item) or (isinstance(item, str) and ":" in item)


def _bbox_size_arg(text: str) -> tuple[int, int] | None:
    try:
        return parse_bbox_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    from cubdata.cli import HelpFormatter, default_workers

    d = FinetuneConfig(arch="resnet50", cub_root="", out="")
    p = argparse.ArgumentParser(prog="python -m classifiers.finetune", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--arch", required=True, choices=RegistryChoices(CLASSIFIERS),
                   help="architecture: a registry name or 'pkg.module:factory' for your own")
    p.add_argument("--cub-root", required=True, help="the clean CUB_200_2011 folder (train split is used)")
    p.add_argument("--out", required=True, help="checkpoint file to write (rewritten after every epoch)")
    p.add_argument("--weights", default=d.weights,
                   help="'imagenet' (torchvision enum, from the torch hub cache), a local .pth state dict, "
                        "or 'none' to train from scratch on purpose")
    p.add_argument("--download", action="store_true", help="let torchvision download missing ImageNet weights")
    p.add_argument("--img-size", type=int, default=d.img_size,
                   help="training/test crop size (448 or 224 for the paper's nets); default: the arch's")
    p.add_argument("--bbox-crop", action="store_true",
                   help="train and test on images cropped to their CUB bounding boxes (URIE's CUB-C protocol, "
                        "as python -m analysis.classify --bbox-crop scores)")
    p.add_argument("--bbox-size", type=_bbox_size_arg, default=d.bbox_size, metavar="RESIZE,CROP",
                   help="with --bbox-crop: test by resizing the box to RESIZE x RESIZE and centre-cropping CROP (also "
                        "the training crop size); 'classifier': the arch's own sizes (or --img-size's)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="number of epochs (cosine schedule length)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per step (per process under DDP)")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate of the pretrained body")
    p.add_argument("--head-lr-mult", type=float, default=d.head_lr_mult, help="head lr = lr x this")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay")
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs, help="linear warm-up length")
    p.add_argument("--crop-scale", type=float, nargs=2, default=list(d.crop_scale), metavar=("LOW", "HIGH"),
                   help="RandomResizedCrop area range")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="cross-entropy smoothing")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="DataLoader worker processes per process (0: load in the main process)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=d.amp,
                   help="mixed precision on CUDA (bf16 where supported, else fp16 + grad scaling)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of init, shuffling and augmentation")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="also measure test top-1 every N epochs (0: only at the end)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished --out (or reuse a finished one)")
    p.add_argument("--overwrite", action="store_true", help="start again even if --out exists")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    config = FinetuneConfig(
        arch=args.arch, cub_root=args.cub_root, out=args.out, weights=args.weights, img_size=args.img_size,
        bbox_crop=args.bbox_crop, bbox_size=args.bbox_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr_mult=args.head_lr_mult,
        momentum=args.momentum, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
        crop_scale=tuple(args.crop_scale), label_smoothing=args.label_smoothing, workers=args.workers,
        device=args.device, amp=args.amp, seed=args.seed, download=args.download, eval_every=args.eval_every,
        threads=args.threads or None,
        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
    )
    try:
        summary = finetune(config)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        verb = "reused" if summary["skipped"] else f"trained in {summary['seconds']:.0f}s"
        print(f"{summary['arch']}: clean test top-1 {summary['clean_test_top1']:.2f}% ({verb}) -> {summary['ckpt']}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
