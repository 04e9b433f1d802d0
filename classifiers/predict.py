"""Batched inference over a CUB split: the scoring loop shared by fine-tuning (clean test accuracy) and
`analysis.classify` (Table 2).

Images stream through a `torch.utils.data.DataLoader` (worker processes decode and transform; pinned
memory on CUDA), every batch goes once to the device and through each model under ``inference_mode``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from runkit.process import loader_worker_init

log = logging.getLogger(__name__)

__all__ = ["resolve_device", "make_loader", "predict", "top1_percent", "evaluate_top1"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else is passed to `torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def make_loader(dataset, batch_size: int, workers: int, device: torch.device, *, shuffle: bool = False,
                generator: torch.Generator | None = None, sampler=None, drop_last: bool = False,
                persistent: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader with ``workers`` processes (0 = in the main process; each dies with this process, even
    killed by SIGKILL: `runkit.process.loader_worker_init`), pinned memory on CUDA and a prefetch depth of 4
    batches per worker."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if generator is None:
        # a private generator: building the iterator then never draws from (and shifts) torch's global RNG
        generator = torch.Generator().manual_seed(0)
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(prefetch_factor=4, persistent_workers=persistent, worker_init_fn=loader_worker_init())
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, pin_memory=device.type == "cuda", drop_last=drop_last, generator=generator, **kw,
    )


def predict(models: Mapping[str, nn.Module] | nn.Module, loader, device: torch.device | str = "cpu", *,
            desc: str | None = None, progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Top-1 predictions of every model on every batch of ``loader`` (yielding ``(images [B,3,H,W] float,
    labels [B] int, image_ids [B] int)``).

    Returns ``{name: {"pred": int64[N], "label": int64[N], "image_id": int64[N]}}`` in loader order (a single
    model is returned under the name ``"model"``). Models are used as given (call ``.eval()`` first).
    """
    if isinstance(models, nn.Module):
        models = {"model": models}
    device = torch.device(device)
    preds: dict[str, list[torch.Tensor]] = {k: [] for k in models}
    labels: list[torch.Tensor] = []
    ids: list[torch.Tensor] = []
    channels_last = device.type == "cuda"
    with torch.inference_mode():
        for x, y, image_id in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for name, model in models.items():
                preds[name].append(model(x).argmax(1).to("cpu", non_blocking=True))
            labels.append(torch.as_tensor(y))
            ids.append(torch.as_tensor(image_id))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    label_arr = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64)
    id_arr = torch.cat(ids).numpy().astype(np.int64) if ids else np.zeros(0, np.int64)
    return {
        name: {"pred": (torch.cat(p).numpy().astype(np.int64) if p else np.zeros(0, np.int64)),
               "label": label_arr, "image_id": id_arr}
        for name, p in preds.items()
    }


def top1_percent(correct: float, total: float) -> float:
    """Top-1 accuracy in percent: ``100 * correct / total`` (``total`` > 0 predictions, ``correct`` of them right).
    The one accuracy formula of the package (clean test top-1 and the training epochs' top-1)."""
    if not total > 0:
        raise ValueError(f"top-1 needs at least one prediction, got total {total}")
    if not 0 <= correct <= total:
        raise ValueError(f"correct predictions must lie in [0, total], got {correct} of {total}")
    return 100.0 * float(correct) / float(total)


def evaluate_top1(model: nn.Module, dataset, device: torch.device | str = "cpu", batch_size: int = 64,
                  workers: int = 0, progress: bool = False) -> float:
    """Top-1 accuracy in percent (0-100) of ``model`` on ``dataset`` (items ``(image, label, image_id)``).
    The model is put in eval mode for the pass and its previous mode restored."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        out = predict(model, make_loader(dataset, batch_size, workers, device), device, desc="eval",
                      progress=progress)["model"]
    finally:
        model.train(was_training)
    if len(out["label"]) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return top1_percent(int((out["pred"] == out["label"]).sum()), len(out["label"]))
