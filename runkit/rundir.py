"""A command's run folder: what it may write there, whether it resumes, and its records.

Every command that writes a folder of results (the three training loops, and the evaluations) goes through
one `RunDir`:

    rd = RunDir(cfg.out, "restoration.train", cfg, outputs=("ckpt.pt", "log.csv", "val.csv", "*.png"))
    rd.check()          # before any work: refuses a folder holding files this command did not write, or a run
                        # of it with other result settings (unless --overwrite); says whether it resumes
    ...                 # check every input, build the model
    rd.start()          # the first write: the folder and config.json
    rd.write_table("log.csv", rows, LOG_FIELDS); rd.finish({"step": 1000, ...})   # done.json

``config.json`` holds ``{"format", "command", "settings"}`` (every option of the run; ``--config`` replays
it). A rerun of the same command with the same result settings (the options marked ``result=True``)
resumes; with ``--overwrite`` it starts again. A foreign file is never deleted.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from runkit.files import atomic_write_text, read_csv, write_csv

log = logging.getLogger(__name__)

__all__ = ["RunDir", "RUN_FORMAT", "read_table", "write_json"]

RUN_FORMAT = "runkit-run/1"
#: What every run folder may hold besides its command's outputs: the records and interrupted atomic writes.
RECORDS = ("config.json", "done.json", ".*.tmp")


def _number(value: str | None) -> int | float:
    if value in ("", None):
        return float("nan")
    try:
        return int(value)
    except ValueError:
        return float(value)


def read_table(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a run's CSV table (``log.csv``...) as dicts of numbers (integers stay int; empty -> NaN)."""
    return [{k: _number(v) for k, v in row.items()} for row in read_csv(path)]


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _temp(rel: str) -> bool:
    """An atomic write cut short (``.<name>.*.tmp``)."""
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def _clean(value: Any) -> Any:
    """JSON-normalised (tuples -> lists, NaN -> None), for comparing settings read back from a file."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class RunDir:
    """The folder ``path`` of one run of ``command``.

    ``config``: the run's options (an `runkit.options.Options`: its ``settings()``, ``result_settings()`` and
    ``overwrite`` are read) or a plain mapping of settings (then ``result`` names the keys that must match to
    resume). ``outputs``: the names or glob patterns (relative, POSIX; ``"samples/*"``) of the files the
    command writes besides the records; anything else in the folder is foreign."""

    def __init__(self, path: str | os.PathLike, command: str, config: Any, *, outputs: Iterable[str] = (),
                 result: Sequence[str] | None = None, overwrite: bool | None = None, flag: str = "--out") -> None:
        self.path = Path(path)
        self.command = command
        if hasattr(config, "settings") and callable(config.settings):
            self.settings = config.settings()
            self.result = config.result_settings()
            self.overwrite = bool(getattr(config, "overwrite", False)) if overwrite is None else overwrite
        else:
            self.settings = _clean(dict(config))
            self.result = {k: self.settings.get(k) for k in (result or ())}
            self.overwrite = bool(overwrite)
        self.outputs = tuple(outputs)
        self.flag = flag
        self.previous: dict[str, Any] | None = None  # config.json of the run this one continues
        self.checked = False

    # ------------------------------------------------------------------ deciding
    def file(self, name: str) -> Path:
        return self.path / name

    def _ours(self, rel: str) -> bool:
        return any(fnmatch.fnmatch(rel, p) for p in RECORDS + self.outputs) or _temp(rel)

    def _files(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return [p.relative_to(self.path).as_posix() for p in sorted(self.path.rglob("*")) if not p.is_dir()]

    def foreign_files(self) -> list[str]:
        """Files in the run folder that this command does not write (relative, sorted)."""
        return [rel for rel in self._files() if not self._ours(rel)]

    def read_config(self) -> dict[str, Any] | None:
        """The folder's ``config.json`` when it is a run record of this command (None otherwise)."""
        path = self.file("config.json")
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = isinstance(doc, dict) and doc.get("format") == RUN_FORMAT and doc.get("command") == self.command
        return doc if ok and isinstance(doc.get("settings"), dict) else None

    def check(self) -> "RunDir":
        """Decide what this run does in its folder; writes nothing. Raises ValueError (one line) for a file in
        place of the folder, foreign files, or a run of this command with other result settings, unless
        ``overwrite``. Without a ``config.json`` of this command every file is foreign, even one named like an
        output (``val.csv``): a run writes ``config.json`` first. Sets `resuming`."""
        self.checked = True
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.flag} {self.path} is a file; give a folder")
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return self
        previous = self.read_config()
        if self.file("config.json").is_file() and previous is None and not self.overwrite:
            raise ValueError(f"{self.flag} {self.path} holds a config.json not written by {self.command}; choose "
                             "another folder, or pass --overwrite to write into this one anyway")
        foreign = self.foreign_files()
        if previous is None:  # config.json is a run's first write: without it, even our output names are not ours
            foreign = sorted(set(foreign) | {rel for rel in self._files() if not _temp(rel)})
        if foreign and not self.overwrite:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ValueError(f"{self.flag} {self.path} holds files {self.command} did not write ({shown}); choose "
                             "an empty folder, or pass --overwrite to write into this one anyway")
        if previous is None:
            return self
        old = _clean(previous["settings"])
        changed = [k for k in self.result if _clean(old.get(k)) != _clean(self.result[k])]
        if changed and not self.overwrite:
            diff = "; ".join(f"{k}: {old.get(k)!r} there, {self.result[k]!r} now" for k in changed)
            raise ValueError(f"{self.flag} {self.path} holds a {self.command} run with other settings ({diff}); "
                             "rerun with its settings to resume it (--config "
                             f"{self.file('config.json')}), choose another folder, or pass --overwrite to start "
                             "again")
        if not changed and not self.overwrite:
            self.previous = previous
        return self

    @property
    def resuming(self) -> bool:
        """Whether the folder holds this command's earlier run with the same result settings (to continue)."""
        return self.previous is not None

    # ------------------------------------------------------------------ writing
    def start(self, clear: Iterable[str] = ()) -> "RunDir":
        """Make the folder and write ``config.json``: the first write of a run, after every check. A run that
        does not resume first removes its own earlier outputs named in ``clear`` (e.g. a checkpoint of a run
        started again with --overwrite) and ``done.json``; foreign files are never removed."""
        if not self.checked:
            raise RuntimeError("RunDir.start() before check()")
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.resuming:
            for name in (*clear, "done.json"):
                target = self.file(name)
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        write_json(self.file("config.json"), {"format": RUN_FORMAT, "command": self.command,
                                              "settings": self.settings})
        return self

    def write_table(self, name: str, rows: Sequence[Mapping[str, Any]], fields: Sequence[str],
                    float_format: str | None = None) -> Path:
        return write_csv(self.file(name), rows, fields, float_format)

    def read_table(self, name: str, up_to_step: int | None = None) -> list[dict[str, float]]:
        """The rows of a table of this folder (none when absent), those up to ``up_to_step`` when given: what a
        run resumed at that step keeps of its earlier log."""
        path = self.file(name)
        rows = read_table(path) if path.is_file() else []
        return [r for r in rows if r["step"] <= up_to_step] if up_to_step is not None else rows

    def finish(self, summary: Mapping[str, Any]) -> Path:
        """``done.json``: the run's settings and ``summary``."""
        return write_json(self.file("done.json"), {"command": self.command, "settings": self.settings,
                                                   **dict(summary)})

    def done(self) -> dict[str, Any] | None:
        path = self.file("done.json")
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
