"""Which predicted image goes with which ground truth: folders or CUB roots, paired by relative path."""
from __future__ import annotations

import os
from pathlib import Path

from cubdata import IMAGE_SUFFIXES, ImageDecodeError, list_images

__all__ = ["find_images", "match_images", "check_decodable"]


def find_images(root: str | os.PathLike) -> dict[str, Path]:
    """Image files under ``root`` (under ``root/images`` for a CUB root; `cubdata.list_images`) keyed by
    relative path without extension (POSIX). Hidden files and folders (temporary files included) are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}; pass an existing folder of images or a CUB root")
    base = root / "images" if (root / "images.txt").is_file() and (root / "images").is_dir() else root
    out: dict[str, Path] = {}
    for p in list_images(base):
        key = p.relative_to(base).with_suffix("").as_posix()
        if key in out:
            raise ValueError(f"{out[key]} and {p} differ only in extension; keep one of them")
        out[key] = p
    return out


def match_images(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """``(key, pred_path, gt_path)`` for every predicted image, paired with the ground truth by relative path
    without extension, else by unique file stem. Raises ValueError naming unmatched predictions."""
    preds, gts = find_images(pred_dir), find_images(gt_dir)
    if not preds:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {pred_dir}")
    by_stem: dict[str, list[str]] = {}
    for k in gts:
        by_stem.setdefault(k.rsplit("/", 1)[-1], []).append(k)
    pairs, missing = [], []
    for key, p in preds.items():
        if key in gts:
            pairs.append((key, p, gts[key]))
            continue
        cands = by_stem.get(key.rsplit("/", 1)[-1], [])
        if len(cands) == 1:
            pairs.append((key, p, gts[cands[0]]))
        else:
            missing.append(key)
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(preds)} predicted image(s) under {pred_dir} have no ground truth under {gt_dir} "
            f"(e.g. {missing[:5]}); images pair by relative path without extension"
        )
    return pairs


def check_decodable(paths) -> None:
    """Open every image's header (cheap: no full decode) so that a file that is not an image fails before any
    metric runs. Raises `cubdata.ImageDecodeError` naming the first such file; truncated files that pass the
    header check still fail, with the same error, when they are decoded."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a broken file
            raise ImageDecodeError(
                f"cannot decode image {path}: {type(err).__name__}: {err}; replace it with a readable image or "
                "remove it"
            ) from None
