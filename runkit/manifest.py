"""The one resumable-job record used by the builder, the restorer and the h-space study.

A manifest is a JSON file beside a job's outputs: a ``format`` tag, the ``settings`` that decide the output
bytes, whether the job is ``complete``, and one entry per finished item (usually with the SHA-256 of its
output file). A re-run with the same settings skips the items whose entry is there and whose file still
matches its digest, and redoes the rest; a manifest written with other settings, of another format or
unreadable is ignored (with a warning) and everything is redone. Saves are atomic, so a job killed at any
point leaves the last saved manifest intact, and `Manifest.save_due` paces saves so they stay cheap.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from runkit.files import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

__all__ = ["Manifest"]


class Manifest:
    """A job's settings and finished items, loaded from and saved to ``path``.

    ``Manifest.open(path, fmt, settings)`` resumes from an existing file when its format and settings match
    (``pinned``: compare only these settings keys) and starts empty otherwise; ``resumed`` says which, and
    ``reason`` why not. ``entries`` maps item keys (strings) to dicts; ``entries_key`` names them in the
    file (``"images"`` for the builder's and restorer's manifests, ``"done"`` for the h-space study's).
    """

    def __init__(self, path: str | os.PathLike, fmt: str, settings: Mapping[str, Any], *,
                 entries_key: str = "entries", min_interval: float = 0.5) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.settings = dict(settings)
        self.entries_key = entries_key
        self.entries: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self.resumed = False
        self.reason = "no manifest"
        self.min_interval = float(min_interval)
        self._last_save = 0.0
        self._last_cost = 0.0
        self.dirty = True

    # ------------------------------------------------------------------ reading
    @staticmethod
    def read(path: str | os.PathLike, fmt: str | None = None) -> dict[str, Any] | None:
        """The document at ``path`` (None when absent, unreadable, not an object or of another format)."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable manifest %s (%s)", path, err)
            return None
        if not isinstance(doc, dict) or (fmt is not None and doc.get("format") != fmt):
            log.warning("ignoring manifest %s of another format (expected %s)", path, fmt)
            return None
        return doc

    @classmethod
    def open(cls, path: str | os.PathLike, fmt: str, settings: Mapping[str, Any], *,
             pinned: Sequence[str] | None = None, entries_key: str = "entries",
             min_interval: float = 0.5) -> "Manifest":
        m = cls(path, fmt, settings, entries_key=entries_key, min_interval=min_interval)
        doc = cls.read(m.path, fmt)
        if doc is None:
            m.reason = "no manifest" if not m.path.exists() else "unreadable or of another format"
            return m
        keys = list(pinned) if pinned is not None else sorted(set(m.settings) | set(doc.get("settings", {})))
        old = doc.get("settings", {})
        changed = [k for k in keys if old.get(k) != m.settings.get(k)]
        entries = doc.get(entries_key)
        if changed or not isinstance(entries, dict):
            m.reason = f"written with other settings ({', '.join(changed)})" if changed else "no entries"
            log.warning("manifest %s was %s: everything is redone", m.path, m.reason)
            return m
        m.entries = {str(k): dict(v) for k, v in entries.items() if isinstance(v, dict)}
        m.extra = {k: v for k, v in doc.items() if k not in ("format", "settings", "complete", entries_key)}
        m.resumed, m.reason, m.dirty = True, "", False
        return m

    def verified(self, key: str, file: str | os.PathLike | None = None) -> bool:
        """True when ``key`` is recorded and, for an entry with a ``sha256``, ``file`` exists and matches it.
        An entry without a digest is trusted only when no file is given."""
        entry = self.entries.get(str(key))
        if entry is None:
            return False
        if file is None:
            return True
        digest = entry.get("sha256")
        return bool(digest) and Path(file).is_file() and sha256_file(file) == digest

    # ------------------------------------------------------------------ writing
    def record(self, key: str, entry: Mapping[str, Any]) -> None:
        self.entries[str(key)] = dict(entry)
        self.dirty = True

    def forget(self, key: str) -> None:
        if self.entries.pop(str(key), None) is not None:
            self.dirty = True

    def document(self, complete: bool = False) -> dict[str, Any]:
        return {"format": self.fmt, "settings": self.settings, **self.extra, "complete": bool(complete),
                self.entries_key: self.entries}

    def save(self, complete: bool = False) -> Path:
        """Write the manifest atomically: settings pretty-printed, then one line per entry (readable, small)."""
        t = time.monotonic()
        doc = self.document(complete)
        entries = doc.pop(self.entries_key)
        head = [f" {json.dumps(k)}: {json.dumps(v, indent=None)}," for k, v in doc.items()]
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items())
        text = ("{\n" + "\n".join(head) + f"\n {json.dumps(self.entries_key)}: {{\n" + body
                + ("\n" if body else "") + " }\n}\n")
        atomic_write_text(self.path, text)
        self.dirty = False
        self._last_save = time.monotonic()
        self._last_cost = self._last_save - t
        return self.path

    def save_due(self, max_interval: float = 30.0) -> bool:
        """Whether a save is due: often while saves are cheap, keeping their cost under ~5% of the run as the
        manifest grows, and at least every ``max_interval`` seconds."""
        interval = min(float(max_interval), max(self.min_interval, 20.0 * self._last_cost))
        return self.dirty and time.monotonic() - self._last_save >= interval
