"""Child processes that never outlive their parent: the pool workers of `corruptions.degrade` and the
DataLoader workers of every command (fine-tuning, the training loops, scoring).

A worker calls `die_with_parent` first thing (a pool's ``initializer``, a DataLoader's ``worker_init_fn``
from `loader_worker_init`), so that a parent killed by SIGKILL, when none of its clean-up runs, takes its
workers with it instead of leaving them reparented to PID 1, still reading files or writing into an output
folder. `ignore_sigint` keeps Ctrl-C in the terminal (sent to the whole process group) to the parent, which
stops its workers itself and reports the interruption in one line.

Imports none of the toolkit's other packages, and not torch.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from typing import Callable

__all__ = ["die_with_parent", "watch_parent", "ignore_sigint", "loader_worker_init"]


def die_with_parent(parent_pid: int) -> None:
    """End this process as soon as its parent ``parent_pid`` dies, even by SIGKILL (when no clean-up of the
    parent runs). Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); elsewhere a
    watchdog thread polls the parent pid. Draws no random number (a DataLoader's seeding is unchanged)."""
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
    threading.Thread(target=watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Poll until this process is reparented (its parent ``parent_pid`` is gone), then exit with status 1."""
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)  # reparented: the parent is gone


def ignore_sigint() -> None:
    """Leave Ctrl-C to the parent: a worker that ignores SIGINT prints no KeyboardInterrupt traceback of its
    own; the parent stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader_worker_init(parent_pid: int, worker_id: int) -> None:
    die_with_parent(parent_pid)


def loader_worker_init() -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` that makes each worker die with this process (`die_with_parent`).
    Picklable (spawn start method too); it touches no RNG, so the workers' seeds are torch's as before."""
    return functools.partial(_loader_worker_init, os.getpid())
