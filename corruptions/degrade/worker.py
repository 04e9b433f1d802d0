"""The work of a build: decode each source image once, write all its pending degraded versions, in this
process or in spawned worker processes that die with their parent."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Sequence

from cubdata import ImageDecodeError, encode_image, load_rgb
from runkit.files import atomic_write_bytes
from runkit.process import die_with_parent, ignore_sigint

from corruptions.registry import Corruption

__all__ = ["Job", "ImageTask", "CorruptionFailed", "process_image", "probe_task", "run_tasks", "init_worker",
           "keep_freed_memory"]


class CorruptionFailed(RuntimeError):
    """A corruption (or the encoder) raised on an image: a bug of that corruption, a plug-in's above all. The
    message names the corruption, severity and image; the build stops (one line from the CLI)."""


@dataclass(frozen=True)
class Job:
    corruption: Corruption  # the registry entry itself: a worker needs no registration of its own (plug-ins)
    severity: int
    dst: str  # output file: OUT/<corruption>/<severity>/images/<rel path>, OUT as the caller gave it


@dataclass(frozen=True)
class ImageTask:
    image_id: int
    src: str
    jobs: tuple[Job, ...]
    seed: int
    fmt: str
    quality: int


#: glibc mallopt parameters (malloc.h) and the values a worker sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = {_M_MMAP_THRESHOLD: 256 << 20, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20}


def keep_freed_memory() -> bool:
    """glibc: keep the memory of freed image arrays for the next image instead of handing it back to the OS.

    Each CUB-sized image passes through a dozen float arrays of a few MB; by default glibc maps each afresh
    and unmaps it when freed, and the page faults of touching new pages were about 40% of the builder's CPU
    time (sys time), more with two workers. Kept memory is bounded by the largest working set (tens of MB).
    Setting any threshold turns off glibc's own adaptive ones for good, so only worker processes call this
    (`init_worker`), never a long-lived caller. Returns False where this is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        return all(libc.mallopt(k, v) == 1 for k, v in _KEEP.items())
    except (OSError, AttributeError):
        return False


def init_worker(parent_pid: int) -> None:
    """Pool initializer: die with the parent (`runkit.process.die_with_parent`), leave Ctrl-C to it (no
    traceback per worker; the parent stops the pool) and keep freed memory (`keep_freed_memory`)."""
    die_with_parent(parent_pid)
    ignore_sigint()
    keep_freed_memory()


def _result(task: ImageTask, job: Job, status: str, sha256=None, size=None, error=None) -> dict:
    return {"image_id": task.image_id, "corruption": job.corruption.name, "severity": job.severity,
            "status": status, "sha256": sha256, "bytes": size, "error": error}


def _degraded_bytes(task: ImageTask, job: Job, image) -> bytes:
    """The encoded output of one job; `CorruptionFailed` naming the image when the corruption or encoder raises."""
    rng = job.corruption.rng(task.seed, task.image_id, job.severity)
    try:
        return encode_image(job.corruption(image, job.severity, rng), task.fmt, task.quality)
    except Exception as err:  # name the image; the caller stops the run
        raise CorruptionFailed(
            f"corruption {job.corruption.name} severity {job.severity} failed on image {task.image_id} "
            f"({task.src}) of shape {image.shape}: {type(err).__name__}: {err}"
        ) from err


def process_image(task: ImageTask) -> list[dict]:
    """Decode one source image once and write all its pending degraded versions (runs in a worker).

    A source that cannot be decoded gives ``failed`` results; an exception inside a corruption or the
    encoder is a bug and propagates as `CorruptionFailed` (naming the image and corruption): the run stops.
    """
    try:
        image = load_rgb(task.src)
    except (ImageDecodeError, FileNotFoundError) as err:
        msg = f"{type(err).__name__}: {err}"
        return [_result(task, job, status="failed", error=msg) for job in task.jobs]
    results = []
    for job in task.jobs:
        data = _degraded_bytes(task, job, image)
        # no fsync per image: the manifest (written durably) holds its SHA-256 and a resume re-verifies it,
        # so an image lost to a power cut is redone
        atomic_write_bytes(job.dst, data, durable=False)
        results.append(_result(task, job, status="ok", sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    return results


def probe_task(task: ImageTask) -> bool:
    """Run every job of ``task`` in memory, writing nothing: a broken corruption (a plug-in that is no
    corruption, one returning the wrong array) raises `CorruptionFailed` before the build writes anything.
    False when the source image cannot be decoded (nothing was tried)."""
    try:
        image = load_rgb(task.src)
    except (ImageDecodeError, FileNotFoundError):
        return False
    for job in task.jobs:
        _degraded_bytes(task, job, image)
    return True


#: Builds with fewer source images and one worker run in this process (no spawn start-up, about 1.5 s).
IN_PROCESS_MAX_TASKS = 64


def _importable_in_workers(tasks: Sequence[ImageTask]) -> bool:
    """Whether a spawned process can import every corruption of ``tasks`` (not one defined in ``__main__``, a
    notebook or an exec'd module): otherwise a one-worker build stays in this process, as it always could."""
    import importlib.util

    for module in {getattr(job.corruption.fn, "__module__", None) for job in tasks[0].jobs}:
        try:
            spec = importlib.util.find_spec(module) if module and module != "__main__" else None
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.origin is None:
            return False
    return True


def run_tasks(tasks: Sequence[ImageTask], workers: int, record: Callable[[list[dict]], None]) -> None:
    """Run ``tasks`` on ``workers`` spawned processes (in this process for one worker and fewer than
    `IN_PROCESS_MAX_TASKS` source images) and pass each task's results to ``record`` as they come; the first
    exception cancels the rest and is raised."""
    in_process = workers == 1 and (len(tasks) < IN_PROCESS_MAX_TASKS or not _importable_in_workers(tasks))
    if len(tasks) <= 1 or in_process:
        for task in tasks:
            record(process_image(task))
    else:  # a pool even for one worker: its memory tuning (`init_worker`) must not outlive the build in this process
        _run_pool(tasks, min(workers, len(tasks)), record)


def _run_pool(tasks: Sequence[ImageTask], workers: int, record: Callable[[list[dict]], None]) -> None:
    ctx = multiprocessing.get_context("spawn")  # no fork: safe with threads / torch in the parent
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                                   initargs=(os.getpid(),))
    try:
        # keep a bounded number of tasks in flight (memory) while every worker stays busy
        it = iter(tasks)
        in_flight = {executor.submit(process_image, task) for _, task in zip(range(4 * workers), it)}
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in done:
                record(fut.result())  # re-raises a worker's exception here
                nxt = next(it, None)
                if nxt is not None:
                    in_flight.add(executor.submit(process_image, nxt))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
