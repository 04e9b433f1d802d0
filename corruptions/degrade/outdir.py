"""The output folder: where each variant goes, and the check that a build never writes into a folder it did
not create (unless told ``--overwrite``)."""
from __future__ import annotations

import os
from pathlib import Path

from cubdata import METADATA_FILES

from corruptions._checks import SEVERITIES, check_severity
from corruptions.registry import get_corruption_names

__all__ = ["BuildConfigError", "MANIFEST_NAME", "variant_root", "check_out_folder", "remove_stray_temp_files"]

MANIFEST_NAME = "manifest.json"
#: What a variant root holds when this builder wrote it (besides hidden ``.<name>.*.tmp`` files of a killed run).
_VARIANT_FILES = frozenset(METADATA_FILES) | {MANIFEST_NAME}


class BuildConfigError(ValueError):
    """The output folder holds a build made with other settings (seed, format, parameters ...), or files
    this builder did not write."""


def variant_root(out: str | os.PathLike, corruption: str, severity: int) -> Path:
    """``OUT/<corruption>/<severity>``: the CUB root holding one corruption at one severity."""
    return Path(out) / corruption / str(check_severity(severity))


def _is_temp_file(entry: Path) -> bool:
    return entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file()


def _own_variant_entry(entry: Path) -> bool:
    """A file or folder this builder writes directly inside a variant root."""
    return ((entry.name in _VARIANT_FILES and entry.is_file()) or (entry.name == "images" and entry.is_dir())
            or _is_temp_file(entry))


def _foreign_entries(out: Path, corruptions: tuple[str, ...]) -> list[str]:
    """Entries under ``out`` that this builder does not write (relative paths; [] for an absent or empty
    folder). Its own are ``<corruption>/<severity>/`` folders holding only metadata files, the manifest,
    ``images/`` and temp files; the images inside are the manifests' business (checksums)."""
    if not out.is_dir():
        return []
    own_names = set(get_corruption_names()) | set(corruptions)
    severities = {str(s) for s in SEVERITIES}
    foreign = []
    for cdir in sorted(out.iterdir()):
        if not (cdir.is_dir() and (cdir.name in own_names or ":" in cdir.name)):  # ':' marks pkg.module:function
            foreign.append(cdir.name)
            continue
        for sdir in sorted(cdir.iterdir()):
            if not (sdir.is_dir() and sdir.name in severities):
                foreign.append(f"{cdir.name}/{sdir.name}")
                continue
            foreign += [f"{cdir.name}/{sdir.name}/{e.name}" for e in sorted(sdir.iterdir()) if not _own_variant_entry(e)]
    return foreign


def check_out_folder(out: Path, corruptions: tuple[str, ...]) -> None:
    """Refuse an OUT that exists and holds anything this builder did not write (see `_foreign_entries`)."""
    if out.exists() and not out.is_dir():
        raise BuildConfigError(f"--out {out} exists and is not a folder; choose an empty folder")
    foreign = _foreign_entries(out, corruptions)
    if foreign:
        shown = ", ".join(repr(f) for f in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise BuildConfigError(
            f"--out {out} holds files not written by corruptions.degrade ({shown}); choose an empty folder or pass "
            "--overwrite to write into it anyway"
        )


def remove_stray_temp_files(root: Path) -> int:
    """Delete temp files (``.<name>.*.tmp``) that an interrupted run left behind; never final names."""
    n = 0
    if root.is_dir():
        for p in root.rglob(".*.tmp"):
            if p.is_file():
                p.unlink()
                n += 1
    return n
