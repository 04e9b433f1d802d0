"""One `runkit.manifest.Manifest` per variant (``OUT/<corruption>/<severity>/manifest.json``): the settings
that decide its bytes, and per image ``{path, status, sha256, bytes}`` or ``{path, status: failed, error}``.

Layout: ``{"format", "settings", "counts", "complete", "images"}``. A manifest of another format is ignored with a
warning and its variant rebuilt.
"""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from pathlib import Path

from runkit.manifest import Manifest

from corruptions.registry import Corruption
from corruptions.degrade.outdir import MANIFEST_NAME, BuildConfigError, variant_root
from corruptions.degrade.settings import DegradeConfig

log = logging.getLogger(__name__)

__all__ = ["MANIFEST_FORMAT", "PINNED_KEYS", "library_versions", "Variant", "open_variant"]

MANIFEST_FORMAT = "degraded-cub-manifest/2"
#: Settings that decide an output's bytes; a re-run into the same folder must agree on all of them.
PINNED_KEYS = ("corruption", "severity", "corruption_id", "parameters", "seed", "split", "image_format", "quality")


def library_versions() -> dict[str, str]:
    """Versions of everything that decides the output bytes (recorded in every manifest)."""
    from importlib import metadata

    import numpy
    import PIL
    import scipy
    from PIL import features

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pillow": PIL.__version__,
        "libjpeg": str(features.version("jpg")),
        "imagecorruptions": dist("imagecorruptions-imaug"),
        "diffloss-toolkit": dist("diffloss-toolkit"),
    }


def variant_settings(entry: Corruption, severity: int, cfg: DegradeConfig, source_root: Path,
                     versions: dict[str, str]) -> dict:
    """What the manifest of one variant records as its settings (`PINNED_KEYS` and the provenance)."""
    return {
        "corruption": entry.name,
        "severity": severity,
        "corruption_id": entry.id,
        "parameters": entry.parameters(severity),
        "seed": cfg.seed,
        "split": cfg.split,
        "image_format": cfg.fmt,
        "quality": cfg.jpeg_quality,
        "rng": "numpy.random.default_rng([seed, image_id, corruption_id, severity])",
        "source_root": str(source_root),
        "versions": versions,
    }


@dataclass
class Variant:
    """One corruption at one severity: its root, its manifest and this run's counts."""

    entry: Corruption
    severity: int
    root: Path
    manifest: Manifest
    written: int = 0
    skipped: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return self.entry.name, self.severity

    def record(self, image_id: int, entry: dict) -> None:
        self.manifest.record(str(image_id), entry)
        self.written += entry["status"] == "ok"

    def save(self, complete: bool = False) -> None:
        """Save with the entries in image-id order and the ok/failed counts."""
        m = self.manifest
        m.entries = dict(sorted(m.entries.items(), key=lambda kv: int(kv[0])))
        ok = sum(e.get("status") == "ok" for e in m.entries.values())
        m.extra["counts"] = {"ok": ok, "failed": len(m.entries) - ok}
        m.save(complete)

    def ok_ids(self) -> list[int]:
        return [int(k) for k, e in self.manifest.entries.items() if e.get("status") == "ok"]

    def failed(self) -> dict[int, dict]:
        return {int(k): e for k, e in self.manifest.entries.items() if e.get("status") != "ok"}


def _refuse_other_settings(root: Path, old: dict, new: dict) -> None:
    diff = [k for k in PINNED_KEYS if old.get(k) != new[k]]
    if diff:
        settings = ", ".join(f"{k}: {old.get(k)!r} there, {new[k]!r} now" for k in diff)
        raise BuildConfigError(f"{root} was built with other settings ({settings}). Use another --out, or pass "
                               "--overwrite to rebuild it.")


def open_variant(entry: Corruption, severity: int, cfg: DegradeConfig, source_root: Path,
                 versions: dict[str, str]) -> Variant:
    """The variant's manifest, resumed when it was written with the same pinned settings. Raises
    BuildConfigError for other settings unless ``cfg.overwrite`` (then the variant is rebuilt)."""
    root = variant_root(cfg.out_path, entry.name, severity)
    settings = variant_settings(entry, severity, cfg, source_root, versions)
    path = root / MANIFEST_NAME
    doc = Manifest.read(path, MANIFEST_FORMAT)  # None (with a warning if unreadable or of another format)
    if doc is None:
        return Variant(entry, severity, root, Manifest(path, MANIFEST_FORMAT, settings, entries_key="images"))
    old = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
    if not cfg.overwrite:
        _refuse_other_settings(root, old, settings)
    manifest = Manifest.open(path, MANIFEST_FORMAT, settings, pinned=PINNED_KEYS, entries_key="images")
    if manifest.resumed:
        if old.get("versions") != versions:
            log.warning("%s: resuming a build made with other library versions %s", root, old.get("versions"))
        if old.get("source_root") != settings["source_root"]:
            log.warning("%s: built from %s, now from %s", root, old.get("source_root"), settings["source_root"])
    return Variant(entry, severity, root, manifest)
