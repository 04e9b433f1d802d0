"""The images of one CUB test split as a `torch.utils.data.Dataset` for scoring classifiers.

Table 2 (`analysis.classify`) and `benchmarks/classify_throughput.py` feed it to
`classifiers.predict.predict` through `classifiers.predict.make_loader`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from cubdata import crop_to_bbox, load_pil_rgb

__all__ = ["ScoringDataset"]


class ScoringDataset(torch.utils.data.Dataset):
    """The images ``paths`` (in the clean test split's order) -> ``(transform(RGB PIL image), label,
    image_id)``; with ``bboxes`` each image is first cropped to its ``(x, y, w, h)`` box (pixels)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], ids: Sequence[int],
                 transform: Callable[[Image.Image], torch.Tensor],
                 bboxes: Sequence[tuple[float, float, float, float]] | None = None) -> None:
        if not len(paths) == len(labels) == len(ids) or (bboxes is not None and len(bboxes) != len(paths)):
            raise ValueError(f"paths, labels, ids (and bboxes) must have one entry per image; got {len(paths)}, "
                             f"{len(labels)}, {len(ids)}" + ("" if bboxes is None else f", {len(bboxes)}"))
        self.paths, self.labels, self.ids, self.transform, self.bboxes = paths, labels, ids, transform, bboxes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_pil_rgb(self.paths[i])
        if self.bboxes is not None:
            img = crop_to_bbox(img, self.bboxes[i])
        return self.transform(img), self.labels[i], self.ids[i]
