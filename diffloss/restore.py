"""Restore every image of a CUB-layout root with a trained restoration network.

    python -m diffloss.restore --ckpt runs/ll3-on/ckpt.pt --in degraded/lowlight/3 --out restored/ll3-on

Each image is restored at full resolution (padded to the multiple the network needs, then cropped back);
images of equal size are batched. The output is a valid CUB root (`cubdata.read_cub` accepts it) listing
the same images under the same folders and stems with the same metadata files; images are written as
lossless PNG by default (``images/<class>/<stem>.png``, and ``images.txt`` names these files). Every file is
written atomically; ``restore_manifest.json`` records what is done with each output's SHA-256, so an
interrupted run resumes where it stopped and redoes any output that is missing or damaged, and a manifest
made with another checkpoint is refused instead of silently mixing two networks. An ``--out`` folder that
holds anything but such a manifest's run (an existing CUB root, any other file) is refused before any work
unless ``--overwrite`` is given; an empty or absent folder is fine.

Several GPUs: ``torchrun --nproc_per_node N -m diffloss.restore ...`` shares the batches out between N
processes (each on its LOCAL_RANK GPU; gloo on the CPU works too); rank 0 alone writes the manifest and the
metadata, and the folder is byte-identical to a one-process run's. Each rank records its progress in
``restore_manifest.rank<R>.json`` while running, merged into the manifest at the end (and on resume).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cubdata import (atomic_write_bytes, atomic_write_text, encode_image, load_rgb, read_cub, sha256_file,
                     write_cub_metadata)

from cubdata.distributed import distributed, env_rank, gather_checked, on_rank0, shard
from .nets import pad_multiple_of, restore_tensor
from .train import load_checkpoint

log = logging.getLogger(__name__)

__all__ = ["restore_cub_root", "restore_array", "output_rel_path", "MANIFEST", "build_parser", "main"]

MANIFEST = "restore_manifest.json"
#: per-rank progress of a torchrun run (``restore_manifest.rank<R>.json``), merged into MANIFEST and deleted by rank 0
PART_PREFIX = "restore_manifest.rank"
FORMATS = ("png", "jpeg")


def output_rel_path(rel_path: str, fmt: str) -> str:
    """Where the restored image of ``rel_path`` goes under ``images/``: same folder and stem; ``.png`` for
    PNG; for JPEG the original name when it already ends in .jpg/.jpeg, else ``.jpg``."""
    p = Path(rel_path)
    if fmt == "png":
        return p.with_suffix(".png").as_posix()
    return p.as_posix() if p.suffix.lower() in (".jpg", ".jpeg") else p.with_suffix(".jpg").as_posix()


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


def _read_manifest(out_root: Path) -> dict | None:
    """The restore manifest of ``out_root`` as a dict, or None when absent or unreadable (not ours)."""
    path = out_root / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s (%s)", path, err)
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("done", {}), dict) else None


def _check_out_folder(out_root: Path, overwrite: bool) -> dict | None:
    """Refuse an ``out_root`` this tool did not write: it must be absent, empty, or carry a restore manifest
    (whose settings are compared later). Returns that manifest (None if absent). ``overwrite`` lets any
    existing folder through."""
    if out_root.exists() and not out_root.is_dir():
        raise ValueError(f"--out {out_root} exists and is not a folder; choose an empty folder")
    old = _read_manifest(out_root) if out_root.is_dir() else None
    if old is None and not overwrite and out_root.is_dir() and any(out_root.iterdir()):
        raise ValueError(
            f"--out {out_root} holds files not written by diffloss.restore (no {MANIFEST}); choose an empty "
            "folder or pass --overwrite (overwrite=True) to write into it anyway"
        )
    return old


def _verified_done(old: dict, out_root: Path, fmt: str, records) -> dict[str, dict]:
    """Entries of an old manifest whose output exists, sits where ``fmt`` puts it and matches its SHA-256
    (entries without a digest, from older manifests, cannot be trusted and are redone)."""
    expected = {str(r.image_id): output_rel_path(r.rel_path, fmt) for r in records}
    done, n_bad = {}, 0
    for key, entry in old.get("done", {}).items():
        if not (isinstance(entry, dict) and key in expected and entry.get("path") == expected[key]):
            continue
        path = out_root / "images" / entry["path"]
        if path.is_file() and sha256_file(path) == entry.get("sha256"):
            done[key] = entry
        else:
            n_bad += 1
    if n_bad:
        log.warning("%s: %d recorded output(s) missing or not matching their SHA-256; redoing them", out_root, n_bad)
    return done


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) after EXIF orientation, read from the file header only (no full decode)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(274, 1)
    except Exception:  # undecodable files fail loudly later, in load_rgb
        return (-1, -1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


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
    the network in ``ckpt`` (a ``ckpt.pt`` of `diffloss.train`) into the CUB root ``out_root``.

    Resumable: images recorded in ``out_root/restore_manifest.json`` whose file is present and matches its
    recorded SHA-256 are skipped; missing or damaged ones are redone. A manifest from another checkpoint,
    input root, split or format raises ValueError unless ``overwrite=True``, and so does an ``out_root``
    holding anything without such a manifest (an existing CUB root, a stray file); an empty folder is fine.
    ``images.txt`` names the files written (``.png`` names for PNG output).

    Under ``torchrun --nproc_per_node N`` the batches are shared out between the N processes (each on its
    LOCAL_RANK GPU with CUDA), see `_restore`; the folder written is byte-identical to a one-process run's.
    Returns a summary dict (counts over all processes, seconds, images per second, network, paths).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ckpt_path = Path(ckpt)
    if ckpt_path.is_dir():
        ckpt_path = ckpt_path / "ckpt.pt"
    in_root, out_root = Path(in_root), Path(out_root)
    if in_root.resolve() == out_root.resolve():
        raise ValueError(f"--out must differ from --in (both {in_root}); restoring in place would destroy the input")
    with distributed(str(device)) as (rank, world, dev):
        return _restore(ckpt_path, in_root, out_root, dev, int(batch_size), split, fmt, quality, overwrite,
                        progress, rank, world)


def _part_path(out_root: Path, rank: int) -> Path:
    return out_root / f"{PART_PREFIX}{rank}.json"


def _plan_output(ckpt_path: Path, in_root: Path, out_root: Path, split: str, fmt: str,
                 overwrite: bool) -> tuple[dict, dict[str, dict]]:
    """Rank 0's checks before anything is loaded or written: ``(identity, done)``, the run's identity (what
    a manifest must match to be resumed) and the verified finished outputs of an earlier run, read from
    its manifest and from the per-rank parts an interrupted torchrun run left behind."""
    old = _check_out_folder(out_root, overwrite)  # before anything is read, loaded or written
    index = read_cub(in_root)
    records = index.split(split)
    if not records:
        raise ValueError(f"{in_root} has no {split!r} images (it lists {len(index.records)} images in all)")
    identity = {"ckpt_sha256": sha256_file(ckpt_path), "in_root": str(in_root.resolve()), "split": split, "fmt": fmt}
    if old is None:
        return identity, {}
    mismatch = [f"{k}: {old.get(k)!r} vs {v!r}" for k, v in identity.items() if old.get(k) != v]
    if mismatch and not overwrite:
        raise ValueError(
            f"{out_root} was restored with other settings ({'; '.join(mismatch)}); pass overwrite=True "
            "(--overwrite) to redo it, or choose another output folder"
        )
    if mismatch:
        return identity, {}
    done = dict(old.get("done", {}))
    for part in sorted(out_root.glob(f"{PART_PREFIX}*.json")):
        try:
            doc = json.loads(part.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable %s (%s)", part, err)
            continue
        if isinstance(doc, dict) and isinstance(doc.get("done"), dict) and all(doc.get(k) == v for k, v in identity.items()):
            done.update(doc["done"])
    return identity, _verified_done({"done": done}, out_root, fmt, records)


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


def _restore(ckpt_path: Path, in_root: Path, out_root: Path, device: torch.device, batch_size: int, split: str,
             fmt: str, quality: int, overwrite: bool, progress: bool, rank: int, world: int) -> dict:
    """`restore_cub_root` on process ``rank`` of ``world``.

    Rank 0 alone checks the output folder and decides what is done (`_plan_output`), writes the manifest
    before any image (a killed run leaves a folder recognisably ours) and, at the end, the metadata and the
    complete manifest. Every rank builds the same batch list and restores every ``world``-th batch (whole
    batches, so each image is computed in the same batch as on one process: same bytes); the images are
    distinct files, each written atomically. While running, one process saves the manifest after each
    batch; with several, each rank saves its own part (``restore_manifest.rank<R>.json``) and rank 0 merges
    the gathered parts into the manifest at the end and deletes them (a resumed run merges leftover parts
    first, whatever its number of processes)."""
    identity, done = on_rank0(lambda: _plan_output(ckpt_path, in_root, out_root, split, fmt, overwrite), rank, world)
    index = read_cub(in_root)
    records = index.split(split)
    net, info = load_checkpoint(ckpt_path, device)
    manifest_path = out_root / MANIFEST
    order = [str(r.image_id) for r in records]

    def save_manifest(complete: bool) -> None:  # entries in split order, whatever order they were done in
        atomic_write_text(manifest_path, json.dumps(
            {**identity, "ckpt": str(ckpt_path), "net": info["net"], "net_kwargs": info.get("net_kwargs", {}),
             "step": info.get("step"), "complete": complete, "done": {k: done[k] for k in order if k in done}},
            indent=1) + "\n")

    def start() -> None:
        out_root.mkdir(parents=True, exist_ok=True)
        save_manifest(False)  # first, so a run killed at any point leaves a folder that is recognisably ours
        for part in out_root.glob(f"{PART_PREFIX}*.json"):  # merged into the manifest just written
            part.unlink()

    on_rank0(start, rank, world)  # also the barrier: no rank writes an image before the manifest exists
    todo = [r for r in records if str(r.image_id) not in done]
    mine = shard(_plan_batches(index, todo, pad_multiple_of(net), batch_size), rank, world)
    new: dict[str, dict] = {}  # this rank's outputs: image id -> {"path": rel under images/, "sha256": hex}

    def save_progress() -> None:
        if world == 1:
            done.update(new)
            save_manifest(False)
        else:
            atomic_write_text(_part_path(out_root, rank), json.dumps({**identity, "done": new}, indent=1) + "\n")

    def restore_mine() -> dict[str, dict]:
        bar = tqdm(total=sum(map(len, mine)), desc=f"restore {in_root.name}", disable=not progress or rank != 0,
                   dynamic_ncols=True)
        try:
            for chunk in mine:
                new.update(_restore_batch(net, index, chunk, out_root, fmt, quality, device))
                bar.update(len(chunk))
                save_progress()
        finally:
            bar.close()
        return new

    t0 = time.perf_counter()
    parts = gather_checked(restore_mine, rank, world)
    n_done = sum(map(len, parts))

    def finish() -> None:
        for part in parts:
            done.update(part)
        # Metadata last: a folder without images.txt is visibly unfinished. It names the files written.
        renamed = {r.image_id: output_rel_path(r.rel_path, fmt) for r in records}
        write_cub_metadata(index, out_root, records=records,
                           rel_paths={i: rel for i, rel in renamed.items() if rel != index.record(i).rel_path})
        save_manifest(True)
        for r in range(world):
            _part_path(out_root, r).unlink(missing_ok=True)
        read_cub(out_root)  # the result must be a valid CUB root

    on_rank0(finish, rank, world)
    seconds = time.perf_counter() - t0
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


def build_parser() -> argparse.ArgumentParser:
    from cubdata.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m diffloss.restore", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ckpt", required=True, help="ckpt.pt of python -m diffloss.train (or its run folder)")
    p.add_argument("--in", dest="in_root", required=True, help="CUB-layout root to restore (e.g. a degraded variant)")
    p.add_argument("--out", required=True, help="output CUB root")
    p.add_argument("--split", choices=("test", "train", "all"), default="test", help="which images to restore")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (images of equal size only)")
    p.add_argument("--format", choices=FORMATS, default="png", help="output image format")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (with --format jpeg)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder that holds other files, or redo one made with other settings")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv=None) -> int:
    from cubdata.cli import resolve_device_name

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        s = restore_cub_root(args.ckpt, args.in_root, args.out, device=resolve_device_name(args.device),
                             batch_size=args.batch_size, split=args.split, fmt=args.format, quality=args.quality,
                             overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:  # CubLayoutError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    if env_rank() != 0:  # under torchrun rank 0 reports for all
        return 0
    print(f"{s['out_root']}: {s['n_restored']} restored, {s['n_skipped']} already done, {s['seconds']:.1f} s "
          f"({s['net']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
