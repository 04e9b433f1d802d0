"""The measurement: per image, set and timestep, the DiffLoss terms of the set's image against its clean original,
batched and resumable (a `runkit.manifest.Manifest` with one entry per batch of images)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cubdata import load_pil_rgb, load_square_tensor, read_cub
from diffloss.criterion import diffuse, model_timesteps, prior_prediction
from diffloss.prior.hspace import hspace_hook
from runkit.manifest import Manifest

log = logging.getLogger(__name__)

__all__ = ["METRICS", "CLEAN", "DEFAULT_TIMESTEPS", "MANIFEST_FORMAT", "ROW_KEYS", "SetPairs", "set_roots", "spread",
           "prior_response", "terms_of",
           "naturalness_terms", "pair_sets", "check_decodable", "image_noise", "measure_naturalness"]

#: The per-image terms (columns of per_image.csv); see the package docstring.
METRICS = ("denoise", "nat", "sem", "sem_rel")
#: The name of the clean root's own row; no set may take it.
CLEAN = "clean"
#: The keys of a per-image row.
ROW_KEYS = ("set", "replicate", "image_id", "t", *METRICS)
DEFAULT_TIMESTEPS = (25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 975)
#: The manifest's format tag (one of another format is ignored with a warning and everything is redone).
MANIFEST_FORMAT = "analysis.naturalness/1"


@torch.no_grad()
def prior_response(model: nn.Module, diffusion, x0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps prediction [B, 3, H, W], h-space [B, C, h, w])`` of the prior at ``x_t = diffuse(x0, t, noise)``;
    ``x0`` in ``[-1, 1] NCHW``."""
    x_t = diffuse(diffusion, x0, t, noise)
    with hspace_hook(model) as hs:
        out = model(x_t, model_timesteps(diffusion, t))
    return prior_prediction(diffusion, out, x_t, t, "eps"), hs.h.float()


def terms_of(eps_z: torch.Tensor, h_z: torch.Tensor, eps_x: torch.Tensor, h_x: torch.Tensor,
             noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image terms ``{metric: [B]}`` from the prior's responses to a set's images (``eps_z``, ``h_z``) and to
    their clean originals (``eps_x``, ``h_x``) under the same ``noise`` (``[B, 3, H, W]``): means over elements
    of the squared differences, and ``sem_rel`` = ||h_z - h_x||^2 / ||h_x||^2 (NaN where h_x is 0)."""
    per = lambda a, b: (a - b).pow(2).flatten(1).mean(1)  # noqa: E731
    sem = per(h_z, h_x)
    hx2 = h_x.pow(2).flatten(1).mean(1)
    sem_rel = torch.where(hx2 > 0, sem / hx2.clamp_min(torch.finfo(hx2.dtype).tiny), torch.full_like(sem, math.nan))
    return {"denoise": per(eps_z, noise), "nat": per(eps_z, eps_x), "sem": sem, "sem_rel": sem_rel}


def naturalness_terms(model: nn.Module, diffusion, images: torch.Tensor, clean: torch.Tensor, t: int,
                      noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image terms (`METRICS`, see the package doc) of ``images`` against ``clean`` (both ``[0, 1] NCHW``)
    at timestep ``t`` with the shared ``noise``. Returns ``{metric: [B]}``."""
    if images.shape != clean.shape:
        raise ValueError(f"images and clean must have the same shape, got {tuple(images.shape)} and "
                         f"{tuple(clean.shape)}")
    tt = torch.full((images.shape[0],), int(t), device=images.device, dtype=torch.long)
    eps_z, h_z = prior_response(model, diffusion, images * 2 - 1, tt, noise)
    eps_x, h_x = prior_response(model, diffusion, clean * 2 - 1, tt, noise)
    return terms_of(eps_z, h_z, eps_x, h_x, noise)


def set_roots(sets: Mapping[str, str | Path | Sequence[str | Path]]) -> dict[str, list[Path]]:
    """``{set: [root, ...]}``: one root, or one per replicate (restorer seed) of the set."""
    out = {}
    for name, roots in sets.items():
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        if not roots:
            raise ValueError(f"set {name!r} has no root")
        out[str(name)] = [Path(r) for r in roots]
    return out


@dataclass
class SetPairs:
    """The images scored: ``ids`` (test image ids present in the clean root and every set, sorted) and
    ``paths`` ((set name, replicate) -> image paths in ``ids`` order; ``(CLEAN, 0)`` first)."""

    ids: list[int]
    paths: dict[tuple[str, int], list[Path]]


def pair_sets(clean_root: str | Path, sets: Mapping[str, str | Path | Sequence[str | Path]],
              images: int | None = None) -> SetPairs:
    """Pair the test images of every set (and each of its replicate roots) with the clean root's by image id
    (the ones present everywhere, a warning naming how many each set lost); ``images`` of them, evenly spread
    over the ids (`spread`; None or 0: all)."""
    clean = read_cub(clean_root)
    records = clean.split("test")
    if not records:
        raise ValueError(f"clean CUB root {clean.root} has no test images")
    paths = {(CLEAN, 0): {r.image_id: clean.image_path(r) for r in records}}
    for name, roots in set_roots(sets).items():
        if name == CLEAN:
            raise ValueError(f"'{CLEAN}' is the clean root's name; rename set {name!r}")
        for k, root in enumerate(roots):
            idx = read_cub(root)
            paths[(name, k)] = {r.image_id: idx.image_path(r) for r in idx.split("test")}
    common = sorted(set.intersection(*(set(p) for p in paths.values())))
    dropped = {f"{n} [{k}]": len(p) - len(common) for (n, k), p in paths.items() if len(p) != len(common)}
    if not common:
        raise ValueError("the sets share no test image id with the clean root; a set must be a degraded/restored "
                         "copy of the clean root's test split (corruptions.degrade, restoration.restore)")
    if dropped:
        log.warning("using the %d test images present in every set (dropped per set: %s)", len(common), dropped)
    ids = spread(common, images)
    return SetPairs(ids, {n: [p[i] for i in ids] for n, p in paths.items()})


def spread(ids: Sequence[int], n: int | None) -> list[int]:
    """``n`` of the sorted ``ids``, evenly spaced (``ids[k * len // n]``): CUB numbers images class by class, so
    the first ``n`` would cover only the first classes. None, 0 or ``n >= len(ids)``: all of them."""
    ids = list(ids)
    if not n or n >= len(ids):
        return ids
    return [ids[k * len(ids) // n] for k in range(n)]


def check_decodable(pairs: SetPairs, progress: bool = False) -> None:
    """Decode every image once (`cubdata.ImageDecodeError` names a broken file) before any prior is run."""
    paths = [p for ps in pairs.paths.values() for p in ps]
    for p in tqdm(paths, desc="checking images", unit="img", disable=not progress or len(paths) < 500):
        load_pil_rgb(p)


def image_noise(seed: int, image_id: int, t: int, size: int) -> torch.Tensor:
    """The noise ``[3, size, size]`` of image ``image_id`` at timestep ``t``: drawn from ``(seed, image_id, t)``
    alone, so every set meets the same noise and any subset or batching of images gives the same numbers."""
    state = int(np.random.SeedSequence([int(seed), int(image_id), int(t)]).generate_state(1)[0])
    return torch.randn((3, size, size), generator=torch.Generator().manual_seed(state))


def _load(paths: Sequence[Path], size: int, device: torch.device) -> torch.Tensor:
    return torch.stack([load_square_tensor(p, size) for p in paths]).to(device)


def _measure_batch(model: nn.Module, diffusion, pairs: SetPairs, sl: slice, timesteps: Sequence[int], seed: int,
                   device: torch.device, bar) -> list[list]:
    """Rows ``[set, replicate, image_id, t, *METRICS]`` of the images ``pairs.ids[sl]``: per timestep the prior
    runs once on the clean images (the clean row's ``denoise``; its other terms are 0) and once per set root."""
    size = int(model.image_size)
    ids = pairs.ids[sl]
    rows: list[list] = []
    imgs = {key: _load(paths[sl], size, device) for key, paths in pairs.paths.items()}
    for t in timesteps:
        noise = torch.stack([image_noise(seed, i, t, size) for i in ids]).to(device)
        tt = torch.full((len(ids),), int(t), device=device, dtype=torch.long)
        eps_x, h_x = prior_response(model, diffusion, imgs[(CLEAN, 0)] * 2 - 1, tt, noise)
        bar.update(len(ids))
        for key in pairs.paths:
            if key == (CLEAN, 0):
                terms = terms_of(eps_x, h_x, eps_x, h_x, noise)
            else:
                eps_z, h_z = prior_response(model, diffusion, imgs[key] * 2 - 1, tt, noise)
                terms = terms_of(eps_z, h_z, eps_x, h_x, noise)
                bar.update(len(ids))
            values = torch.stack([terms[m] for m in METRICS], 1).double().cpu().tolist()
            rows += [[key[0], key[1], int(i), int(t), *v] for i, v in zip(ids, values)]
    return rows


def measure_naturalness(model: nn.Module, diffusion, clean_root: str | Path,
                        sets: Mapping[str, str | Path | Sequence[str | Path]],
                        timesteps: Sequence[int] = DEFAULT_TIMESTEPS, images: int | None = None,
                        batch_size: int = 16, seed: int = 0, device: str | torch.device = "cpu",
                        progress: bool = True, manifest: str | Path | None = None,
                        identity: Mapping | None = None, check_images: bool = True) -> list[dict]:
    """Per-image terms for every set (and ``clean``) and timestep: rows ``{set, replicate, image_id, t,
    denoise, nat, sem, sem_rel}`` (sets in the order given, clean first, then replicate, timestep, image).

    ``sets``: name -> CUB root, or a list of roots (replicates: the same degraded images restored by
    networks trained with different seeds; ``replicate`` is the root's index). The noise of image ``i`` at
    timestep ``t`` is `image_noise` ``(seed, i, t)``. Every image is decoded before the prior runs (unless
    ``check_images`` is False: the caller did it, `check_decodable`).

    ``manifest``: a file (``out/manifest.json``) recording each finished batch of ``batch_size`` images (saved
    as `Manifest.save_due` paces it, and when the run is interrupted), so a rerun with the same settings (the
    sets, images, timesteps, seed, batch size and ``identity``, e.g. the prior's digest and the device)
    computes only the batches it lacks. ``progress``: a bar counting UNet evaluations of one image (it moves
    after every call of at most ``batch_size`` images)."""
    T = int(diffusion.num_timesteps)
    timesteps = [int(t) for t in timesteps]
    bad = [t for t in timesteps if not 0 <= t < T]
    if bad:
        raise ValueError(f"timesteps must be in 0..{T - 1}, got {bad}")
    if len(set(timesteps)) != len(timesteps):
        raise ValueError(f"timesteps must not repeat, got {timesteps}")
    pairs = pair_sets(clean_root, sets, images)
    if check_images:
        check_decodable(pairs, progress)
    device = torch.device(device)
    n_batches = math.ceil(len(pairs.ids) / batch_size)
    book = None
    if manifest is not None:
        settings = {"clean": str(Path(clean_root).resolve()), "image_size": int(model.image_size),
                    "sets": {n: [str(r.resolve()) for r in roots] for n, roots in set_roots(sets).items()},
                    "image_ids": pairs.ids, "timesteps": timesteps, "seed": int(seed), "batch_size": int(batch_size),
                    "metrics": list(METRICS), **dict(identity or {})}
        book = Manifest.open(manifest, MANIFEST_FORMAT, settings, entries_key="done")
        if book.resumed:
            log.info("resuming: %d of %d batches done in %s", len(book.entries), n_batches, manifest)
    done = book.entries if book is not None else {}
    per_batch = len(timesteps) * len(pairs.paths)
    todo = [b for b in range(n_batches) if str(b) not in done]
    total = len(pairs.ids) * per_batch
    initial = total - sum(len(pairs.ids[b * batch_size:(b + 1) * batch_size]) for b in todo) * per_batch
    bar = tqdm(total=total, initial=initial, desc="naturalness", unit="eval", disable=not progress,
               dynamic_ncols=True)
    try:
        for b in todo:
            rows = _measure_batch(model, diffusion, pairs, slice(b * batch_size, (b + 1) * batch_size), timesteps,
                                  seed, device, bar)
            if book is not None:
                book.record(str(b), {"rows": rows})
                if book.save_due():
                    book.save()
            else:
                done[str(b)] = {"rows": rows}
    except BaseException:  # interrupted (Ctrl-C included) or failed: keep every finished batch
        if book is not None and book.dirty:
            book.save()
        raise
    finally:
        bar.close()
    if book is not None:
        book.save(complete=True)
    order = {key: k for k, key in enumerate(pairs.paths)}
    t_pos = {t: k for k, t in enumerate(timesteps)}
    id_pos = {i: k for k, i in enumerate(pairs.ids)}
    out = [dict(zip(ROW_KEYS, r)) for b in range(n_batches) for r in done[str(b)]["rows"]]
    out.sort(key=lambda r: (order[(r["set"], r["replicate"])], t_pos[r["t"]], id_pos[r["image_id"]]))
    return out
