"""The level grid's images on disk: ``generations/<group>/<image>/input.png`` and ``level0..K.png`` (uint8 RGB
PNGs), written as the study finishes an image and read back on resume and by `load_grid`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from runkit.files import atomic_write_bytes
from cubdata import encode_image, load_rgb

from analysis.hspace.groups import slug

__all__ = ["GridEntry", "to_uint8", "grid_dir", "read_grid_item", "write_grid_item", "load_grid"]

#: (image key, uint8 HxWx3 input, [uint8 HxWx3 generation of level 0..K])
GridEntry = tuple[str, np.ndarray, list[np.ndarray]]


def to_uint8(img01: torch.Tensor) -> np.ndarray:
    """[0, 1] CHW -> uint8 HxWx3."""
    return (img01.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()).copy()


def grid_dir(out: Path, group: str, key: str) -> Path:
    return Path(out) / "generations" / slug(group) / slug(key)


def read_grid_item(folder: Path, levels: int) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """(input, [level 0..K]) read from ``folder``; None when a file is missing."""
    files = [folder / "input.png"] + [folder / f"level{k}.png" for k in range(levels + 1)]
    if not all(f.is_file() for f in files):
        return None
    imgs = [load_rgb(f) for f in files]
    return imgs[0], imgs[1:]


def write_grid_item(out: Path, group: str, entry: GridEntry) -> None:
    """Write one grid entry's PNGs (atomically, each)."""
    folder = grid_dir(out, group, entry[0])
    atomic_write_bytes(folder / "input.png", encode_image(entry[1], "png"))
    for k, im in enumerate(entry[2]):
        atomic_write_bytes(folder / f"level{k}.png", encode_image(im, "png"))


def load_grid(out_dir: str | Path) -> dict[str, list[GridEntry]]:
    """Read the grid images of a study folder back (the layout of `HSpaceResult.grid`)."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    levels = len(summary["protocol"]["alphas"])
    grid = {}
    for g, keys in summary["grid_images"].items():
        grid[g] = []
        for key in keys:
            item = read_grid_item(grid_dir(out_dir, g, key), levels)
            if item is not None:
                grid[g].append((key, item[0], item[1]))
    return grid
