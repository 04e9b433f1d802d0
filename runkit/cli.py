"""The command line every tool of the toolkit shares: argparse with one-line errors and ``--config`` replay,
the help formatter, ``--device auto``, ``--set LABEL=ROOT[,ROOT...]`` and the ``--out`` check made before any
work. The options themselves come from config dataclasses (`runkit.options`).

Imports none of the toolkit's other packages; torch is imported only when a device is resolved.
"""
from __future__ import annotations

import argparse
import os
import re
import typing
from typing import Any, Sequence

__all__ = ["HelpFormatter", "ArgumentParser", "check_out", "resolve_device_name", "parse_set"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks (the example commands of a module docstring stay copyable) and
    shows each option's default once, as ``(default: X)``.

    No default is added where the help text already speaks of one (a hand-written ``default ...`` that says
    more than the value, or BooleanOptionalAction's own ``%(default)s``), nor where the default carries no
    information: ``None`` (the help says what happens instead), ``False`` of a ``store_true`` flag and the
    empty list of an ``append`` option."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text  # a switch: its help says what it does
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


# ---------------------------------------------------------------------------------------------------------------
# one line for every mistake on the command line, and --out checked before any work
# ---------------------------------------------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse with the toolkit's `HelpFormatter`, one-line errors (``error: <what> (see PROG --help)`` on
    stderr, exit code 2; argparse's own prints the whole usage block first) and ``--config FILE``: the
    file's settings become the defaults (options it supplies are no longer required), and the flags typed
    on the command line override them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        args = list(args) if args is not None else None
        path = _config_file_arg(args)
        if path is not None and any(a.dest == "config_file" for a in self._actions):
            self._apply_settings_file(path)
        return super().parse_known_args(args, namespace)

    def _apply_settings_file(self, path: str) -> None:
        from runkit.options import read_settings_file

        try:
            settings, command = read_settings_file(path)
        except (ValueError, FileNotFoundError) as err:
            self.error(str(err))
        if command is not None and command != self.prog.removeprefix("python -m "):
            self.error(f"--config {path} holds a run of {command}, not of {self.prog}")
        dests = {a.dest: a for a in self._actions if a.dest not in ("help", "config_file")}
        unknown = sorted(set(settings) - set(dests))
        if unknown and command is None:
            self.error(f"--config {path}: unknown option(s) {', '.join(unknown)}")
        for name, value in settings.items():
            if name in dests:
                dests[name].required = False
                self.set_defaults(**{name: value})


def _config_file_arg(args: Sequence[str] | None) -> str | None:
    """The value of ``--config FILE`` / ``--config=FILE`` in ``args`` (sys.argv when None)."""
    import sys

    args = sys.argv[1:] if args is None else args
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def parse_set(text: str, flag: str = "--set") -> tuple[str, list[str]]:
    """``"LABEL=ROOT[,ROOT...]"`` -> ``(label, [roots])``: one labelled set of images and, with commas, its
    replicates (one root per restorer seed). The label is split at the *last* ``=``, so it may hold ``=``
    only if a root is given; it may hold ``/`` (``"w/ DiffLoss/fog"``)."""
    label, sep, roots = str(text).rpartition("=")
    paths = [r.strip() for r in roots.split(",")]
    if not sep or not label.strip() or not all(paths):
        raise ValueError(f"{flag} {text!r}: expected LABEL=ROOT or LABEL=ROOT1,ROOT2,... (one root per seed)")
    return label.strip(), paths


def check_out(path: str | os.PathLike, kind: str = "folder", flag: str = "--out") -> None:
    """Refuse, before any work, an output path a command could not write: ``kind="folder"`` must not be an
    existing file, ``kind="file"`` must not be an existing folder; the nearest existing parent must be a folder
    (not ``FILE/sub``) that this process may write into (not read-only: permissions or a read-only mount)."""
    p = os.path.abspath(os.fspath(path))
    if kind == "folder" and os.path.exists(p) and not os.path.isdir(p):
        raise ValueError(f"{flag} {path} is a file; give a folder")
    if kind == "file" and os.path.isdir(p):
        raise ValueError(f"{flag} {path} is a folder; give a file path (a new file name, inside it or elsewhere)")
    parent = p if kind == "folder" and os.path.isdir(p) else os.path.dirname(p)
    while not os.path.exists(parent):  # absolute: ends at the root at the latest
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; choose a path under a folder")
    if not _writable(parent):
        raise ValueError(f"{flag} {path}: {parent} is not writable (read-only or no permission); choose another "
                         f"{flag} or make it writable")


def _writable(folder: str) -> bool:
    """Whether this process may create files in ``folder``: permission (``os.access``, root passes) and a
    file system not mounted read-only (which ``os.access`` does not always see)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        return not os.statvfs(folder).f_flag & os.ST_RDONLY
    except (OSError, AttributeError):  # no statvfs (Windows): permission is all we can tell
        return True
