"""Build the degraded-CUB benchmark: every image of a CUB split under each corruption and severity.

Writes OUT/<corruption>/<severity>/ as a valid CUB root (metadata files + images/<class>/<file>, decoded
RGB re-encoded as JPEG quality 95 or PNG) with a manifest.json holding per-image SHA-256 checksums and
status, the corruption parameters, the seed and library versions. Each image's randomness is a function of
(seed, image id, corruption, severity) only, so the bytes are identical for any --workers and across
re-runs. Re-running skips outputs whose checksum matches the manifest; an interrupted run leaves no partial
file under a final name. Manifests are written before the first image and then every few seconds, so even a
run killed with SIGKILL early on is resumed; worker processes die with the parent. OUT must be absent,
empty, or hold only this builder's <corruption>/<severity>/ folders: anything else (an existing CUB root, a
stray file) is refused before any work unless --overwrite. Unreadable images are recorded as failed, the
run goes on, and it exits 1.

    python -m corruptions.degrade --cub-root data/CUB_200_2011 --out degraded-cub --workers 2
"""
from __future__ import annotations

from corruptions.degrade.builder import build_degraded_cub, run_build
from corruptions.degrade.cli import build_parser, main
from corruptions.degrade.manifests import MANIFEST_FORMAT, library_versions
from corruptions.degrade.outdir import MANIFEST_NAME, BuildConfigError, variant_root
from corruptions.degrade.settings import DEFAULT_OUT, DegradeConfig
from corruptions.degrade.worker import CorruptionFailed

__all__ = [
    "build_degraded_cub",
    "run_build",
    "DegradeConfig",
    "BuildConfigError",
    "CorruptionFailed",
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "DEFAULT_OUT",
    "library_versions",
    "variant_root",
    "build_parser",
    "main",
]
