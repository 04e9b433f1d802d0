"""`build_degraded_cub`: plan (which outputs are missing or stale), run, then write each variant's metadata
and return the summary."""
from __future__ import annotations

import dataclasses
import logging
import os
import time

from tqdm import tqdm

from cubdata import CubIndex, CubRecord, mini_cub_root, read_cub, write_cub_metadata
from cubdata.paths import output_rel_path

from corruptions.registry import corruption_entry
from corruptions.degrade.manifests import Variant, library_versions, open_variant
from corruptions.degrade.outdir import check_out_folder, remove_stray_temp_files
from corruptions.degrade.settings import DEFAULT_OUT, DegradeConfig
from corruptions.degrade.worker import ImageTask, Job, probe_task, run_tasks

log = logging.getLogger(__name__)

__all__ = ["build_degraded_cub", "run_build"]


def build_degraded_cub(
    cub_root: str | os.PathLike | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    corruptions=None,
    severities=(1, 2, 3, 4, 5),
    split: str = "test",
    workers: int = 1,
    seed: int = 0,
    fmt: str = "jpeg",
    quality: int = 95,
    *,
    progress: bool = True,
    flush_seconds: float = 30.0,
    overwrite: bool = False,
) -> dict:
    """Write ``OUT/<corruption>/<severity>/`` CUB roots for every image of ``split`` of ``cub_root``.

    cub_root: a CUB root (``None``: the built-in mini benchmark). corruptions: registry names or
    ``"pkg.module:function"`` (``None``: every registered corruption: fog, rain, lowlight and any registered
    since). severities: integers in 1..5. split: ``"test"``, ``"train"`` or ``"all"``. workers: processes
    (1 = in this process). seed: int >= 0; image ``i`` under corruption ``c`` at severity ``s`` uses
    ``numpy.random.default_rng([seed, i, corruption_id(c), s])``. fmt: ``"jpeg"`` (``quality`` 1..100) or
    ``"png"``. Outputs whose file matches its manifest checksum are skipped; manifests are saved before the
    first image, then every 0.5 s while small (at most ``flush_seconds`` apart as they grow) and on any exit.
    Returns a summary dict (counts per variant, ``failures``).

    OUT must be absent, empty or hold only this builder's ``<corruption>/<severity>/`` folders;
    ``overwrite=True`` writes into any folder (other files are left alone) and rebuilds a variant made with
    other settings instead of refusing it.

    Raises ``CubLayoutError`` for a bad root, ``BuildConfigError`` if OUT holds files this builder did not
    write or a build with other settings (without ``overwrite``), ``ValueError``/``TypeError`` for bad
    arguments, `CorruptionFailed` (a RuntimeError) if a corruption fails on an image (tried once per
    variant before anything is written, so a broken plug-in leaves nothing behind).
    """
    cfg = DegradeConfig(cub_root=cub_root, out=out, corruptions=corruptions, severities=severities, split=split,
                        workers=workers, seed=seed, fmt=fmt, quality=quality, overwrite=overwrite,
                        progress=progress, flush_seconds=flush_seconds)
    return run_build(cfg)


def run_build(cfg: DegradeConfig) -> dict:
    """`build_degraded_cub` with its arguments in ``cfg`` (checked here first)."""
    cfg.validate()
    t_start = time.perf_counter()
    if not cfg.overwrite:
        check_out_folder(cfg.out_path, cfg.corruptions)  # before anything is read or written
    index: CubIndex = read_cub(mini_cub_root() if cfg.cub_root is None else cfg.cub_root)
    records = index.split(cfg.split)
    if not records:
        raise ValueError(f"split {cfg.split!r} of {index.root} has no images; use --split all or another root")
    rel_out = {r.image_id: output_rel_path(r.rel_path, cfg.fmt) for r in records}
    versions = library_versions()
    variants = {v.key: v for v in (open_variant(corruption_entry(name), sev, cfg, index.root, versions)
                                   for name in cfg.corruptions for sev in cfg.severities)}  # all checked first
    tasks = _plan(variants.values(), index, records, rel_out, cfg)
    _probe(tasks)  # a broken corruption fails here, before the first manifest or folder is written
    n_todo = sum(len(t.jobs) for t in tasks)
    log.info("building %d variant(s) x %d %s image(s) of %s into %s: %d to write, %d already done",
             len(variants), len(records), cfg.split, index.root, cfg.out, n_todo,
             sum(v.skipped for v in variants.values()))
    _run(tasks, variants, rel_out, cfg, n_todo)
    summary = _finish(variants, index, records, rel_out, cfg)
    summary["seconds"] = elapsed = time.perf_counter() - t_start
    summary["images_per_second"] = summary["written"] / elapsed if elapsed > 0 else float("nan")
    return summary


def _plan(variants, index: CubIndex, records: list[CubRecord], rel_out: dict[int, str],
          cfg: DegradeConfig) -> list[ImageTask]:
    """Keep the outputs whose file matches its manifest checksum, forget the other entries, and return one
    task per source image with the outputs still to write."""
    pending: dict[int, list[Job]] = {}
    for var in variants:
        n_tmp = remove_stray_temp_files(var.root)
        if n_tmp:
            log.info("%s: removed %d temp file(s) left by an interrupted run", var.root, n_tmp)
        for key in set(var.manifest.entries) - {str(r.image_id) for r in records}:
            var.manifest.forget(key)  # an image no longer in the source root
        for rec in records:
            rel, key = rel_out[rec.image_id], str(rec.image_id)
            dst = var.root / "images" / rel
            entry = var.manifest.entries.get(key, {})
            if entry.get("status") == "ok" and entry.get("path") == f"images/{rel}" and var.manifest.verified(key, dst):
                var.skipped += 1
            else:
                var.manifest.forget(key)
                pending.setdefault(rec.image_id, []).append(Job(var.entry, var.severity, str(dst)))
    return [ImageTask(rec.image_id, str(index.image_path(rec)), tuple(pending[rec.image_id]), cfg.seed, cfg.fmt,
                      cfg.quality) for rec in records if rec.image_id in pending]


def _probe(tasks: list[ImageTask]) -> None:
    """Try each pending (corruption, severity) once, in memory, on the first decodable source image that
    needs it (`probe_task`): the cost of one image per variant, paid so that a plug-in that is not a
    corruption stops the build in one line with nothing written. Raises `CorruptionFailed`."""
    untried = {(job.corruption.name, job.severity) for task in tasks for job in task.jobs}
    for task in tasks:
        if not untried:
            return
        jobs = tuple(job for job in task.jobs if (job.corruption.name, job.severity) in untried)
        if jobs and probe_task(dataclasses.replace(task, jobs=jobs)):
            untried -= {(job.corruption.name, job.severity) for job in jobs}


def _run(tasks: list[ImageTask], variants: dict[tuple[str, int], Variant], rel_out: dict[int, str],
         cfg: DegradeConfig, n_todo: int) -> None:
    """Run the tasks, recording results as they come; manifests are saved first (so that a run killed at any
    point leaves one behind), whenever a save is due, and on any exit."""
    with_work = {(job.corruption.name, job.severity) for task in tasks for job in task.jobs}
    for key in with_work:
        variants[key].save(complete=False)

    def record(results: list[dict]) -> None:
        touched = set()
        for res in results:
            var = variants[(res["corruption"], res["severity"])]
            entry = {"path": f"images/{rel_out[res['image_id']]}", "status": res["status"]}
            entry.update({"sha256": res["sha256"], "bytes": res["bytes"]} if res["status"] == "ok"
                         else {"error": res["error"]})
            var.record(res["image_id"], entry)
            touched.add(var.key)
        bar.update(len(results))
        for key in touched:
            if variants[key].manifest.save_due(cfg.flush_seconds):
                variants[key].save(complete=False)

    finished = False
    bar = tqdm(total=n_todo, unit="img", desc="degraded CUB", disable=not cfg.progress or n_todo == 0,
               dynamic_ncols=True)
    try:
        run_tasks(tasks, cfg.workers, record)
        finished = True
    finally:
        bar.close()
        for var in variants.values():
            if var.manifest.dirty or finished:
                var.save(complete=finished)


def _finish(variants: dict[tuple[str, int], Variant], index: CubIndex, records: list[CubRecord],
            rel_out: dict[int, str], cfg: DegradeConfig) -> dict:
    """Write each variant's metadata (listing the images it holds, so it is a valid CUB root) and summarise."""
    by_id = {r.image_id: r for r in records}
    per_variant, failures = {}, []
    for (name, sev), var in variants.items():
        ok_records = [by_id[i] for i in sorted(var.ok_ids()) if i in by_id]
        if ok_records:
            changed = {r.image_id: rel_out[r.image_id] for r in ok_records if rel_out[r.image_id] != r.rel_path}
            write_cub_metadata(index, var.root, records=ok_records, rel_paths=changed)
        failed = var.failed()
        failures += [{"image_id": i, "rel_path": by_id[i].rel_path, "corruption": name, "severity": sev,
                      "error": e.get("error")} for i, e in sorted(failed.items()) if i in by_id]
        per_variant[f"{name}/{sev}"] = {"root": str(var.root), "ok": len(ok_records), "failed": len(failed),
                                        "written": var.written, "skipped": var.skipped}
    if failures:
        n_sources = len({f["image_id"] for f in failures})
        log.warning("%d degraded image(s) failed (%d source image(s))", len(failures), n_sources)
    return {
        "out": str(cfg.out), "source_root": str(index.root), "split": cfg.split, "seed": cfg.seed,
        "format": cfg.fmt, "n_source_images": len(records), "variants": per_variant,
        "ok": sum(v["ok"] for v in per_variant.values()), "failed": len(failures),
        "written": sum(v["written"] for v in per_variant.values()),
        "skipped": sum(v["skipped"] for v in per_variant.values()), "failures": failures,
    }
