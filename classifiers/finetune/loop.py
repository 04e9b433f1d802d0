"""The fine-tuning loop behind ``python -m classifiers.finetune``: `finetune(config)` and its steps.

The shape of every training loop of the toolkit (`restoration.train.loop`, `diffloss.prior.train.loop`):
check the run folder (`runkit.rundir.RunDir`: new, resumable or finished), check every input and build the
model, then the first write (``config.json``), the steps with a checkpoint per epoch (``classifier.pt``,
atomic; ``log.csv``), and ``done.json``. SGD with a 10x head learning rate, linear warm-up then cosine decay,
the clean test top-1 at the end. Under torchrun (``WORLD_SIZE`` > 1) it trains with DDP (`runkit.distributed`); only rank 0
evaluates and writes. The caller's global RNG state is left untouched (the run seeds a fork of it).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cubdata import CubDataset, CubIndex, read_cub, require_decodable, train_val_split
from runkit.files import atomic_save_torch
from runkit.distributed import barrier, distributed, on_rank0
from runkit.rundir import RunDir
from runkit.runtime import torch_threads

from classifiers.build import build_classifier, classifier_head
from classifiers.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from classifiers.finetune.config import FinetuneConfig, run_preprocess
from classifiers.predict import evaluate_top1, make_loader, resolve_device, top1_percent
from classifiers.preprocess import describe_protocol, protocol_transform, train_transform

log = logging.getLogger(__name__)

__all__ = ["finetune", "lr_lambda", "COMMAND", "CHECKPOINT_NAME", "OUTPUTS", "LOG_FIELDS"]

COMMAND = "classifiers.finetune"
#: The checkpoint inside the run folder (`classifiers.checkpoint.load_classifier` takes the folder or the file).
CHECKPOINT_NAME = "classifier.pt"
OUTPUTS = (CHECKPOINT_NAME, "log.csv")
#: Columns of ``log.csv``: one row per epoch.
LOG_FIELDS = ("epoch", "train_loss", "train_top1", "val_top1", "test_top1", "lr", "seconds")


def lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor of step ``step``: linear warm-up over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps``."""
    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


# --------------------------------------------------------------------------------------------------------------
# before training: the output file, the data
# --------------------------------------------------------------------------------------------------------------
def _existing_checkpoint(run_dir: RunDir) -> dict[str, Any] | None:
    """The checkpoint of the run ``run_dir`` continues (None: a fresh run); `RunDir.check` has already
    refused a folder with other settings."""
    path = run_dir.file(CHECKPOINT_NAME)
    if not run_dir.resuming or not path.is_file():
        return None
    try:
        return read_checkpoint(path)
    except ValueError:
        raise ValueError(f"{path} is not a classifier checkpoint this toolkit can read; pass --overwrite to start "
                         "again") from None


def _class_names(index: CubIndex) -> list[str]:
    ids = sorted(index.classes)
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(f"{index.root}/classes.txt: class ids must be 1..K without gaps, found {ids[:5]}...")
    return [index.classes[i] for i in ids]


@dataclass
class _Data:
    index: CubIndex
    class_names: list[str]
    preprocess: dict[str, Any]
    protocol: dict[str, Any]
    train_set: CubDataset
    test_set: CubDataset
    val_set: CubDataset | None = None


def _load_data(config: FinetuneConfig) -> _Data:
    index = read_cub(config.cub_root)
    preprocess, protocol = run_preprocess(config)
    # with bbox_crop both splits are cropped to their boxes before the transforms (missing boxes: ValueError)
    train_records, val_records = train_val_split(index, config.val_fraction, config.seed)
    train_set = CubDataset(index, "train", transform=train_transform(preprocess, config.crop_scale, config.color_jitter),
                           bbox_crop=protocol["bbox_crop"], records=train_records)
    test_set = CubDataset(index, "test", transform=protocol_transform(preprocess, protocol),
                          bbox_crop=protocol["bbox_crop"])
    val_set = (CubDataset(index, "train", transform=protocol_transform(preprocess, protocol),
                          bbox_crop=protocol["bbox_crop"], records=val_records) if val_records else None)
    if len(train_set) == 0 or len(test_set) == 0:
        raise ValueError(f"{index.root} has {len(train_set)} train and {len(test_set)} test images; need both")
    return _Data(index, _class_names(index), preprocess, protocol, train_set, test_set, val_set)


def finetune(config: FinetuneConfig, on_epoch_end: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
    """Run (or resume, or skip if already finished) the fine-tuning described by ``config``.

    Writes ``classifier.pt`` in the run folder ``config.out`` after every epoch (atomically) and returns a
    summary dict: ``ckpt`` (path), ``arch``, ``epochs``, ``clean_test_top1`` (percent), ``seconds`` (this
    call's training time), ``skipped`` (True when a finished run with the same settings was reused).
    ``on_epoch_end(epoch, record)`` is called on rank 0 after each epoch's checkpoint is saved.
    Under ``torchrun`` (``WORLD_SIZE`` > 1) trains with DDP; only rank 0 writes.
    """
    config.validate()
    run_dir = RunDir(config.out, COMMAND, config, outputs=OUTPUTS).check()
    with distributed(str(resolve_device(config.device))) as (rank, world, device):
        existing = _existing_checkpoint(run_dir)
        if existing is not None and existing.get("complete"):
            log.info("%s is finished (clean test top-1 %.2f%%); nothing to do", config.out,
                     existing["clean_test_top1"])
            return {"ckpt": str(run_dir.file(CHECKPOINT_NAME)), "arch": config.arch, "epochs": existing["epochs"],
                    "clean_test_top1": existing["clean_test_top1"], "seconds": 0.0, "skipped": True}
        data = _load_data(config)
        # every image decoded once before the first write: a broken one is one line naming it, not a worker's
        # traceback in the middle of an epoch
        sets = [d for d in (data.train_set, data.val_set, data.test_set) if d is not None]
        on_rank0(lambda: require_decodable([data.index.image_path(r) for d in sets for r in d.records],
                                           desc="checking images",
                                           progress=config.progress and rank == 0), rank, world)
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        # Library code never touches the caller's global RNG: fork it, seed the fork, restore on exit.
        with torch_threads(config.threads), torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(config.seed)
            # a resumed run loads its own weights: no need for the pretrained file again
            weights = "none" if existing is not None else config.weights
            model = build_classifier(config.arch, len(data.class_names), weights, download=config.download)
            if rank > 0:
                # other augmentation draws per process (DDP copies rank 0's initial weights to every rank)
                torch.manual_seed(config.seed + rank)
            run = _Run.start(config, run_dir, model, data, device, rank, world)
            if rank == 0:
                run_dir.start(clear=OUTPUTS)
            summary = run.train(existing, on_epoch_end)
            if rank == 0:
                run_dir.finish(summary)
            return summary


# --------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------
def _optimizer(model: nn.Module, config: FinetuneConfig) -> tuple[torch.optim.Optimizer, str]:
    """SGD with two groups: the pretrained body at ``lr``, the new head at ``lr * head_lr_mult``."""
    head_name, head = classifier_head(model, config.arch)
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.SGD(
        [{"params": body, "lr": config.lr},
         {"params": list(head.parameters()), "lr": config.lr * config.head_lr_mult}],
        momentum=config.momentum, weight_decay=config.weight_decay,
    )
    return opt, head_name


@dataclass
class _Run:
    """The state of one training run on one process (rank ``rank`` of ``world``)."""

    config: FinetuneConfig
    run_dir: RunDir
    data: _Data
    model: nn.Module
    head_name: str
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loader: torch.utils.data.DataLoader
    sampler: torch.utils.data.DistributedSampler | None
    loader_gen: torch.Generator
    device: torch.device
    use_amp: bool
    amp_dtype: torch.dtype
    rank: int
    world: int

    @classmethod
    def start(cls, config: FinetuneConfig, run_dir: RunDir, model: nn.Module, data: _Data, device: torch.device,
              rank: int, world: int) -> "_Run":
        opt, head_name = _optimizer(model, config)
        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        loader_gen = torch.Generator().manual_seed(config.seed + rank)  # per-rank worker seeds under DDP
        sampler = None
        if world > 1:
            sampler = torch.utils.data.DistributedSampler(data.train_set, num_replicas=world, rank=rank,
                                                          shuffle=True, seed=config.seed, drop_last=True)
        drop_last = len(data.train_set) >= 2 * config.batch_size
        loader = make_loader(data.train_set, config.batch_size, config.loader_workers, device, shuffle=True,
                             generator=loader_gen, sampler=sampler, drop_last=drop_last)
        steps_per_epoch = max(1, len(loader))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(config.epochs * steps_per_epoch, int(round(config.warmup_epochs * steps_per_epoch))))
        use_amp = bool(config.amp) and device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        return cls(config, run_dir, data, model, head_name, opt, sched, scaler, loader, sampler, loader_gen, device,
                   use_amp, amp_dtype, rank, world)

    def resume(self, existing: dict[str, Any]) -> tuple[int, list[dict]]:
        """Load an unfinished checkpoint's weights, optimiser, schedule and RNG streams; ``(epoch, history)``."""
        self.model.load_state_dict(existing["state_dict"])
        self.opt.load_state_dict(existing["optimizer"])
        self.sched.load_state_dict(existing["scheduler"])
        if existing.get("scaler"):
            self.scaler.load_state_dict(existing["scaler"])
        rng, start_epoch = existing["rng"], int(existing["epoch"])
        if self.rank == 0:  # the checkpoint holds rank 0's RNG streams; other ranks draw fresh ones
            torch.set_rng_state(rng["torch"])
            self.loader_gen.set_state(rng["loader"])
            if self.device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
        else:
            torch.manual_seed(self.config.seed + 1000 * start_epoch + self.rank)
            self.loader_gen.manual_seed(self.config.seed + 1000 * start_epoch + self.rank)
        log.info("resuming %s at epoch %d of %d", self.config.out, start_epoch + 1, self.config.epochs)
        return start_epoch, list(existing.get("history", []))

    def train_epoch(self, train_model: nn.Module, epoch: int) -> dict[str, Any]:
        """One pass over the training loader; the epoch's loss and top-1 over all processes."""
        cfg, device = self.config, self.device
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        train_model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="batch",
                   disable=not cfg.progress or self.rank != 0)
        for x, y, _ in bar:
            x = x.to(device, non_blocking=True)
            y = torch.as_tensor(y).to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                logits = train_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        totals = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=device)])
        if self.world > 1:  # epoch statistics over all processes
            import torch.distributed as dist

            dist.all_reduce(totals)
        loss_total, correct_total, seen_total = (float(v) for v in totals)
        return {"epoch": epoch + 1, "train_loss": loss_total / max(1.0, seen_total),
                "train_top1": top1_percent(correct_total, max(1.0, seen_total)),
                "lr": self.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}

    def checkpoint_fields(self) -> dict[str, Any]:
        """What every checkpoint of this run records besides the training state."""
        cfg, d = self.config, self.data
        return {
            "format": CHECKPOINT_FORMAT, "arch": cfg.arch, "num_classes": len(d.class_names),
            "class_names": d.class_names, "preprocess": d.preprocess, "protocol": d.protocol,
            "weights": str(cfg.weights), "config": cfg.settings(), "epochs": cfg.epochs,
            "cub_root": str(d.index.root),
        }

    def training_state(self, final: bool) -> dict[str, Any]:
        """Weights, optimiser/schedule/scaler and RNG states (a finished run keeps the weights alone)."""
        device = self.device
        return {
            "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()},
            # a finished run needs no optimizer state (halves the file: SGD momentum = one more model)
            "optimizer": None if final else self.opt.state_dict(),
            "scheduler": None if final else self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": {"torch": torch.get_rng_state(), "loader": self.loader_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }

    def log_start(self) -> None:
        cfg, d = self.config, self.data
        log.info("fine-tuning %s (%s weights, head %s) on %s: %d train / %d test images, %d classes, %d px, "
                 "%s, %d epochs, device %s%s", cfg.arch, cfg.weights, self.head_name, d.index.root,
                 len(d.train_set), len(d.test_set), len(d.class_names), d.preprocess["img_size"],
                 describe_protocol(d.protocol), cfg.epochs, self.device,
                 f", DDP x{self.world}" if self.world > 1 else "")

    def train(self, existing: dict[str, Any] | None,
              on_epoch_end: Callable[[int, dict], None] | None) -> dict[str, Any]:
        """Epochs from where ``existing`` stopped (or 0) to the end; returns `finetune`'s summary."""
        cfg = self.config
        start_epoch, history = self.resume(existing) if existing is not None else (0, [])
        train_model: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.rank == 0:
            self.log_start()
        t_start = time.perf_counter()
        fields, top1 = self.checkpoint_fields(), None
        for epoch in range(start_epoch, cfg.epochs):
            record = self.train_epoch(train_model, epoch)
            final = epoch + 1 == cfg.epochs
            if self.rank == 0 and self.data.val_set is not None and cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
                record["val_top1"] = evaluate_top1(self.model, self.data.val_set, self.device,
                                                   batch_size=cfg.batch_size, workers=cfg.loader_workers)
            if self.rank == 0 and final:
                record["test_top1"] = evaluate_top1(self.model, self.data.test_set, self.device,
                                                    batch_size=cfg.batch_size, workers=cfg.loader_workers)
                top1 = record["test_top1"]
            history.append(record)
            if self.rank == 0:
                self.save(fields, epoch, record, history, final, top1)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, record)
        barrier(self.world)
        if top1 is None and history and "test_top1" in history[-1]:
            top1 = history[-1]["test_top1"]
        return {"ckpt": str(self.run_dir.file(CHECKPOINT_NAME)), "arch": cfg.arch, "epochs": cfg.epochs, "clean_test_top1": top1,
                "seconds": time.perf_counter() - t_start, "skipped": False}

    def save(self, fields: dict[str, Any], epoch: int, record: dict[str, Any], history: list[dict], final: bool,
             top1: float | None) -> None:
        """Log the epoch and write the checkpoint atomically (rank 0)."""
        cfg = self.config
        log.info("epoch %d/%d: loss %.4f, train top-1 %.1f%%%s%s (%.1fs)", epoch + 1, cfg.epochs,
                 record["train_loss"], record["train_top1"],
                 f", val top-1 {record['val_top1']:.2f}%" if "val_top1" in record else "",
                 f", test top-1 {record['test_top1']:.2f}%" if "test_top1" in record else "", record["seconds"])
        ckpt = dict(fields, **self.training_state(final))
        ckpt.update({"epoch": epoch + 1, "history": history, "complete": final, "clean_test_top1": top1})
        atomic_save_torch(ckpt, self.run_dir.file(CHECKPOINT_NAME))
        self.run_dir.write_table("log.csv", history, LOG_FIELDS, float_format=".6g")
