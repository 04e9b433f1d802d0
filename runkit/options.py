"""Command lines generated from config dataclasses: every option is one field, with its flag, default, help,
check and whether it changes the result written on the field itself.

    @dataclass(kw_only=True)
    class TrainConfig(RunOptions, PriorOptions):
        steps: int = option(1000, check=positive_int, help="optimisation steps")
        lr: float = option(1e-4, check=positive_number, result=True, help="Adam learning rate")

    parser = ArgumentParser(prog="python -m restoration.train", description=__doc__)
    add_config_arguments(parser, TrainConfig)              # --steps, --lr, and the run and prior groups
    cfg = config_from_args(TrainConfig, parser.parse_args(argv)).validate()

- `Options.validate` runs every field's check with the field's flag in the message, then the class's own
  `Options.check` for rules between fields;
- ``result=True`` marks the settings that change what a run computes: a run folder resumes only under the
  same values (`Options.result_settings`, read by `runkit.rundir.RunDir`);
- the option groups shared by the commands are dataclasses too: `RunOptions` (output folder, device,
  threads, seed, overwrite, progress) and `LoaderOptions` (DataLoader workers); ``--help`` lists each group
  under its own heading;
- ``--config FILE`` (a YAML/JSON file of settings, or a run's ``config.json``) replays a run: its values are
  the defaults, flags given on the command line override them (`runkit.cli.ArgumentParser`).

Imports none of the toolkit's other packages.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from runkit.checks import Check, nonnegative_int

__all__ = ["option", "Options", "RunOptions", "LoaderOptions", "add_config_arguments", "config_from_args",
           "flag_of", "read_settings_file", "default_workers"]


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,
           choices: Iterable[Any] | None = None, parse: Callable[[str], Any] | None = None,
           metavar: str | tuple[str, ...] | None = None, nargs: int | str | None = None,
           negative: str | None = None, negative_help: str | None = None, cli_default: Any = dataclasses.MISSING,
           required: bool = False, default_factory: Any = dataclasses.MISSING, result: bool = False,
           check: Check | None = None, repeat: bool = False, **field_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line option (`add_config_arguments`).

    - ``flag``: the option's name (default ``--field-name``); a name without dashes is a positional argument;
    - ``parse``: converts the command-line string (default: the field's type: int, float or str);
      ``choices`` restricts the typed string; ``cli_default``: the default as typed on the command line when
      it differs from the field's (``"off"`` for a bool read by ``parse``); ``nargs``/``metavar`` as argparse;
    - a bool field without ``parse`` is a switch: ``--flag`` sets True when its default is False; with
      default True the switch is ``negative`` (default ``--no-field-name``) and its help reads
      "disable: <help>" unless ``negative_help`` is given;
    - ``required``: the command line requires it even if the dataclass has a default for library callers;
    - ``result``: the setting changes what the command computes (a run resumes only under the same value);
    - ``check``: a `runkit.checks` check, run by `Options.validate` with the flag in its message;
    - ``repeat``: the flag may be given several times; the field is the list of values (default empty).
    """
    meta = {"help": help, "flag": flag, "choices": None if choices is None else tuple(choices), "parse": parse,
            "metavar": metavar, "nargs": nargs, "negative": negative, "negative_help": negative_help,
            "cli_default": cli_default, "required": required, "result": result, "check": check, "repeat": repeat}
    if repeat and default is dataclasses.MISSING and default_factory is dataclasses.MISSING:
        default_factory = list
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"cli": meta},
                             **field_kwargs)


def _meta(f: dataclasses.Field) -> dict[str, Any] | None:
    return f.metadata.get("cli")


def flag_of(config: Any, name: str) -> str:
    """The command-line flag of the field ``name`` of a config class or instance (``--batch-size``)."""
    f = {f.name: f for f in dataclasses.fields(config)}[name]
    meta = _meta(f)
    return (meta and meta["flag"]) or "--" + name.replace("_", "-")


@dataclass(kw_only=True)
class Options:
    """Base of every command's config: checks from the fields, the result settings, the flags."""

    def validate(self):
        """Run each field's check (its flag in the message), then `check`; returns self."""
        for f in dataclasses.fields(self):
            meta = _meta(f)
            if meta and meta["check"] is not None:
                meta["check"](flag_of(self, f.name), getattr(self, f.name))
        self.check()
        return self

    def check(self) -> None:
        """Rules between fields (a subclass raises ValueError naming the flags); nothing by default."""

    def flag(self, name: str) -> str:
        return flag_of(self, name)

    def result_settings(self) -> dict[str, Any]:
        """The settings marked ``result=True``, as JSON values: what a resumed run must agree on."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
                if (_meta(f) or {}).get("result")}

    def settings(self) -> dict[str, Any]:
        """Every field as JSON values (``config.json``)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def default_workers(cap: int = 2) -> int:
    """DataLoader workers by default: ``min(cap, usable CPUs)``, so torch never warns about more workers than
    CPUs (it compares against the process's CPU affinity)."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(cap, cpus))


@dataclass(kw_only=True)
class RunOptions(Options):
    """What every command that writes an output folder takes. A command redeclares ``out`` with its own help
    (and default), and leaves out what it does not use with ``add_config_arguments(skip=...)``."""

    _options_title = "run"

    out: str = option(help="output folder")
    device: str = option("auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    threads: int = option(0, check=nonnegative_int, help="torch CPU threads (0: torch's choice; 1 is fastest on a "
                                                       "busy shared CPU)")
    seed: int = option(0, check=nonnegative_int, result=True, help="seed of every random draw")
    overwrite: bool = option(False, help="write into --out although it holds files this command did not write or "
                                         "a run with other settings (that run is started again)")
    progress: bool = option(True, help="progress bars", negative_help="hide progress bars (shown by default)")


@dataclass(kw_only=True)
class LoaderOptions(Options):
    """For the commands that read images through a torch DataLoader."""

    _options_title = "run"

    loader_workers: int = option(default_workers(), check=nonnegative_int,
                                 help="DataLoader worker processes (0: load in the main process)")


# ---------------------------------------------------------------------------------------------------------------
# argparse from the fields
# ---------------------------------------------------------------------------------------------------------------
def _scalar_type(hint: Any) -> Any:
    """int / float / str behind ``X`` or ``X | None``; None for anything else."""
    if hint in (int, float, str):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 and args[0] in (int, float, str):
        return args[0]
    return None


def _declared_by(config_cls: type, name: str) -> type:
    """The class of the MRO (base first) that declares field ``name``: it decides the option's group."""
    for cls in reversed(config_cls.__mro__):
        if name in cls.__dict__.get("__annotations__", {}):
            return cls
    return config_cls


def _default(f: dataclasses.Field, meta: Mapping[str, Any], defaults: Mapping[str, Any]) -> Any:
    if f.name in defaults:
        return defaults[f.name]
    if meta["cli_default"] is not dataclasses.MISSING:
        return meta["cli_default"]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _argument(config_cls: type, f: dataclasses.Field, meta: Mapping[str, Any], hint: Any,
              defaults: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    default = _default(f, meta, defaults)
    kw: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
    if hint is bool and meta["parse"] is None:
        if default:
            flag = meta["negative"] or "--no-" + f.name.replace("_", "-")
            kw.update(action="store_false", default=True, help=meta["negative_help"] or f"disable: {meta['help']}")
        else:
            kw.update(action="store_true", default=False)
        return flag, kw
    if meta["repeat"] and typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    conv = meta["parse"] or _scalar_type(hint)
    if conv is None:
        raise TypeError(f"{config_cls.__name__}.{f.name}: give option(parse=...) for type {hint}")
    if meta["choices"] is not None:
        kw["choices"] = meta["choices"]
        conv = str if meta["parse"] is not None else conv  # parse runs in config_from_args
    else:
        kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
    kw.update(type=conv, default=default)
    if meta["repeat"]:
        kw.update(action="append", default=list(default or ()))
    if not flag.startswith("-"):  # positional: argparse takes its dest from the name
        kw.pop("dest")
        kw.pop("metavar", None)
    for key in ("metavar", "nargs"):
        if meta[key] is not None:
            kw[key] = meta[key]
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if (meta["required"] or (default is None and no_default)) and f.name not in defaults:
        kw["required"] = True
        kw.pop("default")
    return flag, kw


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, skip: Iterable[str] = (),
                         defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """Add one option per `option` field of ``config_cls`` (in field order, ``dest`` = field name), the
    shared groups (`RunOptions`, ...) under their own headings, and ``--config FILE``. ``defaults``
    overrides field defaults for this command line; ``skip`` leaves fields out."""
    hints = typing.get_type_hints(config_cls)
    skip, defaults = set(skip), dict(defaults or {})
    groups: dict[str, argparse._ArgumentGroup] = {}

    def group_for(name: str):
        title = _declared_by(config_cls, name).__dict__.get("_options_title")
        if title is None:
            return parser
        if title not in groups:
            groups[title] = parser.add_argument_group(f"{title} options")
        return groups[title]

    for f in dataclasses.fields(config_cls):
        meta = _meta(f)
        if meta is None or f.name in skip:
            continue
        flag, kw = _argument(config_cls, f, meta, hints.get(f.name), defaults)
        group_for(f.name).add_argument(flag, **kw)
    if not any(a.dest == "config_file" for a in parser._actions):  # once, when a parser adds several classes
        target = groups.get("run") or parser
        target.add_argument("--config", metavar="FILE", dest="config_file", default=None,
                            help="replay settings from a YAML/JSON file or a run's config.json; flags override it")
    return parser


def config_from_args(config_cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The ``config_cls`` instance from parsed ``args``: every field the namespace holds, then ``overrides``."""
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    values = {k: v for k, v in vars(args).items() if k in fields}
    for name, value in values.items():
        meta = _meta(fields[name])
        if meta and meta["parse"] is not None and meta["choices"] is not None and isinstance(value, str):
            values[name] = meta["parse"](value)
    values.update(overrides)
    return config_cls(**values)


def read_settings_file(path: str | Path) -> tuple[dict[str, Any], str | None]:
    """The settings in a ``--config`` file and the command that wrote it (None for a hand-written file).

    A YAML or JSON mapping of option names (``batch_size`` or ``batch-size``) to values, or a run's
    ``config.json`` (``{"command": ..., "settings": {...}}``, `runkit.rundir`)."""
    import yaml  # local: only --config needs it

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"--config {path} is not a readable YAML/JSON file ({type(err).__name__})") from None
    command = None
    if isinstance(doc, dict) and isinstance(doc.get("settings"), dict) and "command" in doc:
        command, doc = doc["command"], doc["settings"]
    if not isinstance(doc, dict):
        raise ValueError(f"--config {path} must hold a mapping of option names to values, found "
                         f"{type(doc).__name__}")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in doc.items()}, command
