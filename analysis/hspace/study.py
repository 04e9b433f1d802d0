"""The study itself: for every image of every group, steps 1-5 of the protocol (see `analysis.hspace`), batched,
resumable (a `runkit.manifest.Manifest` in out/manifest.json) and dealt out over torchrun's processes."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cubdata import load_pil_rgb
from runkit.distributed import distributed, gather_checked, on_rank0, shard
from runkit.manifest import Manifest

from analysis.hspace.config import HSpaceConfig
from analysis.hspace.features import feature_distance_metrics, pixel_change
from analysis.hspace.grid import GridEntry, grid_dir, read_grid_item, to_uint8, write_grid_item
from analysis.hspace.groups import ImageItem, image_seed, list_group_images, load_image_tensor, select_images
from analysis.hspace.perturbation import make_edit
from analysis.hspace.report import RECORD_FIELDS
from analysis.hspace.sampling import ddim_generate, ddim_schedule, spaced_diffusion, start_latent

log = logging.getLogger(__name__)

__all__ = ["HSpaceResult", "run_hspace_study", "MANIFEST_FORMAT"]

#: The manifest's format tag (a manifest of another format is ignored with a warning and everything is redone).
MANIFEST_FORMAT = "analysis.hspace/3"


@dataclass
class HSpaceResult:
    """``rows``: one dict per (group, image, level >= 1): group, image_id, level, alpha, distance, path,
    cosine_distance, relative_distance (`feature_distance_metrics`), dh_norm, dh_rel (`PerturbationEdit` /
    `PullbackEdit`), pixel_change (`pixel_change`, 0..255) and label_flip (1.0 when the classifier's predicted
    class of the level differs from the unperturbed generation's, 0.0 when not, NaN without a classifier).
    ``grid``: group -> list of (image_id, uint8 HxWx3 input, [uint8 HxWx3 generation of level 0..K]).
    ``seconds_per_image``: mean wall time per image (start latent + generation + features)."""

    rows: list[dict]
    grid: dict[str, list[GridEntry]]
    seconds_per_image: float
    config: HSpaceConfig
    groups: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    unet_evals_per_image: int = 0


@dataclass
class _Plan:
    """What a run has to do: the chosen images, the records already done (group -> key -> record; the
    manifest's entries), the images still to compute (group -> [(selection index, ImageItem)]), the grid
    entries read back, and the manifest (None without an output folder)."""

    chosen: dict[str, list[ImageItem]]
    done: dict[str, dict]
    todo: dict[str, list[tuple[int, ImageItem]]]
    cached: dict[str, list[GridEntry]]
    manifest: Manifest | None


def _plan_study(groups: Mapping[str, str | Path], config: HSpaceConfig, size: int, provenance: Mapping | None,
                paired: bool, out: Path | None) -> _Plan:
    """Decided once (rank 0 under torchrun) before anything is generated: pick the images (`select_images`),
    decode every one, read what an earlier run finished (out/manifest.json, when its settings match). Finished
    images whose grid PNGs are missing are redone."""
    items = {g: list_group_images(src, config.split) for g, src in groups.items()}
    chosen = select_images(items, config.images_per_group, config.seed, paired=paired)
    few = {g: len(v) for g, v in chosen.items() if len(v) < 2}
    if config.svd_mode == "batch-svd" and few:
        raise ValueError(f"--svd-mode batch-svd needs at least 2 images per group (its direction is a principal "
                         f"component over a batch's images), found {few}; use --svd-mode sample")
    for it in dict.fromkeys(it for picked in chosen.values() for it in picked):
        load_pil_rgb(it.path)  # ImageDecodeError names the file, before hours of generation
    settings = {"protocol": config.protocol(), "image_size": size, "record": list(RECORD_FIELDS),
                "groups": {g: [str(Path(src))] + [it.key for it in chosen[g]] for g, src in groups.items()},
                "provenance": dict(provenance or {})}
    manifest = None
    if out is not None:
        manifest = Manifest.open(out / "manifest.json", MANIFEST_FORMAT, json.loads(json.dumps(settings)),
                                 entries_key="done")
    plan = _Plan(chosen, manifest.entries if manifest else {}, {}, {}, manifest)
    for g in groups:
        plan.todo[g] = []
        for i, it in enumerate(chosen[g]):
            rec = plan.done.get(g, {}).get(it.key)
            need_grid = i < config.grid_images
            cached = read_grid_item(grid_dir(out, g, it.key), config.levels) if (rec and need_grid and out) else None
            if rec and (not need_grid or cached is not None):
                if cached is not None:
                    plan.cached.setdefault(g, []).append((it.key, cached[0], cached[1]))
            else:
                plan.todo[g].append((i, it))
    return plan


def _start_latents(model: nn.Module, spaced, x0: torch.Tensor, items: Sequence[ImageItem],
                   config: HSpaceConfig) -> torch.Tensor:
    """x_t0 of a batch: each image's own seeded noise (the same whatever batch or process it lands in), or DDIM
    inversion."""
    if config.start != "noise":
        return start_latent(model, spaced, x0, "ddim-inversion")
    lat = [start_latent(model, spaced, x0[j:j + 1], "noise", torch.Generator().manual_seed(image_seed(config.seed, it.key)))
           for j, it in enumerate(items)]
    return torch.cat(lat)


def _study_batch(model: nn.Module, spaced, extractor: nn.Module, batch: Sequence[tuple[int, ImageItem]],
                 config: HSpaceConfig, size: int, hook=None, classifier=None,
                 on_step=None) -> list[tuple[str, dict, GridEntry | None]]:
    """Steps 1-5 of the study for one batch of images of one group (each with 1 + K samples in one UNet batch).
    Returns per image ``(key, manifest record, grid entry or None)``; the grid entry ``(key, uint8 HxWx3 input,
    [uint8 HxWx3 generation of level 0..K])`` only for selection indices < ``config.grid_images``.
    ``classifier``: predicts the classes of [0, 1] NCHW images (`ClassifierFeatures.predict`) for the label
    flips, or None. ``on_step``: called after every DDIM step (progress)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    K, n = config.levels, len(batch)
    alphas = torch.tensor((0.0,) + config.alphas, dtype=torch.float32)
    t_start = time.perf_counter()
    x0 = torch.stack([load_image_tensor(it.path, size) for _, it in batch]).to(device, dtype) * 2 - 1
    x_t = _start_latents(model, spaced, x0, [it for _, it in batch], config)
    x_rep = x_t.repeat_interleave(K + 1, dim=0)            # [n*(1+K)], image-major, level-minor
    edit = make_edit(alphas.repeat(n), config.svd_mode)
    gen_x = ddim_generate(model, spaced, x_rep, t_edit=config.t_edit, hook=hook, edit=edit, on_step=on_step)
    gen01 = ((gen_x.float() + 1) / 2).clamp(0, 1)
    with torch.no_grad():
        feats = extractor(gen01.to(next(extractor.parameters()).device)).reshape(n, K + 1, -1)
        if classifier is not None:
            pred = classifier.predict(gen01.to(next(classifier.parameters()).device)).reshape(n, K + 1).cpu()
            flips = (pred[:, 1:] != pred[:, :1]).double()
        else:
            flips = torch.full((n, K), float("nan"), dtype=torch.float64)
    per_level = {k: v.cpu() for k, v in feature_distance_metrics(feats).items()}
    per_level.update(dh_norm=edit.dh_norm.reshape(n, K + 1)[:, 1:], dh_rel=edit.dh_rel.reshape(n, K + 1)[:, 1:],
                     pixel_change=pixel_change(gen01.cpu().reshape(n, K + 1, *gen01.shape[1:])), label_flip=flips)
    per_image = (time.perf_counter() - t_start) / n
    results = []
    for j, (i, it) in enumerate(batch):
        rec = {"distances": [float(v) for v in per_level["distance"][j]], "seconds": per_image}
        rec.update({name: [float(v) for v in per_level[name][j]] for name in RECORD_FIELDS})
        entry = None
        if i < config.grid_images:
            entry = (it.key, to_uint8((x0[j].float() + 1) / 2), [to_uint8(gen01[j * (K + 1) + k]) for k in range(K + 1)])
        results.append((it.key, rec, entry))
    return results


def run_hspace_study(groups: Mapping[str, str | Path], model: nn.Module, diffusion, extractor: nn.Module,
                     config: HSpaceConfig | None = None, out: str | Path | None = None,
                     provenance: Mapping | None = None, progress: bool = True, hook=None,
                     paired: bool = True, classifier: nn.Module | None = None) -> HSpaceResult:
    """Run the perturbation study over ``groups`` (name -> CUB root or image folder).

    ``paired`` (for the paired Wilcoxon tests): every group must hold the same images (see `select_images`,
    which warns about images some group lacks and refuses too few matches); False for unpaired groups. Every
    selected image is decoded once before anything is generated, so an unreadable file fails at once.

    ``model``/``diffusion``: the prior (``diffloss.load_prior``); images are sized to ``model.image_size``.
    ``extractor``: [0, 1] NCHW -> [N, D] features (`build_feature_extractor`, `load_classifier_features`).
    ``classifier``: a `ClassifierFeatures` (its ``predict``) for the label flips, or None (label_flip NaN). With
    ``out`` a manifest (out/manifest.json) records finished images and the grid images are saved under
    out/generations, so a re-run with the same protocol skips finished work. Returns an `HSpaceResult`.

    Under ``torchrun --nproc_per_node N`` (every rank holding the prior and the extractor on its own device):
    rank 0 plans the run (`_plan_study`); the batches (`_batches`: ``config.batch_images`` images within a group,
    in selection order: the batches of one process) are dealt out round-robin, batch b to rank b mod N, so every
    image is computed in the same batch as on one process. After each round of N batches the records are
    gathered; rank 0 alone writes the grid PNGs and the manifest, so an interrupted run resumes (with any number
    of processes) from the last round. Every rank returns the same rows; ``grid`` is filled on rank 0 only."""
    config = config or HSpaceConfig()
    size = int(getattr(model, "image_size", 0) or 0)
    if size <= 0:
        raise ValueError("the prior model has no image_size attribute; build it with diffloss.load_prior")
    timesteps = ddim_schedule(config.t0, config.steps, int(diffusion.num_timesteps))
    spaced = spaced_diffusion(diffusion, timesteps)
    out = Path(out) if out is not None else None
    with distributed(str(next(model.parameters()).device)) as (rank, world, _):
        plan = on_rank0(lambda: _plan_study(groups, config, size, provenance, paired, out), rank, world)
        pending = {(g, it.key) for g, batch in plan.todo.items() for _, it in batch}
        seconds = [float(plan.done[g][it.key]["seconds"]) for g in groups for it in plan.chosen[g]
                   if (g, it.key) not in pending]
        grid: dict[str, list] = {g: list(plan.cached.get(g, [])) for g in groups}

        def compute(batch, on_step=None):
            return _study_batch(model, spaced, extractor, batch, config, size, hook, classifier, on_step)

        seconds += _run_rounds(plan, groups, config, compute, grid, out, rank, world, progress)
        if out is not None:
            on_rank0(lambda: plan.manifest.save(complete=True), rank, world)
    rows = _result_rows(groups, plan, config)
    for g in groups:  # grid in selection order (stable whatever was resumed, and on any number of processes)
        order = {it.key: i for i, it in enumerate(plan.chosen[g])}
        grid[g].sort(key=lambda e: order[e[0]])
    evals = len(timesteps) * (config.levels + 1) + (len(timesteps) - 1 if config.start == "ddim-inversion" else 0)
    return HSpaceResult(rows=rows, grid=grid, seconds_per_image=float(np.mean(seconds)) if seconds else float("nan"),
                        config=config, groups={g: str(s) for g, s in groups.items()},
                        provenance=dict(provenance or {}), unet_evals_per_image=evals)


def _run_rounds(plan: _Plan, groups: Mapping, config: HSpaceConfig, compute, grid: dict, out: Path | None,
                rank: int, world: int, progress: bool) -> list[float]:
    """Compute the plan's pending batches, round r holding batches r*N .. r*N + N-1 (one per rank); after each
    round the results are gathered in rank order (the order of one process), added to ``plan.done`` and, by
    rank 0, to ``grid`` and the output folder. Returns the seconds per image of the computed images."""
    from tqdm.auto import tqdm

    batches = _batches(plan, groups, config)
    mine = shard(batches, rank, world)
    pending = {(g, it.key) for g in groups for _, it in plan.todo[g]}
    n_total = sum(len(v) for v in plan.chosen.values())
    n_done = n_total - len(pending)
    steps = max(1, int(config.steps))
    seconds: list[float] = []
    # the bar ticks at every DDIM step (a fraction of the batch's images), not once per batch of minutes
    with tqdm(total=n_total, initial=n_done, desc="h-space study", unit="img", disable=not progress or rank != 0,
              bar_format="{l_bar}{bar}| {n:.1f}/{total} img [{elapsed}<{remaining}]") as bar:
        for r in range(-(-len(batches) // world)):
            def my_batch(r=r) -> tuple[str, list] | None:  # None: this rank has no batch in the last round
                if r >= len(mine):
                    return None
                g, batch = mine[r]
                share = sum((g, it.key) in pending for _, it in batch) / steps
                return g, compute(batch, on_step=lambda: bar.update(share))

            new = [part for part in gather_checked(my_batch, rank, world) if part is not None]
            new = [(g, [res for res in results if (g, res[0]) in pending]) for g, results in new]
            for g, results in new:
                for key, rec, entry in results:
                    plan.done.setdefault(g, {})[key] = rec
                    seconds.append(float(rec["seconds"]))
                    pending.discard((g, key))
                    if entry is not None and rank == 0:
                        grid[g].append(entry)
            if out is not None:
                on_rank0(lambda new=new: _save_round(out, new, plan), rank, world)  # rank 0 writes
            n_done += sum(len(results) for _, results in new)
            bar.n = n_done  # exact after each round (rank 0 saw only its own batches' steps)
            bar.refresh()
    return seconds


def _batches(plan: _Plan, groups: Mapping, config: HSpaceConfig) -> list[tuple[str, list[tuple[int, ImageItem]]]]:
    """The batches to compute, in order: per group, ``config.batch_images`` images at a time in selection order.

    ``sample`` and ``pullback`` edit each sample on its own: the pending images are batched. ``batch-svd``'s
    direction depends on the batch, so the batches are fixed over the whole selection (a last batch of one image
    joins the batch before it: the direction needs two images), and a batch with any pending image is computed
    whole (its finished images come out the same and are not counted twice)."""
    b = int(config.batch_images)
    out = []
    for g in groups:
        if config.svd_mode != "batch-svd":
            todo = plan.todo[g]
            out += [(g, todo[s:s + b]) for s in range(0, len(todo), b)]
            continue
        chosen = list(enumerate(plan.chosen[g]))
        fixed = [chosen[s:s + b] for s in range(0, len(chosen), b)]
        if len(fixed) > 1 and len(fixed[-1]) == 1:
            fixed[-2:] = [fixed[-2] + fixed[-1]]
        pending = {it.key for _, it in plan.todo[g]}
        out += [(g, batch) for batch in fixed if any(it.key in pending for _, it in batch)]
    return out


def _save_round(out: Path, new: Sequence[tuple[str, list]], plan: _Plan) -> None:
    """Write the grid PNGs of a round's new images, then the manifest with everything done so far."""
    for g, results in new:
        for _, _, entry in results:
            if entry is not None:
                write_grid_item(out, g, entry)
        plan.manifest.record(g, plan.done[g])
    plan.manifest.save()


def _result_rows(groups: Mapping, plan: _Plan, config: HSpaceConfig) -> list[dict]:
    """One row per (group, image, level >= 1), in selection order."""
    rows: list[dict] = []
    for g in groups:
        for it in plan.chosen[g]:
            rec = plan.done[g][it.key]
            for k, d in enumerate(rec["distances"], start=1):
                rows.append({"group": g, "image_id": it.key, "level": k, "alpha": config.alphas[k - 1],
                             "distance": float(d), "path": str(it.path),
                             **{name: float(rec[name][k - 1]) for name in RECORD_FIELDS}})
    return rows
