"""h of x_t for the probe: the prior's middle-block output at a few timesteps t of noised images, batched,
resumable (one ``.npz`` per batch, recorded with its SHA-256 in ``features/manifest.json``) and dealt out over
torchrun's processes as the h-space study's batches are.

The noise protocol is DiffLoss's: x_t = sqrt(abar_t) x + sqrt(1 - abar_t) e, one noise e per image, seeded by
(seed, image id) (`analysis.hspace.groups.image_seed`), so the same image gets the same e in every group and at
every t -- as DiffLoss noises the restored and the clean image with the same e.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cubdata import load_square_tensor, read_cub
from runkit.distributed import gather_checked, on_rank0, shard
from runkit.files import atomic_write_bytes, sha256_file
from runkit.manifest import Manifest

from analysis.hspace.groups import image_seed, slug
from analysis.hspace.perturbation import middle_block_output

log = logging.getLogger(__name__)

__all__ = ["LabelledImage", "labelled_images", "POOLS", "REPRESENTATIONS", "hspace_features",
           "extract_group_features", "MANIFEST_FORMAT"]

#: How h [C, H, W] becomes a vector: its spatial mean [C] or all of it [C*H*W].
POOLS = ("mean", "flatten")
#: What the probe reads: h, and the baseline, the pixels of x_t averaged down to h's H x W (3 H W values).
REPRESENTATIONS = ("h", "x_t pixels")
MANIFEST_FORMAT = "analysis.hprobe/1"


@dataclass(frozen=True)
class LabelledImage:
    """One image of a group: ``key`` (the CUB image id, the same image in every group), ``path`` and ``label``
    (0-based class)."""

    key: str
    path: Path
    label: int


def labelled_images(root: str | Path, split: str) -> list[LabelledImage]:
    """The ``split`` images of the CUB root ``root`` with their classes (the probe needs labels: image folders
    without CUB metadata are refused)."""
    root = Path(root)
    if not (root / "images.txt").is_file():
        raise ValueError(f"{root} is not a CUB root (no images.txt): the probe needs each image's class")
    idx = read_cub(root)
    return [LabelledImage(str(r.image_id), idx.image_path(r), int(r.label)) for r in idx.split(split)]


@torch.no_grad()
def hspace_features(model: nn.Module, diffusion, images: torch.Tensor, keys: Sequence[str],
                    timesteps: Sequence[int], seed: int = 0, pool: str = "mean") -> dict[str, np.ndarray]:
    """h of x_t for ``images`` ([0, 1] NCHW at the prior's size) at each of ``timesteps`` (of the prior's
    full process) and the baseline, x_t itself: ``{"h": [T, N, D], "x_t pixels": [T, N, 3 H W]}`` float32.
    D = C (``pool`` "mean": h averaged over its H x W positions) or C*H*W ("flatten"); the pixels of x_t are
    averaged over blocks down to h's H x W (as many positions as h has). ``keys`` seed each image's noise (see
    the module)."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
    if images.ndim != 4 or images.shape[1] != 3 or len(keys) != images.shape[0]:
        raise ValueError(f"expected [N, 3, S, S] images and N keys, got {tuple(images.shape)} and {len(keys)} keys")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    x0 = images.to(device, dtype) * 2 - 1
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(image_seed(seed, k)))
                         for k in keys]).to(device, dtype)
    hs, pixels = [], []
    for t in timesteps:
        tt = torch.full((x0.shape[0],), int(t), device=device, dtype=torch.long)
        x_t = diffusion.q_sample(x0, tt, noise=noise)
        h = middle_block_output(model, x_t, tt).float()
        hs.append((h.mean(dim=(2, 3)) if pool == "mean" else h.flatten(1)).cpu().numpy())
        pixels.append(torch.nn.functional.adaptive_avg_pool2d(x_t.float(), h.shape[-2:]).flatten(1).cpu().numpy())
    return {"h": np.stack(hs), "x_t pixels": np.stack(pixels)}


def _encode(features: Mapping[str, np.ndarray], labels: np.ndarray, keys: Sequence[str]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, h=features["h"], pixels=features["x_t pixels"], labels=labels, keys=np.asarray(list(keys)))
    return buf.getvalue()


def _decode(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    with np.load(path, allow_pickle=False) as z:
        return {"h": z["h"], "x_t pixels": z["pixels"]}, z["labels"], [str(k) for k in z["keys"]]


def extract_group_features(groups: Mapping[str, Sequence[LabelledImage]], model: nn.Module, diffusion,
                           timesteps: Sequence[int], *, seed: int = 0, pool: str = "mean", batch_size: int = 16,
                           out: str | Path | None = None, settings: Mapping | None = None, rank: int = 0,
                           world: int = 1, progress: bool = True) -> dict[str, tuple[dict, np.ndarray, list[str]]]:
    """h features of every group: ``{group: (features, labels [N], keys)}``, features as `hspace_features`
    returns them (``{"h": [T, N, D], "x_t pixels": [T, N, P]}``), images in the given order. Batches of
    ``batch_size`` images (per group, in order) are dealt out round-robin over torchrun's ``world`` processes
    (each rank's model on its own device) and gathered after each round.

    With ``out`` every finished batch is written (by rank 0) to ``out/<group>/batch-NNNNN.npz`` and recorded
    with its SHA-256 in ``out/manifest.json`` (``settings`` plus the groups' image lists decide whether an
    earlier run's batches are reused): a re-run skips them, an interrupted run loses at most one round."""
    from tqdm.auto import tqdm

    size = int(model.image_size)
    out = Path(out) if out is not None else None
    doc = {**dict(settings or {}), "timesteps": [int(t) for t in timesteps], "pool": pool, "seed": int(seed),
           "image_size": size, "batch_size": int(batch_size),
           "groups": {g: [it.key for it in items] for g, items in groups.items()}}
    batches = [(g, b, list(items[s:s + batch_size])) for g, items in groups.items()
               for b, s in enumerate(range(0, len(items), batch_size))]

    def plan():
        if out is None:
            return None, []
        m = Manifest.open(out / "manifest.json", MANIFEST_FORMAT, doc)
        done = [i for i, (g, b, _) in enumerate(batches) if m.verified(f"{g}/{b}", out / _batch_file(g, b))]
        return m, done

    manifest, done = on_rank0(plan, rank, world) if out is not None else (None, [])
    if rank != 0:
        manifest = None
    parts: dict[tuple[str, int], tuple] = {}
    for i in done:
        g, b, _ = batches[i]
        parts[(g, b)] = _decode(out / _batch_file(g, b))
    todo = [batches[i] for i in range(len(batches)) if i not in set(done)]
    mine = shard(todo, rank, world)
    n_total = sum(len(v) for v in groups.values())
    with tqdm(total=n_total, initial=sum(len(batches[i][2]) for i in done), desc="h features", unit="img",
              disable=not progress or rank != 0) as bar:
        for r in range(-(-len(todo) // world)):
            def compute(r=r):
                if r >= len(mine):
                    return None
                g, b, items = mine[r]
                images = torch.stack([load_square_tensor(it.path, size) for it in items])
                feats = hspace_features(model, diffusion, images, [it.key for it in items], timesteps, seed, pool)
                return g, b, feats, np.array([it.label for it in items], dtype=np.int64), [it.key for it in items]

            new = [p for p in gather_checked(compute, rank, world) if p is not None]
            for g, b, feats, labels, keys in new:
                parts[(g, b)] = (feats, labels, keys)
            if manifest is not None:
                for g, b, feats, labels, keys in new:
                    path = atomic_write_bytes(out / _batch_file(g, b), _encode(feats, labels, keys))
                    manifest.record(f"{g}/{b}", {"file": _batch_file(g, b), "sha256": sha256_file(path)})
                manifest.save()
            bar.update(sum(len(p[4]) for p in new))
    if manifest is not None:
        manifest.save(complete=True)
    result = {}
    for g in groups:
        chunks = [parts[(g, b)] for gg, b, _ in batches if gg == g]
        result[g] = ({name: np.concatenate([c[0][name] for c in chunks], axis=1) for name in REPRESENTATIONS},
                     np.concatenate([c[1] for c in chunks]), [k for c in chunks for k in c[2]])
    return result


def _batch_file(group: str, batch: int) -> str:
    return f"{slug(group)}/batch-{batch:05d}.npz"
