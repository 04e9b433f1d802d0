"""Restore every image of a CUB-layout root with a trained restoration network.

    python -m restoration.restore --ckpt runs/ll3-on/ckpt.pt --cub-root degraded/lowlight/3 --out restored/ll3-on

Each image is restored at full resolution (padded to the multiple the network needs, then cropped back);
images of equal size are batched. The output is a valid CUB root (`cubdata.read_cub` accepts it) listing
the same images under the same folders and stems with the same metadata files; images are written as
lossless PNG by default (``images/<class>/<stem>.png``, and ``images.txt`` names these files). Every file is
written atomically; ``restore_manifest.json`` (a `runkit.manifest.Manifest`) records what is done with each
output's SHA-256, so an interrupted run resumes where it stopped and redoes any output that is missing or
damaged, and a manifest made with another checkpoint is refused instead of silently mixing two networks (a
manifest of another format is ignored with a warning: everything is redone). An ``--out`` folder that
holds anything but such a manifest's run (any other file) is refused before any work unless ``--overwrite`` is
given; an existing CUB root (``images.txt`` ...) that is not a restore output is refused even with
``--overwrite``, since restoring into it would rewrite its metadata. An empty or absent folder is fine. Every
argument and every input image's header is checked before the first write.

Several GPUs: ``torchrun --nproc_per_node N -m restoration.restore ...`` shares the batches out between N
processes (each on its LOCAL_RANK GPU; gloo on the CPU works too); rank 0 alone writes the manifest and the
metadata, and the folder is byte-identical to a one-process run's. Each rank records its progress in
``restore_manifest.rank<R>.json`` while running, merged into the manifest at the end (and on resume).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cubdata import METADATA_FILES, ImageDecodeError, encode_image, load_rgb, read_cub, write_cub_metadata
from runkit.files import atomic_write_bytes, sha256_file
from runkit.distributed import distributed, gather_checked, on_rank0, shard
from runkit.errors import run_cli
from runkit.manifest import Manifest
from cubdata.paths import OUTPUT_FORMATS as FORMATS
from cubdata.paths import output_rel_path

from runkit.checks import positive_int
from runkit.options import RunOptions, add_config_arguments, config_from_args, option

from restoration.checkpoint import checkpoint_path, load_checkpoint
from restoration.nets import pad_multiple_of, restore_tensor

log = logging.getLogger(__name__)

__all__ = ["RestoreConfig", "restore_cub_root", "restore_array", "output_rel_path", "MANIFEST", "build_parser", "main"]

MANIFEST = "restore_manifest.json"
MANIFEST_FORMAT = "diffloss-restore/2"
#: per-rank progress of a torchrun run (``restore_manifest.rank<R>.json``), merged into MANIFEST and deleted by rank 0
PART_PREFIX = "restore_manifest.rank"


@torch.no_grad()
def restore_array(net: torch.nn.Module, images: list[np.ndarray], device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Restore a list of ``uint8 HxWx3`` images of one size as one batch -> list of ``uint8 HxWx3``."""
    if not images:
        return []
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"restore_array batches images of one size, got {sorted(shapes)}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0).to(device)
    y = restore_tensor(net, x)
    y = (y * 255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) for a in y]


# --------------------------------------------------------------------------------------------------
# the output folder and its manifest
# --------------------------------------------------------------------------------------------------
def _check_out_folder(out_root: Path, overwrite: bool) -> None:
    """Refuse an ``out_root`` this tool did not write: it must be absent, empty, or carry a restore manifest
    (whose settings are compared later). ``overwrite`` lets any other folder through, except a CUB root
    (metadata files such as ``images.txt``) that is not a restore output: writing there would replace that
    dataset's metadata, so ``overwrite`` never does."""
    if out_root.exists() and not out_root.is_dir():
        raise ValueError(f"--out {out_root} exists and is not a folder; choose an empty folder")
    if (out_root / MANIFEST).is_file() or not out_root.is_dir() or not any(out_root.iterdir()):
        return
    dataset = [name for name in METADATA_FILES if (out_root / name).exists()]
    if dataset:
        raise ValueError(
            f"--out {out_root} is a CUB dataset ({', '.join(dataset[:3])}) that restoration.restore did not write; "
            "restoring into it would replace its images.txt and metadata, so it is refused even with --overwrite: "
            "choose an empty folder"
        )
    if not overwrite:
        raise ValueError(
            f"--out {out_root} holds files not written by restoration.restore (no {MANIFEST}); choose an empty "
            "folder or pass --overwrite to write into it anyway"
        )


def _open_manifest(out_root: Path, identity: dict, overwrite: bool) -> Manifest:
    """The manifest of ``out_root`` for a run of ``identity`` (ckpt digest, input root, split, format): the
    earlier run's when its settings match, else a new one. One made with other settings is refused unless
    ``overwrite``; an unreadable one or one of another format is ignored with a warning (all is redone)."""
    path = out_root / MANIFEST
    old = Manifest.read(path, MANIFEST_FORMAT)
    saved = old.get("settings") if old is not None and isinstance(old.get("settings"), dict) else None
    mismatch = [f"{k}: {saved.get(k)!r} vs {v!r}" for k, v in identity.items() if saved.get(k) != v] if saved else []
    if mismatch and not overwrite:
        raise ValueError(
            f"{out_root} was restored with other settings ({'; '.join(mismatch)}); pass --overwrite to redo it, "
            "or choose another output folder"
        )
    if saved is None or mismatch:
        return Manifest(path, MANIFEST_FORMAT, identity, entries_key="done")
    return Manifest.open(path, MANIFEST_FORMAT, identity, pinned=tuple(identity), entries_key="done")


def _part_path(out_root: Path, rank: int) -> Path:
    return out_root / f"{PART_PREFIX}{rank}.json"


def _verified_done(manifest: Manifest, out_root: Path, fmt: str, records) -> dict[str, dict]:
    """The finished outputs of an earlier run: the entries of its manifest and of the per-rank parts an
    interrupted torchrun run left behind whose output exists where ``fmt`` puts it and matches its SHA-256."""
    if manifest.resumed:
        for part in sorted(out_root.glob(f"{PART_PREFIX}*.json")):
            m = Manifest.open(part, MANIFEST_FORMAT, manifest.settings, entries_key="done")
            for key, entry in m.entries.items():
                manifest.record(key, entry)
    expected = {str(r.image_id): output_rel_path(r.rel_path, fmt) for r in records}
    done = {k: e for k, e in manifest.entries.items()
            if expected.get(k) == e.get("path") and manifest.verified(k, out_root / "images" / e["path"])}
    if len(done) < len(manifest.entries):
        log.warning("%s: %d recorded output(s) missing or not matching their SHA-256; redoing them", out_root,
                    len(manifest.entries) - len(done))
    return done


def _plan_output(ckpt_path: Path, in_root: Path, out_root: Path, split: str, fmt: str,
                 overwrite: bool) -> tuple[dict, dict[str, dict]]:
    """Rank 0's checks before anything is loaded or written: ``(identity, done)``, the run's identity (what
    a manifest must match to be resumed) and the verified finished outputs of an earlier run."""
    _check_out_folder(out_root, overwrite)  # before anything is read, loaded or written
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"--ckpt {ckpt_path}: no restoration checkpoint there (give the ckpt.pt of "
                                "python -m restoration.train, or its run folder)")
    index = read_cub(in_root)
    records = index.split(split)
    if not records:
        raise ValueError(f"{in_root} has no {split!r} images (it lists {len(index.records)} images in all)")
    _check_headers(index, records)
    identity = {"ckpt_sha256": sha256_file(ckpt_path), "in_root": str(in_root.resolve()), "split": split, "fmt": fmt}
    return identity, _verified_done(_open_manifest(out_root, identity, overwrite), out_root, fmt, records)


def _check_headers(index, records) -> None:
    """Open every input image's header (no decode: about 0.05 ms each), so that a file that is not an image
    is refused before the manifest or any output is written (a truncated one still fails when decoded)."""
    for rec in records:
        path = index.image_path(rec)
        try:
            with Image.open(path):
                pass
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path} (listed in {index.root}/images.txt)") from None
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a file that is no image
            raise ImageDecodeError(f"cannot decode image {path}: {type(err).__name__}: {err}") from None


# --------------------------------------------------------------------------------------------------
# restoring
# --------------------------------------------------------------------------------------------------
def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) after EXIF orientation, read from the file header only (no full decode)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(274, 1)
    except Exception:  # undecodable files fail loudly later, in load_rgb
        return (-1, -1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _plan_batches(index, todo: list, multiple: int, batch_size: int) -> list[list]:
    """The batches of a run, in order: ``todo`` bucketed by padded header size, each bucket cut into
    ``batch_size`` chunks. The same list on every rank; ranks share whole batches."""
    buckets: dict[tuple[int, int], list] = defaultdict(list)
    for rec in todo:
        h, w = _header_size(index.image_path(rec))
        buckets[(-(-h // multiple) * multiple, -(-w // multiple) * multiple)].append(rec)
    return [recs[i : i + batch_size] for _, recs in sorted(buckets.items()) for i in range(0, len(recs), batch_size)]


def _restore_batch(net: torch.nn.Module, index, chunk: list, out_root: Path, fmt: str, quality: int,
                   device: torch.device) -> dict[str, dict]:
    """Restore the records ``chunk`` (one batch) and write each output atomically under ``out_root/images``.
    Returns their manifest entries: image id -> ``{"path": rel under images/, "sha256": hex}``."""
    images = [load_rgb(index.image_path(r)) for r in chunk]
    by_shape: dict[tuple, list[int]] = defaultdict(list)  # header sizes can lie (odd EXIF)
    for j, im in enumerate(images):
        by_shape[im.shape].append(j)
    entries = {}
    for idxs in by_shape.values():
        outs = restore_array(net, [images[j] for j in idxs], device)
        for j, arr in zip(idxs, outs):
            rel = output_rel_path(chunk[j].rel_path, fmt)
            data = encode_image(arr, fmt, quality)
            atomic_write_bytes(out_root / "images" / rel, data)
            entries[str(chunk[j].image_id)] = {"path": rel, "sha256": hashlib.sha256(data).hexdigest()}
    return entries


def restore_cub_root(
    ckpt: str | os.PathLike,
    in_root: str | os.PathLike,
    out_root: str | os.PathLike,
    device: str = "cpu",
    batch_size: int = 8,
    split: str = "test",
    fmt: str = "png",
    quality: int = 95,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Restore the ``split`` images (``"train"``, ``"test"`` or ``"all"``) of the CUB root ``in_root`` with
    the network in ``ckpt`` (a ``ckpt.pt`` of `restoration.train`) into the CUB root ``out_root``.

    Resumable: images recorded in ``out_root/restore_manifest.json`` whose file is present and matches its
    recorded SHA-256 are skipped; missing or damaged ones are redone. A manifest from another checkpoint,
    input root, split or format raises ValueError unless ``overwrite=True``, and so does an ``out_root``
    holding anything without such a manifest (a stray file); an empty folder is fine. A CUB root that is not
    a restore output is refused even with ``overwrite=True`` (its metadata would be rewritten).
    ``images.txt`` names the files written (``.png`` names for PNG output).

    Under ``torchrun --nproc_per_node N`` the batches are shared out between the N processes (each on its
    LOCAL_RANK GPU with CUDA), see `_restore`; the folder written is byte-identical to a one-process run's.
    Returns a summary dict (counts over all processes, seconds, images per second, network, paths).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "jpeg" and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100):
        raise ValueError(f"--quality must be an integer in 1..100, got {quality!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ckpt_path = checkpoint_path(ckpt)
    in_root, out_root = Path(in_root), Path(out_root)
    if in_root.resolve() == out_root.resolve():
        raise ValueError(f"--out must differ from --cub-root (both {in_root}); restoring in place would destroy the input")
    with distributed(str(device)) as (rank, world, dev):
        return _restore(ckpt_path, in_root, out_root, dev, int(batch_size), split, fmt, quality, overwrite,
                        progress, rank, world)


def _run_manifest(out_root: Path, identity: dict, info: dict, ckpt_path: Path, done: dict) -> Manifest:
    """The manifest rank 0 writes: the run's identity as settings, the network as extra fields, ``done``."""
    m = Manifest(out_root / MANIFEST, MANIFEST_FORMAT, identity, entries_key="done")
    m.extra = {"ckpt": str(ckpt_path), "net": info["net"], "net_kwargs": info.get("net_kwargs", {}),
               "step": info.get("step")}
    m.entries = dict(done)
    return m


def _start(manifest: Manifest, out_root: Path) -> None:
    """Rank 0, before any image is written: the manifest first, so a run killed at any point leaves a folder
    that is recognisably ours; leftover per-rank parts are merged into it already and deleted."""
    out_root.mkdir(parents=True, exist_ok=True)
    manifest.save(complete=False)
    for part in out_root.glob(f"{PART_PREFIX}*.json"):
        part.unlink()


def _restore_shard(net, index, mine: list[list], out_root: Path, fmt: str, quality: int, device: torch.device,
                   progress: Manifest, show: bool, desc: str) -> dict[str, dict]:
    """Restore this rank's batches ``mine``, recording each output in ``progress`` (the manifest itself on
    one process, this rank's part under torchrun), saved when due and always on the way out, also on error.
    Returns this rank's new entries."""
    new: dict[str, dict] = {}
    bar = tqdm(total=sum(map(len, mine)), desc=desc, disable=not show, dynamic_ncols=True)
    try:
        for chunk in mine:
            for key, entry in _restore_batch(net, index, chunk, out_root, fmt, quality, device).items():
                new[key] = entry
                progress.record(key, entry)
            bar.update(len(chunk))
            if progress.save_due():
                progress.save()
    finally:
        bar.close()
        progress.save()
    return new


def _finish(manifest: Manifest, parts: list[dict], index, records, out_root: Path, fmt: str, world: int) -> None:
    """Rank 0, after every rank is done: the gathered outputs into the manifest (in split order), then the
    metadata (last: a folder without images.txt is visibly unfinished; it names the files written), the
    complete manifest, and the per-rank parts deleted. The result must be a valid CUB root."""
    for part in parts:
        for key, entry in part.items():
            manifest.record(key, entry)
    manifest.entries = {str(r.image_id): manifest.entries[str(r.image_id)] for r in records
                        if str(r.image_id) in manifest.entries}
    renamed = {r.image_id: output_rel_path(r.rel_path, fmt) for r in records}
    write_cub_metadata(index, out_root, records=records,
                       rel_paths={i: rel for i, rel in renamed.items() if rel != index.record(i).rel_path})
    manifest.save(complete=True)
    for r in range(world):
        _part_path(out_root, r).unlink(missing_ok=True)
    read_cub(out_root)


def _restore(ckpt_path: Path, in_root: Path, out_root: Path, device: torch.device, batch_size: int, split: str,
             fmt: str, quality: int, overwrite: bool, progress: bool, rank: int, world: int) -> dict:
    """`restore_cub_root` on process ``rank`` of ``world``.

    Rank 0 alone checks the output folder and decides what is done (`_plan_output`), writes the manifest
    before any image (`_start`) and, at the end, the metadata and the complete manifest (`_finish`). Every
    rank builds the same batch list and restores every ``world``-th batch (whole batches, so each image is
    computed in the same batch as on one process: same bytes); the images are distinct files, each written
    atomically. With several processes each rank records its progress in its own part
    (``restore_manifest.rank<R>.json``), which rank 0 merges at the end (a resumed run merges leftover parts
    first, whatever its number of processes)."""
    identity, done = on_rank0(lambda: _plan_output(ckpt_path, in_root, out_root, split, fmt, overwrite), rank, world)
    index = read_cub(in_root)
    records = index.split(split)
    net, info = load_checkpoint(ckpt_path, device)
    manifest = _run_manifest(out_root, identity, info, ckpt_path, done)
    on_rank0(lambda: _start(manifest, out_root), rank, world)  # also the barrier: no image before the manifest
    todo = [r for r in records if str(r.image_id) not in done]
    mine = shard(_plan_batches(index, todo, pad_multiple_of(net), batch_size), rank, world)
    own = manifest if world == 1 else Manifest(_part_path(out_root, rank), MANIFEST_FORMAT, identity, entries_key="done")
    t0 = time.perf_counter()
    parts = gather_checked(lambda: _restore_shard(net, index, mine, out_root, fmt, quality, device, own,
                                                  progress and rank == 0, f"restore {in_root.name}"), rank, world)
    on_rank0(lambda: _finish(manifest, parts, index, records, out_root, fmt, world), rank, world)
    seconds, n_done = time.perf_counter() - t0, sum(map(len, parts))
    summary = {
        "in_root": str(in_root), "out_root": str(out_root), "ckpt": str(ckpt_path), "net": info["net"],
        "split": split, "n_images": len(records), "n_restored": n_done, "n_skipped": len(records) - len(todo),
        "seconds": round(seconds, 3), "images_per_second": round(n_done / seconds, 3) if n_done and seconds > 0 else None,
        "fmt": fmt, "processes": world,
    }
    if rank == 0:
        log.info("restored %d images (%d already done) of %s into %s in %.1f s%s", n_done, summary["n_skipped"],
                 in_root, out_root, seconds, f" on {world} processes" if world > 1 else "")
    return summary


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RestoreConfig(RunOptions):
    """The options of ``python -m restoration.restore`` (the arguments of `restore_cub_root`)."""

    ckpt: str = option(required=True, help="ckpt.pt of python -m restoration.train (or its run folder)")
    cub_root: str = option(required=True, help="the CUB root to restore (e.g. a degraded variant)")
    out: str = option(required=True, help="output CUB root")
    split: str = option("test", choices=("test", "train", "all"), help="which images to restore")
    batch_size: int = option(8, check=positive_int, help="images per forward pass (images of equal size only)")
    format: str = option("png", choices=FORMATS, help="output image format")
    quality: int = option(95, help="JPEG quality 1..100 (with --format jpeg)")
    overwrite: bool = option(False, help="write into an --out folder that holds other files, or redo one made "
                                         "with other settings")

    def check(self) -> None:
        if self.format == "jpeg" and not (positive_int("--quality", self.quality) and self.quality <= 100):
            raise ValueError(f"--quality must be an integer in 1..100, got {self.quality!r}")


def build_parser() -> argparse.ArgumentParser:
    from runkit.cli import ArgumentParser

    p = ArgumentParser(prog="python -m restoration.restore", description=__doc__)
    return add_config_arguments(p, RestoreConfig, skip=("seed",))


def _report(s: dict) -> None:
    print(f"{s['out_root']}: {s['n_restored']} restored, {s['n_skipped']} already done, {s['seconds']:.1f} s "
          f"({s['net']})")


def main(argv=None) -> int:
    from runkit.cli import resolve_device_name

    cfg = config_from_args(RestoreConfig, build_parser().parse_args(argv))
    return run_cli(lambda: restore_cub_root(
        cfg.ckpt, cfg.cub_root, cfg.out, device=resolve_device_name(cfg.device), batch_size=cfg.batch_size,
        split=cfg.split, fmt=cfg.format, quality=cfg.quality, overwrite=cfg.overwrite,
        progress=cfg.progress), config=cfg, threads=cfg.threads, report=_report, out=cfg.out)


if __name__ == "__main__":
    raise SystemExit(main())
