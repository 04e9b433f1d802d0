"""The study's image groups: list a group (a CUB root or a folder of images), pick the same images in every
group, and the per-image seed that gives an image the same noise in every group."""
from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cubdata import IMAGE_SUFFIXES, list_images, read_cub
from cubdata import load_square_tensor as load_image_tensor

log = logging.getLogger(__name__)

__all__ = ["ImageItem", "list_group_images", "select_images", "load_image_tensor", "image_seed", "slug",
           "MIN_MATCHED_FRACTION"]

#: Paired groups must match at least this fraction of the images asked for (all: of the largest group).
MIN_MATCHED_FRACTION = 0.5


@dataclass(frozen=True)
class ImageItem:
    """One image of a group: ``key`` identifies the same image across groups (the CUB image id, or the path
    relative to an image folder without suffix)."""

    key: str
    path: Path


def list_group_images(source: str | Path, split: str = "test") -> list[ImageItem]:
    """The images of a group: a CUB root (``images.txt`` present; ``split`` of it) or a folder of images
    (recursive, sorted by relative path; `cubdata.list_images`)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"image group not found: {source} (expected a CUB root or a folder of images)")
    if (source / "images.txt").is_file():
        idx = read_cub(source)
        return [ImageItem(str(r.image_id), idx.image_path(r)) for r in idx.split(split)]
    if source.is_file():
        raise ValueError(f"image group must be a folder (CUB root or image folder), got the file {source}")
    files = list_images(source)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {source}")
    return [ImageItem(p.relative_to(source).with_suffix("").as_posix(), p) for p in files]


def _matched_keys(groups: Mapping[str, Sequence[ImageItem]]) -> tuple[list[str], dict[str, list[str]]]:
    """(keys present in every group, in the first group's order; {group: its keys missing from another group})."""
    names = list(groups)
    common = set.intersection(*({it.key for it in groups[g]} for g in names))
    shared = [it.key for it in groups[names[0]] if it.key in common]
    dropped = {g: [it.key for it in groups[g] if it.key not in common] for g in names}
    return shared, {g: keys for g, keys in dropped.items() if keys}


def select_images(groups: Mapping[str, Sequence[ImageItem]], n: int | None, seed: int = 0, *,
                  paired: bool = True) -> dict[str, list[ImageItem]]:
    """Pick ``n`` images per group (all if ``n`` is None or <= 0).

    ``paired`` (the default; the Wilcoxon tests compare the same image across groups): the same keys in every
    group, a seeded random subset of the keys present in all groups (in the first group's order). Images that
    some group lacks are dropped with a warning that names them; fewer matched images than
    `MIN_MATCHED_FRACTION` of the number asked for (all: of the largest group), or none, is a ValueError.
    ``paired=False`` (unpaired tests): the shared keys when there are at least ``n``, otherwise a seeded subset
    of each group on its own."""
    rng = np.random.default_rng(int(seed))
    names = list(groups)
    if not names:
        raise ValueError("no image groups given")
    want = None if n is None or n <= 0 else int(n)
    shared, dropped = _matched_keys(groups)
    if paired and len(names) > 1:
        _check_matched(groups, shared, dropped, want)
    if shared and (want is None or len(shared) >= want or paired):
        keep = set(shared) if want is None or len(shared) < want else \
            set(rng.choice(shared, size=want, replace=False).tolist())
        return {g: [it for it in groups[g] if it.key in keep] for g in names}
    log.info("groups share %d image keys (< %s): picking images per group independently", len(shared), want)
    out = {}
    for g in names:
        items = list(groups[g])
        if want is None or len(items) <= want:
            out[g] = items
        else:
            pick = set(rng.choice(len(items), size=want, replace=False).tolist())
            out[g] = [it for i, it in enumerate(items) if i in pick]
    return out


def _check_matched(groups: Mapping[str, Sequence[ImageItem]], shared: Sequence[str],
                   dropped: Mapping[str, Sequence[str]], want: int | None) -> None:
    """Say how many images matched across the groups and which were dropped; refuse too few (see select_images)."""
    largest = max(len(items) for items in groups.values())
    reference = largest if want is None else min(want, largest)
    sizes = ", ".join(f"{g!r} {len(items)}" for g, items in groups.items())
    if not shared:
        raise ValueError(
            f"the image groups share no image ({sizes} images): the paired study needs the same images in every "
            "group (CUB roots: the same image ids; folders: the same relative paths); use --test mann-whitney "
            "for unpaired groups"
        )
    examples = "; ".join(f"{g!r}: {len(keys)} not in every group, e.g. {keys[:5]}" for g, keys in dropped.items())
    if len(shared) < MIN_MATCHED_FRACTION * reference:
        asked = "available" if want is None or want > largest else "requested"
        raise ValueError(
            f"only {len(shared)} of {reference} {asked} images are present in every group ({sizes} images; "
            f"{examples}): give the groups the same images (same CUB image ids or relative paths)"
        )
    if dropped:
        log.warning("h-space groups: %d of %d images matched across %d groups; dropped the images not in every "
                    "group: %s", len(shared), largest, len(groups), examples)


def slug(text: str) -> str:
    """A file-name-safe version of a group name or image key."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")
    return s or "x"


def image_seed(seed: int, key: str) -> int:
    """Seed of the q_sample noise of one image: depends on (seed, image key) only, so the same image gets the
    same noise in every group and every run."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(key).encode("utf-8"))) % (2**63 - 1)
