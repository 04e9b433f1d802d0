"""Restoration checkpoints (``ckpt.pt`` of ``python -m restoration.train``): the format, reading and writing.

Used by the training loop (write, resume, ``--init``) and by the restorer (read); neither imports the other.
A checkpoint is a dict of tensors and plain values, read with ``torch.load(weights_only=True)`` only:
``format`` (`CKPT_FORMAT`), ``net``/``net_kwargs`` (a `restoration.nets.NETS` name or ``pkg.module:factory``
and its keyword arguments), ``state_dict``, ``optimizer``, ``step``, ``world_size``, ``config`` (the
`TrainConfig` as a dict), ``rng`` (the per-rank generator states), ``val``, ``final`` and versions.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from runkit.files import atomic_save_torch, load_torch_file

from restoration.nets import build_net, pad_multiple_of
from runkit.runtime import count_parameters

__all__ = ["CKPT_FORMAT", "checkpoint_path", "read_checkpoint_file", "load_checkpoint", "save_checkpoint"]

CKPT_FORMAT = "diffloss-restoration/1"


def checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/ckpt.pt`` when ``path`` is a run folder."""
    path = Path(path)
    return path / "ckpt.pt" if path.is_dir() else path


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """The object in a checkpoint file (``weights_only=True``); a truncated or garbage file becomes one
    ValueError naming it (torch's own message would advise ``weights_only=False``, an unsafe load)."""
    return load_torch_file(path, what="restoration checkpoint this toolkit can read; pass a ckpt.pt written by "
                                      "python -m restoration.train, or delete the broken file and train again")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a restoration checkpoint (a ``ckpt.pt`` or its run folder): returns ``(net in eval mode, ckpt dict)``.

    The net is rebuilt from its recorded name and keyword arguments without touching torch's global RNG."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"restoration checkpoint not found: {path} (train one with python -m restoration.train)")
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(
            f"{path} is not a restoration checkpoint of this toolkit (expected format {CKPT_FORMAT!r}, "
            f"found {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__})"
        )
    with torch.random.fork_rng(devices=[]):
        net = build_net(ckpt["net"], **ckpt.get("net_kwargs", {}))
    net.load_state_dict(ckpt["state_dict"])
    return net.to(device).eval(), ckpt


def save_checkpoint(path: str | os.PathLike, net: nn.Module, net_name: str, net_kwargs: Mapping[str, Any],
                    optimizer: torch.optim.Optimizer, step: int, **fields: Any) -> Path:
    """Atomically write a checkpoint of ``net`` (its weights copied to the CPU) and ``optimizer`` at ``step``.
    ``fields`` (``world_size``, ``config``, ``rng``, ``val``, ``final`` ...) are stored as given."""
    inner = getattr(net, "module", net)  # DDP wrapper: store the bare network's weights
    return atomic_save_torch(
        {
            "format": CKPT_FORMAT,
            "net": net_name,
            "net_kwargs": dict(net_kwargs),
            "pad_multiple": pad_multiple_of(inner),
            "num_parameters": count_parameters(inner),
            "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "step": int(step),
            **fields,
            "torch_version": str(torch.__version__),
        },
        path,
    )
