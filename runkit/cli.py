"""Plumbing shared by every command-line tool of the toolkit: the help formatter and the flag defaults that
must mean the same thing in every CLI (``--device auto``, ``--workers``).

Imports none of the toolkit's other packages; torch is imported only when a device is resolved.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from typing import Any, Callable, Iterable, Mapping

__all__ = ["HelpFormatter", "ArgumentParser", "check_out", "resolve_device_name", "default_workers", "option",
           "add_config_arguments",
           "config_from_args"]


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


def default_workers(cap: int = 2) -> int:
    """DataLoader workers by default: ``min(cap, usable CPUs)``, so torch never warns about more workers than
    CPUs (it compares against the process's CPU affinity)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(cap, cpus))


# ---------------------------------------------------------------------------------------------------------------
# CLIs generated from config dataclasses: a new option is one field with its help text
# ---------------------------------------------------------------------------------------------------------------
def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, aliases: Iterable[str] = (),
           choices: Iterable[Any] | None = None, parse: Callable[[str], Any] | None = None, metavar: str | None = None,
           negative: str | None = None, negative_help: str | None = None, cli_default: Any = dataclasses.MISSING, required: bool = False,
           default_factory: Any = dataclasses.MISSING, **field_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line option (`add_config_arguments`).

    - ``flag``: the option's name (default ``--field-name``); ``aliases``: older spellings, accepted but
      hidden from ``--help``;
    - ``parse``: converts the command-line string (default: the field's type: int, float or str);
      ``choices`` restricts the string; ``cli_default``: the default as typed on the command line, when it
      differs from the field's (e.g. ``"off"`` for a bool read by ``parse``); with ``choices``, ``parse``
      is applied by `config_from_args` (argparse checks the typed string against the choices);
    - a bool field without ``parse`` is a switch: ``--flag`` sets True when its default is False;
      with default True the switch is ``negative`` (default ``--no-field-name``), sets False, and its
      help reads "disable: <help>" unless ``negative_help`` is given;
    - ``required``: the CLI requires it even if the dataclass has no default for other callers.
    """
    meta = {"help": help, "flag": flag, "aliases": tuple(aliases), "choices": None if choices is None else tuple(choices),
            "parse": parse, "metavar": metavar, "negative": negative, "negative_help": negative_help, "cli_default": cli_default, "required": required}
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"cli": meta}, **field_kwargs)


def _scalar_type(hint: Any) -> Any:
    """int / float / str behind ``X`` or ``X | None``; None for anything else."""
    if hint in (int, float, str):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 and args[0] in (int, float, str):
        return args[0]
    return None


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, skip: Iterable[str] = (),
                         defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """Add one option per `option` field of the dataclass ``config_cls`` (in field order), each storing into
    ``dest=field name``; ``defaults`` overrides field defaults for this CLI, ``skip`` leaves fields out."""
    hints = typing.get_type_hints(config_cls)
    skip, defaults = set(skip), dict(defaults or {})
    for f in dataclasses.fields(config_cls):
        meta = f.metadata.get("cli")
        if meta is None or f.name in skip:
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        if f.name in defaults:
            default = defaults[f.name]
        elif meta["cli_default"] is not dataclasses.MISSING:
            default = meta["cli_default"]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        kw: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if hints.get(f.name) is bool and meta["parse"] is None:
            if default:
                flag = meta["negative"] or "--no-" + f.name.replace("_", "-")
                kw.update(action="store_false", default=True, help=meta["negative_help"] or f"disable: {meta['help']}")
            else:
                kw.update(action="store_true", default=False)
        else:
            conv = meta["parse"] or _scalar_type(hints.get(f.name))
            if conv is None:
                raise TypeError(f"{config_cls.__name__}.{f.name}: give option(parse=...) for type {hints.get(f.name)}")
            if meta["choices"] is not None:
                kw["choices"] = meta["choices"]
                conv = str if meta["parse"] is not None else conv  # parse runs in config_from_args
            else:
                kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
            kw.update(type=conv, default=default)
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
            if meta["required"] or (default is None and f.default is dataclasses.MISSING
                                    and f.default_factory is dataclasses.MISSING):
                kw["required"] = True
                kw.pop("default")
        parser.add_argument(flag, **kw)
        for alias in meta["aliases"]:
            alias_kw = {k: v for k, v in kw.items() if k not in ("help", "required")}
            parser.add_argument(alias, **dict(alias_kw, default=argparse.SUPPRESS, help=argparse.SUPPRESS))
    return parser


def config_from_args(config_cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The ``config_cls`` instance from parsed ``args``: every field the namespace holds, then ``overrides``."""
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    values = {k: v for k, v in vars(args).items() if k in fields}
    for name, value in values.items():
        meta = fields[name].metadata.get("cli")
        if meta and meta["parse"] is not None and meta["choices"] is not None and isinstance(value, str):
            values[name] = meta["parse"](value)
    values.update(overrides)
    return config_cls(**values)


# ---------------------------------------------------------------------------------------------------------------
# one line for every mistake on the command line, and --out checked before any work
# ---------------------------------------------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse with the toolkit's `HelpFormatter` and one-line errors: ``error: <what>; see --help`` on stderr,
    exit code 2 (argparse's own prints the whole usage block first)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def check_out(path: str | os.PathLike, kind: str = "folder", flag: str = "--out") -> None:
    """Refuse, before any work, an output path of the wrong kind: ``kind="folder"`` must not be an existing
    file, ``kind="file"`` must not be an existing folder; the nearest existing parent must be writable."""
    p = os.path.abspath(os.fspath(path))
    if kind == "folder" and os.path.exists(p) and not os.path.isdir(p):
        raise ValueError(f"{flag} {path} is a file; give a folder")
    if kind == "file" and os.path.isdir(p):
        raise ValueError(f"{flag} {path} is a folder; give a file path (e.g. {os.path.join(os.fspath(path), 'model.pt')})")
    parent = p if kind == "folder" and os.path.isdir(p) else os.path.dirname(p)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path}: {parent} is not writable")
