"""How a command-line tool ends: expected failures reach the user as one line on stderr and exit code 2,
never a traceback; the summary is printed by one process (rank 0 under torchrun).

Every CLI's ``main(argv)`` parses its arguments and hands the work to `run_cli`:

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)
        return run_cli(lambda: do_the_work(args), threads=args.threads, report=print_summary)

Imports none of the toolkit's other packages; torch only when ``threads`` is set.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Callable, Mapping

__all__ = ["EXPECTED_ERRORS", "UnreadableInputError", "error_kind", "one_line", "run_cli"]


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
    """The exception's message on one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(str(err).split())


def run_cli(run: Callable[[], Any], *, threads: int | None = None,
            errors: tuple[type[BaseException], ...] = EXPECTED_ERRORS,
            hints: Mapping[type[BaseException], str] | None = None,
            report: Callable[[Any], None] | None = None, out: str | os.PathLike | None = None,
            out_kind: str = "folder") -> int:
    """Run a command's work and turn its end into an exit code.

    Configures logging (INFO, one line per record), runs ``run()`` with ``threads`` torch CPU threads (0 or
    None: torch's choice; restored afterwards), and returns 2 after printing ``error: <message>`` on one
    stderr line when it raises one of ``errors`` (``hints`` add advice per exception type; by default the
    exception's own ``hint`` attribute, see `UnreadableInputError`). Otherwise ``report(result)`` runs on rank 0 only (``RANK`` of torchrun, 0 without it)
    and the exit code is 0, or ``run``'s own result when that is an int and no ``report`` is given.
    ``out``: the command's output path, checked first (`runkit.cli.check_out`: a ``out_kind`` "folder" or
    "file" in a writable place), so a wrong one is refused before any work.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        if out is not None:
            from runkit.cli import check_out

            check_out(out, out_kind)
        with _threads(threads):
            result = run()
    except errors as err:
        if hints is None:
            hint = getattr(err, "hint", "") or ""
        else:
            hint = next((text for cls, text in hints.items() if isinstance(err, cls)), "")
        print(f"error: {one_line(err)}{hint}", file=sys.stderr)
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
