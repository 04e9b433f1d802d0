"""Build the degraded-CUB benchmark: every image of a CUB split under each corruption and severity.

Writes OUT/<corruption>/<severity>/ as a valid CUB root (metadata files + images/<class>/<file>, decoded
RGB re-encoded as JPEG quality 95 or PNG) with a manifest.json holding per-image SHA-256 checksums and
status, the corruption parameters, the seed and library versions. Each image's randomness is a function of
(seed, image id, corruption, severity) only, so the bytes are identical for any --workers and across
re-runs. Re-running skips outputs whose checksum matches the manifest; an interrupted run leaves no partial
file under a final name. Manifests are written before the first image and then every few seconds, so even a
run killed with SIGKILL early on is resumed; worker processes die with the parent. OUT must be absent,
empty, or hold only this builder's <corruption>/<severity>/ folders: anything else (an existing CUB root, a
stray file) is refused before any work unless --overwrite. Unreadable images are recorded as failed, the
run goes on, and it exits 1.

    python -m corruptions.build --cub-root data/CUB_200_2011 --out degraded-cub --workers 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cubdata import (
    METADATA_FILES,
    CubIndex,
    CubLayoutError,
    ImageDecodeError,
    atomic_write_bytes,
    atomic_write_text,
    encode_image,
    load_rgb,
    mini_cub_root,
    read_cub,
    sha256_file,
    write_cub_metadata,
)

from . import corrupt, corruption_id, corruption_parameters, get_corruption, get_corruption_names, image_rng
from ._checks import SEVERITIES, check_severity

log = logging.getLogger(__name__)

__all__ = [
    "build_degraded_cub",
    "BuildConfigError",
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "library_versions",
    "variant_root",
    "build_parser",
    "main",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "degraded-cub-manifest/1"
DEFAULT_OUT = "degraded-cub"
#: Settings that decide an output's bytes; a re-run into the same folder must agree on all of them.
_PINNED_KEYS = ("corruption", "severity", "corruption_id", "parameters", "seed", "split", "image_format", "quality")
#: What a variant root holds when this builder wrote it (besides hidden ``.<name>.*.tmp`` files of a killed run).
_VARIANT_FILES = frozenset(METADATA_FILES) | {MANIFEST_NAME}
#: Manifests are saved at least this far apart, and further apart as they grow (see `_flush_interval`).
_MIN_FLUSH_SECONDS = 0.5


class BuildConfigError(ValueError):
    """The output folder holds a build made with other settings (seed, format, parameters ...), or files
    this builder did not write."""


def library_versions() -> dict[str, str]:
    """Versions of everything that decides the output bytes (recorded in every manifest)."""
    from importlib import metadata

    import numpy
    import PIL
    import scipy
    from PIL import features

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pillow": PIL.__version__,
        "libjpeg": str(features.version("jpg")),
        "imagecorruptions": dist("imagecorruptions-imaug"),
        "diffloss-toolkit": dist("diffloss-toolkit"),
    }


def variant_root(out: str | os.PathLike, corruption: str, severity: int) -> Path:
    """``OUT/<corruption>/<severity>``: the CUB root holding one corruption at one severity."""
    return Path(out) / corruption / str(check_severity(severity))


def _out_rel_path(rel_path: str, fmt: str) -> str:
    """Same relative path as the source; the suffix changes only where it must name the new format."""
    p = Path(rel_path)
    if fmt == "png":
        return p.with_suffix(".png").as_posix()
    return rel_path if p.suffix.lower() in (".jpg", ".jpeg") else p.with_suffix(".jpg").as_posix()


# ----------------------------------------------------------------------------------------------- worker
@dataclass(frozen=True)
class _Job:
    corruption: str
    severity: int
    dst: str  # output file: OUT/<corruption>/<severity>/images/<rel path>, OUT as the caller gave it


@dataclass(frozen=True)
class _ImageTask:
    image_id: int
    src: str
    jobs: tuple[_Job, ...]
    seed: int
    fmt: str
    quality: int


def _die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this worker as soon as its parent dies, even by SIGKILL (when no clean-up of the
    parent runs), so that no orphan goes on writing into OUT. Linux: the kernel sends SIGKILL on the
    parent's death (prctl PR_SET_PDEATHSIG); elsewhere a watchdog thread polls the parent pid."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before the request took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)  # reparented: the parent is gone


def _process_image(task: _ImageTask) -> list[dict]:
    """Decode one source image once and write all its pending degraded versions (runs in a worker).

    A source that cannot be decoded gives ``failed`` results; an exception inside a corruption or the
    encoder is a bug and propagates (with the image and corruption named) so the run stops.
    """
    try:
        image = load_rgb(task.src)
    except (ImageDecodeError, FileNotFoundError) as err:
        msg = f"{type(err).__name__}: {err}"
        return [_result(task, job, status="failed", error=msg) for job in task.jobs]
    results = []
    for job in task.jobs:
        rng = image_rng(task.seed, task.image_id, job.corruption, job.severity)
        try:
            degraded = corrupt(image, job.corruption, job.severity, rng)
            data = encode_image(degraded, task.fmt, task.quality)
        except Exception as err:  # name the image; the caller stops the run
            raise RuntimeError(
                f"{job.corruption} severity {job.severity} failed on image {task.image_id} ({task.src}) "
                f"of shape {image.shape}: {type(err).__name__}: {err}"
            ) from err
        atomic_write_bytes(job.dst, data)
        results.append(_result(task, job, status="ok", sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    return results


def _result(task: _ImageTask, job: _Job, status: str, sha256=None, size=None, error=None) -> dict:
    return {
        "image_id": task.image_id,
        "corruption": job.corruption,
        "severity": job.severity,
        "status": status,
        "sha256": sha256,
        "bytes": size,
        "error": error,
    }


# ----------------------------------------------------------------------------------------------- manifest
@dataclass
class _Variant:
    corruption: str
    severity: int
    root: Path
    header: dict
    images: dict[int, dict] = field(default_factory=dict)
    written: int = 0
    skipped: int = 0
    dirty: bool = True

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def write_manifest(self, complete: bool) -> None:
        entries = {str(k): self.images[k] for k in sorted(self.images)}
        ok = sum(e["status"] == "ok" for e in entries.values())
        head = dict(self.header, complete=complete, counts={"ok": ok, "failed": len(entries) - ok})
        # readable and compact: settings pretty-printed, then one line per image
        lines = [f" {json.dumps(k)}: {json.dumps(v, indent=None)}," for k, v in head.items()]
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items())
        text = "{\n" + "\n".join(lines) + '\n "images": {\n' + body + ("\n" if body else "") + " }\n}\n"
        atomic_write_text(self.manifest_path, text)
        self.dirty = False


def _load_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable manifest %s (%s); every image of it will be rebuilt", path, err)
        return None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(doc.get("images"), dict):
        log.warning("ignoring manifest %s of unknown format; every image of it will be rebuilt", path)
        return None
    return doc


def _remove_stray_temp_files(root: Path) -> int:
    """Delete temp files (``.<name>.*.tmp``) that an interrupted run left behind; never final names."""
    n = 0
    if root.is_dir():
        for p in root.rglob(".*.tmp"):
            if p.is_file():
                p.unlink()
                n += 1
    return n


def _foreign_entries(out: Path, corruptions: tuple[str, ...]) -> list[str]:
    """Entries under ``out`` that this builder does not write (relative paths; [] for an absent or empty
    folder). Its own are ``<corruption>/<severity>/`` folders holding only metadata files, the manifest,
    ``images/`` and temp files; the images inside are the manifests' business (checksums)."""
    if not out.is_dir():
        return []
    own_names = set(get_corruption_names()) | set(corruptions)
    severities = {str(s) for s in SEVERITIES}
    foreign = []
    for cdir in sorted(out.iterdir()):
        if not (cdir.is_dir() and (cdir.name in own_names or ":" in cdir.name)):  # ':' marks pkg.module:function
            foreign.append(cdir.name)
            continue
        for sdir in sorted(cdir.iterdir()):
            if not (sdir.is_dir() and sdir.name in severities):
                foreign.append(f"{cdir.name}/{sdir.name}")
                continue
            for entry in sorted(sdir.iterdir()):
                own = (
                    (entry.name in _VARIANT_FILES and entry.is_file())
                    or (entry.name == "images" and entry.is_dir())
                    or (entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file())
                )
                if not own:
                    foreign.append(f"{cdir.name}/{sdir.name}/{entry.name}")
    return foreign


def _check_out_folder(out: Path, corruptions: tuple[str, ...]) -> None:
    """Refuse an OUT that exists and holds anything this builder did not write (see `_foreign_entries`)."""
    if out.exists() and not out.is_dir():
        raise BuildConfigError(f"--out {out} exists and is not a folder; choose an empty folder")
    foreign = _foreign_entries(out, corruptions)
    if foreign:
        shown = ", ".join(repr(f) for f in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise BuildConfigError(
            f"--out {out} holds files not written by corruptions.build ({shown}); choose an empty folder or pass "
            "--overwrite (overwrite=True) to write into it anyway"
        )


def _flush_interval(flush_seconds: float, last_cost: float) -> float:
    """Seconds between manifest saves: often while they are cheap (a run killed early still leaves its
    progress), keeping their cost under ~5% of the run as they grow, and never more than ``flush_seconds``."""
    return min(float(flush_seconds), max(_MIN_FLUSH_SECONDS, 20.0 * last_cost))


# ----------------------------------------------------------------------------------------------- builder
def _as_tuple(value, what: str) -> tuple:
    if isinstance(value, (str, int)):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{what} must be a sequence, got {type(value).__name__}") from None
    if not items:
        raise ValueError(f"{what} must not be empty")
    return tuple(dict.fromkeys(items))  # de-duplicate, keep order


def build_degraded_cub(
    cub_root: str | os.PathLike | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    corruptions=("fog", "rain", "lowlight"),
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
    ``"pkg.module:function"``. severities: integers in 1..5. split: ``"test"``, ``"train"`` or ``"all"``.
    workers: processes (1 = in this process). seed: int >= 0; image ``i`` under corruption ``c`` at severity
    ``s`` uses ``numpy.random.default_rng([seed, i, corruption_id(c), s])``. fmt: ``"jpeg"`` (``quality``
    1..100) or ``"png"``. Outputs whose file matches its manifest checksum are skipped; manifests are saved
    before the first image, then every 0.5 s while small (at most ``flush_seconds`` apart as they grow) and on
    any exit. Returns a summary dict (counts per variant, ``failures``).

    OUT must be absent, empty or hold only this builder's ``<corruption>/<severity>/`` folders;
    ``overwrite=True`` writes into any folder (other files are left alone) and rebuilds a variant made with
    other settings instead of refusing it.

    Raises ``CubLayoutError`` for a bad root, ``BuildConfigError`` if OUT holds files this builder did not
    write or a build with other settings (without ``overwrite``), ``ValueError``/``TypeError`` for bad
    arguments, ``RuntimeError`` if a corruption fails on an image.
    """
    t_start = time.perf_counter()
    corruptions = _as_tuple(corruptions, "corruptions")
    for name in corruptions:
        get_corruption(name)  # unknown name -> ValueError listing the valid ones
    severities = tuple(check_severity(s) for s in _as_tuple(severities, "severities"))
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    fmt = {"jpg": "jpeg"}.get(str(fmt).lower(), str(fmt).lower())
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    if fmt == "jpeg" and not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")
    out = Path(out)
    if not overwrite:
        _check_out_folder(out, corruptions)  # before anything is read or written

    index: CubIndex = read_cub(mini_cub_root() if cub_root is None else cub_root)
    records = index.split(split)
    if not records:
        raise ValueError(f"split {split!r} of {index.root} has no images; use --split all or another root")
    versions = library_versions()
    rel_out = {r.image_id: _out_rel_path(r.rel_path, fmt) for r in records}

    # 1. one manifest per variant: load, check it was built with our settings, find finished outputs
    variants: dict[tuple[str, int], _Variant] = {}
    pending: dict[int, list[_Job]] = {}
    for name in corruptions:
        for sev in severities:
            root = variant_root(out, name, sev)
            header = {
                "format": MANIFEST_FORMAT,
                "corruption": name,
                "severity": sev,
                "corruption_id": corruption_id(name),
                "parameters": corruption_parameters(name, sev),
                "seed": seed,
                "split": split,
                "image_format": fmt,
                "quality": quality if fmt == "jpeg" else None,
                "rng": "numpy.random.default_rng([seed, image_id, corruption_id, severity])",
                "source_root": str(index.root),
                "versions": versions,
            }
            var = _Variant(name, sev, root, header)
            old = _load_manifest(var.manifest_path)
            if old is not None:
                diff = [k for k in _PINNED_KEYS if old.get(k) != header[k]]
                settings = ", ".join(f"{k}: {old.get(k)!r} there, {header[k]!r} now" for k in diff)
                if diff and not overwrite:
                    raise BuildConfigError(
                        f"{root} was built with other settings ({settings}). Use another --out, or pass "
                        "--overwrite (overwrite=True) to rebuild it."
                    )
                if diff:
                    log.warning("%s: rebuilding a variant made with other settings (%s)", root, settings)
                    old = None
            if old is not None:
                if old.get("versions") != versions:
                    log.warning("%s: resuming a build made with other library versions %s", root, old.get("versions"))
                if old.get("source_root") != header["source_root"]:
                    log.warning("%s: built from %s, now from %s", root, old.get("source_root"), header["source_root"])
            n_tmp = _remove_stray_temp_files(root)
            if n_tmp:
                log.info("%s: removed %d temp file(s) left by an interrupted run", root, n_tmp)
            old_images = (old or {}).get("images", {})
            for rec in records:
                rel = rel_out[rec.image_id]
                dst = root / "images" / rel
                entry = old_images.get(str(rec.image_id))
                if (
                    isinstance(entry, dict)
                    and entry.get("status") == "ok"
                    and entry.get("path") == f"images/{rel}"
                    and dst.is_file()
                    and sha256_file(dst) == entry.get("sha256")
                ):
                    var.images[rec.image_id] = entry
                    var.skipped += 1
                else:
                    pending.setdefault(rec.image_id, []).append(_Job(name, sev, str(dst)))
            variants[(name, sev)] = var

    tasks = [
        _ImageTask(rec.image_id, str(index.image_path(rec)), tuple(pending[rec.image_id]), seed, fmt, quality)
        for rec in records
        if rec.image_id in pending
    ]
    n_todo = sum(len(t.jobs) for t in tasks)
    n_skipped = sum(v.skipped for v in variants.values())
    log.info(
        "building %d variant(s) x %d %s image(s) of %s into %s: %d to write, %d already done",
        len(variants), len(records), split, index.root, out, n_todo, n_skipped,
    )

    # 2. run the pending images; record results as they come, save manifests now and then and on any exit
    def flush() -> None:
        nonlocal last_flush, last_cost
        t = time.monotonic()
        for var in variants.values():
            if var.dirty:
                var.write_manifest(complete=False)
        last_flush = time.monotonic()
        last_cost = last_flush - t

    # First a manifest for every variant with work to do, so a run killed at any point leaves one behind.
    with_work = {(job.corruption, job.severity) for jobs in pending.values() for job in jobs}
    for key, var in variants.items():
        var.dirty = key in with_work or not var.manifest_path.is_file()
    last_flush, last_cost = 0.0, 0.0
    if n_todo:
        flush()

    def record(results: list[dict]) -> None:
        for res in results:
            var = variants[(res["corruption"], res["severity"])]
            entry = {"path": f"images/{rel_out[res['image_id']]}", "status": res["status"]}
            if res["status"] == "ok":
                entry.update(sha256=res["sha256"], bytes=res["bytes"])
                var.written += 1
            else:
                entry["error"] = res["error"]
            var.images[res["image_id"]] = entry
            var.dirty = True
        bar.update(len(results))
        if time.monotonic() - last_flush >= _flush_interval(flush_seconds, last_cost):
            flush()

    finished = False
    bar = tqdm(total=n_todo, unit="img", desc="degraded CUB", disable=not progress or n_todo == 0, dynamic_ncols=True)
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                record(_process_image(task))
        else:
            _run_pool(tasks, min(workers, len(tasks)), record)
        finished = True
    finally:
        bar.close()
        for var in variants.values():
            if var.dirty or finished:
                var.write_manifest(complete=finished)

    # 3. metadata: each variant lists the images it holds, so it is a valid CUB root
    summary_variants = {}
    failures = []
    by_id = {r.image_id: r for r in records}
    for (name, sev), var in variants.items():
        ok_records = [by_id[i] for i in sorted(var.images) if var.images[i]["status"] == "ok" and i in by_id]
        if ok_records:
            changed = {r.image_id: rel_out[r.image_id] for r in ok_records if rel_out[r.image_id] != r.rel_path}
            write_cub_metadata(index, var.root, records=ok_records, rel_paths=changed)
        n_failed = 0
        for i in sorted(var.images):
            e = var.images[i]
            if e["status"] != "ok":
                n_failed += 1
                failures.append(
                    {
                        "image_id": i,
                        "rel_path": by_id[i].rel_path,
                        "corruption": name,
                        "severity": sev,
                        "error": e.get("error"),
                    }
                )
        summary_variants[f"{name}/{sev}"] = {
            "root": str(var.root),
            "ok": len(ok_records),
            "failed": n_failed,
            "written": var.written,
            "skipped": var.skipped,
        }
    elapsed = time.perf_counter() - t_start
    written = sum(v["written"] for v in summary_variants.values())
    summary = {
        "out": str(out),
        "source_root": str(index.root),
        "split": split,
        "seed": seed,
        "format": fmt,
        "n_source_images": len(records),
        "variants": summary_variants,
        "ok": sum(v["ok"] for v in summary_variants.values()),
        "failed": len(failures),
        "written": written,
        "skipped": n_skipped,
        "failures": failures,
        "seconds": elapsed,
        "images_per_second": written / elapsed if elapsed > 0 else float("nan"),
    }
    if failures:
        n_sources = len({f["image_id"] for f in failures})
        log.warning("%d degraded image(s) failed (%d source image(s))", len(failures), n_sources)
    return summary


def _run_pool(tasks: list[_ImageTask], workers: int, record) -> None:
    """Run ``tasks`` on ``workers`` spawned processes; the first exception cancels the rest and is raised."""
    ctx = multiprocessing.get_context("spawn")  # no fork: safe with threads / torch in the parent
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_die_with_parent,
                                   initargs=(os.getpid(),))
    try:
        # keep a bounded number of tasks in flight (memory) while both workers stay busy
        it = iter(tasks)
        in_flight = set()
        for task in it:
            in_flight.add(executor.submit(_process_image, task))
            if len(in_flight) >= 4 * workers:
                break
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in done:
                record(fut.result())  # re-raises a worker's exception here
                nxt = next(it, None)
                if nxt is not None:
                    in_flight.add(executor.submit(_process_image, nxt))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------- CLI
def _corruption_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one corruption, e.g. fog,rain,lowlight")
    for n in names:
        try:
            get_corruption(n)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return names


def _severity_list(text: str) -> tuple[int, ...]:
    out = []
    for part in (p.strip() for p in text.split(",")):
        try:
            sev = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"severities must be integers in 1..5 like 1,3,5; got {part!r}") from None
        if sev not in SEVERITIES:
            raise argparse.ArgumentTypeError(f"severity must be in 1..5, got {sev}")
        out.append(sev)
    return tuple(out)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from cubdata.cli import HelpFormatter

    p = argparse.ArgumentParser(
        prog="python -m corruptions.build", description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--cub-root", default=None, help="CUB_200_2011 folder (default: the built-in mini benchmark)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder; receives <corruption>/<severity>/ CUB roots")
    p.add_argument(
        "--corruptions",
        type=_corruption_list,
        default=",".join(get_corruption_names()),
        help=f"comma-separated names from {{{','.join(get_corruption_names())}}} or pkg.module:function",
    )
    p.add_argument("--severities", type=_severity_list, default="1,2,3,4,5", help="comma-separated, each in 1..5")
    p.add_argument("--split", choices=("test", "train", "all"), default="test", help="which images to degrade")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes (1: this process only)")
    p.add_argument("--seed", type=int, default=0, help="base seed (>= 0) of every per-image generator")
    p.add_argument("--format", dest="fmt", choices=("jpeg", "png"), default="jpeg", help="output image format")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality 1..100 (ignored for png)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder holding other files, and rebuild variants made with other settings")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        summary = build_degraded_cub(
            cub_root=args.cub_root,
            out=args.out,
            corruptions=args.corruptions,
            severities=args.severities,
            split=args.split,
            workers=args.workers,
            seed=args.seed,
            fmt=args.fmt,
            quality=args.quality,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (CubLayoutError, BuildConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'variant':<14} {'ok':>6} {'failed':>6} {'written':>8} {'skipped':>8}  root")
    for key, v in summary["variants"].items():
        print(f"{key:<14} {v['ok']:>6} {v['failed']:>6} {v['written']:>8} {v['skipped']:>8}  {v['root']}")
    print(
        f"{summary['written']} image(s) written, {summary['skipped']} verified and skipped, in "
        f"{summary['seconds']:.1f} s ({summary['images_per_second']:.1f} img/s); manifests: "
        f"{summary['out']}/<corruption>/<severity>/{MANIFEST_NAME}"
    )
    if summary["failed"]:
        bad = {}
        for f in summary["failures"]:
            bad.setdefault((f["image_id"], f["rel_path"]), f["error"])
        print(f"FAILED: {summary['failed']} degraded image(s) from {len(bad)} source image(s):", file=sys.stderr)
        for (image_id, rel), err in list(bad.items())[:20]:
            print(f"  image {image_id} {rel}: {err}", file=sys.stderr)
        if len(bad) > 20:
            print(f"  ... and {len(bad) - 20} more (see the manifests)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
