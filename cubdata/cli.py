"""Plumbing shared by every command-line tool of the toolkit: the help formatter and the flag defaults that
must mean the same thing in every CLI (``--device auto``, ``--workers``).

Imports none of the toolkit's other packages; torch is imported only when a device is resolved.
"""
from __future__ import annotations

import argparse
import os
import re

__all__ = ["HelpFormatter", "resolve_device_name", "default_workers"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks (the example commands of a module docstring stay copyable) and
    shows each option's default once, as ``(default: X)``.

    No default is added where the help text already speaks of one (a hand-written ``default ...`` that says
    more than the value, or BooleanOptionalAction's own ``%(default)s``), nor where the default carries no
    information: ``None`` (the help says what happens instead), ``False`` of a ``store_true`` flag and the
    empty list of an ``append`` option."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or re.search(r"\bdefault\b", text, flags=re.IGNORECASE):
            return text
        if not _informative(action.default):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return text + " (default: %(default)s)"


def _informative(default) -> bool:
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, (list, tuple, str)) and len(default) == 0)


def resolve_device_name(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when CUDA is available, else ``"cpu"``; any other name is returned unchanged.

    CLIs default ``--device`` to ``auto`` (so ``--help`` shows the same default on every machine) and resolve
    it here before calling library functions that take a torch device name."""
    if str(device) != "auto":
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers(cap: int = 2) -> int:
    """DataLoader workers by default: ``min(cap, usable CPUs)``, so torch never warns about more workers than
    CPUs (it compares against the process's CPU affinity)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(cap, cpus))
