"""How a command-line tool ends: expected failures reach the user as one line on stderr and exit code 2,
never a traceback (bad arguments, unreadable inputs, a full disk, a read-only --out); Ctrl-C is one line
("interrupted; rerun the same command to resume") and exit code 130; the summary is printed by one process
(rank 0 under torchrun).

Every CLI's ``main(argv)`` parses its arguments and hands the work to `run_cli`, which checks the config, the
thread count and ``--out`` before any work:

    def main(argv=None) -> int:
        cfg = config_from_args(XConfig, build_parser().parse_args(argv))
        return run_cli(lambda: do_the_work(cfg), config=cfg, threads=cfg.threads, out=cfg.out,
                       report=print_summary)

Imports none of the toolkit's other packages; torch only when ``threads`` is set.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
from typing import Any, Callable, Mapping

__all__ = ["EXPECTED_ERRORS", "UnreadableInputError", "INTERRUPTED", "error_kind", "one_line", "storage_message",
           "run_cli"]


class UnreadableInputError(OSError):
    """An input file exists but cannot be read (e.g. `cubdata.ImageDecodeError`). A subclass may set ``hint``:
    advice `run_cli` appends to its one-line message."""

    hint = ""


#: What a command-line tool reports as one line: bad arguments, missing or unreadable inputs (CubLayoutError,
#: PriorCheckpointMismatch, UnmatchedPairsError and RankFailed are ValueErrors).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, UnreadableInputError)

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def error_kind(err: BaseException) -> str:
    """``struct.error``, ``RuntimeError``: the exception's class name, qualified when it is not a builtin."""
    cls = type(err)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def one_line(err: BaseException) -> str:
    """The exception's message on one line (runs of whitespace, newlines included, become one space). An
    exception re-raised from a DataLoader worker (whose message is the worker's whole traceback) gives the
    original exception's own message."""
    return " ".join(_worker_origin(err).split())


def _worker_origin(err: BaseException) -> str:
    """The message of ``err`` without torch's DataLoader-worker wrapping ("Caught X in DataLoader worker
    process N. Original Traceback ... <module>.X: message"): the text after the last ``X: `` line."""
    text = str(err)
    if not text.startswith("Caught ") or "\nOriginal Traceback" not in text:
        return text
    cls = type(err)
    names = (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: ")
    lines = text.splitlines()
    for i in range(len(lines) - 1, 0, -1):
        for name in names:
            if lines[i].startswith(name):
                return "\n".join([lines[i][len(name):], *lines[i + 1:]])
    return text


#: The ``errno`` of a write that failed for lack of room (disk full, quota) or on a read-only file system.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EROFS,)
INTERRUPTED = "interrupted; rerun the same command to resume"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _nearest_folder(path: str | os.PathLike | None) -> str | None:
    if path is None:
        return None
    p = os.path.abspath(os.fspath(path))
    while p and not os.path.isdir(p):
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent
    return p


def storage_message(err: OSError, out: str | os.PathLike | None = None) -> str | None:
    """One line for a write that failed for lack of room, on a read-only file system or for lack of
    permission: the file (or ``out``), the folder, its free space and what the write needed (``needed_bytes``,
    set by `runkit.files.atomic_write_bytes`), and what to do. None for any other error."""
    target = err.filename if err.filename is not None else out
    folder = _nearest_folder(os.path.dirname(os.fspath(target)) if err.filename is not None else target)
    where = f"{target}" if target is not None else "the output"
    if err.errno in DISK_FULL:
        try:
            free = _size(shutil.disk_usage(folder).free) if folder else "unknown"
        except OSError:
            free = "unknown"
        needed = getattr(err, "needed_bytes", None)
        need = f", this file needs {_size(needed)}" if needed else ""
        kind = "disk quota exceeded" if err.errno == errno.EDQUOT else "disk full"
        return (f"{kind} writing {where}: {folder} has {free} free{need}; free some space there (or choose another "
                "--out) and rerun the same command to resume")
    if err.errno in READ_ONLY:
        return f"cannot write {where}: {folder} is on a read-only file system; choose another --out"
    if isinstance(err, PermissionError):
        return f"permission denied: {where}; make it readable/writable for you, or choose another path"
    return None


def run_cli(run: Callable[[], Any], *, config: Any = None, threads: int | None = None,
            errors: tuple[type[BaseException], ...] = EXPECTED_ERRORS,
            hints: Mapping[type[BaseException], str] | None = None,
            report: Callable[[Any], None] | None = None, out: str | os.PathLike | None = None,
            out_kind: str = "folder") -> int:
    """Run a command's work and turn its end into an exit code.

    Configures logging (INFO, one line per record), then checks, before any work: ``config`` (an
    `runkit.options.Options`: its ``validate()``), ``threads`` (an integer >= 0) and ``out`` (`runkit.cli.check_out`:
    a ``out_kind`` "folder" or "file" in a writable place). Runs ``run()`` with ``threads`` torch CPU threads
    (0 or None: torch's choice; restored afterwards), and returns 2 after printing ``error: <message>`` on one
    stderr line when it raises one of ``errors`` (``hints`` add advice per exception type; by default the
    exception's own ``hint`` attribute, see `UnreadableInputError`), or an OSError of a full disk, a
    read-only file system or a refused permission (`storage_message`). Ctrl-C prints `INTERRUPTED` and
    returns 130. Otherwise ``report(result)`` runs on rank 0 only (``RANK`` of torchrun, 0 without it) and
    the exit code is 0, or ``run``'s own result when that is an int and no ``report`` is given.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        if config is not None:
            config.validate()
        if threads is not None:
            from runkit.checks import nonnegative_int

            nonnegative_int("--threads", threads)
        if out is not None:
            from runkit.cli import check_out

            check_out(out, out_kind)
        with _threads(threads):
            result = run()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except errors as err:
        if hints is None:
            hint = getattr(err, "hint", "") or ""
        else:
            hint = next((text for cls, text in hints.items() if isinstance(err, cls)), "")
        print(f"error: {one_line(err)}{hint}", file=sys.stderr)
        return 2
    except OSError as err:
        message = storage_message(err, out)
        if message is None:
            raise
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    if report is None:
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 reports for all
        report(result)
    return 0


def _threads(threads: int | None) -> contextlib.AbstractContextManager:
    if not threads:
        return contextlib.nullcontext()
    from runkit.runtime import torch_threads  # imports torch: only for the tools that set threads

    return torch_threads(threads)
