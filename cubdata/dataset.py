"""`torch.utils.data.Dataset` over a CUB root (original or variant) and the bounding-box crop."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from cubdata.io import load_pil_rgb
from cubdata.layout import CubIndex, CubRecord, read_cub

__all__ = ["CubDataset", "crop_to_bbox"]


def crop_to_bbox(image: Image.Image | np.ndarray, bbox: tuple[float, float, float, float], margin: float = 0.0):
    """Crop a PIL image or ``uint8 HxWx3`` array to ``bbox`` = (x, y, w, h) in pixels (CUB convention),
    optionally enlarged by ``margin`` (fraction of the box size per side), clipped to the image."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise ValueError(f"bounding box must have positive width and height, got {bbox}")
    x0, y0 = x - margin * w, y - margin * h
    x1, y1 = x + w * (1 + margin), y + h * (1 + margin)
    if isinstance(image, np.ndarray):
        H, W = image.shape[:2]
    else:
        W, H = image.size
    left, top = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    right, bottom = min(W, int(np.ceil(x1))), min(H, int(np.ceil(y1)))
    if right <= left or bottom <= top:
        raise ValueError(f"bounding box {bbox} lies outside the {W}x{H} image")
    if isinstance(image, np.ndarray):
        return image[top:bottom, left:right]
    return image.crop((left, top, right, bottom))


class CubDataset:
    """Images of one split of a CUB root (or of the given ``records`` of it, e.g. the parts of
    `cubdata.train_val_split`).

    ``__getitem__`` returns ``(transform(img) or img, label, image_id)`` where ``img`` is an RGB PIL image
    (EXIF-transposed; grayscale/CMYK converted), ``label`` the 0-based class index and ``image_id`` the
    CUB id. ``bbox_crop`` crops to the annotated box first (requires ``bounding_boxes.txt``).
    """

    def __init__(
        self,
        root: str | os.PathLike | CubIndex,
        split: str = "test",
        transform: Callable | None = None,
        bbox_crop: bool = False,
        bbox_margin: float = 0.0,
        records: Sequence[CubRecord] | None = None,
    ) -> None:
        self.index = root if isinstance(root, CubIndex) else read_cub(root)
        self.split = split
        self.records: list[CubRecord] = self.index.split(split) if records is None else list(records)
        self.transform = transform
        self.bbox_crop = bbox_crop
        self.bbox_margin = bbox_margin
        if bbox_crop and any(r.bbox is None for r in self.records):
            raise ValueError(
                f"bbox_crop=True but {self.index.root} has no bounding_boxes.txt entry for every image"
            )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self.records]

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def __getitem__(self, i: int):
        rec = self.records[i]
        img = load_pil_rgb(self.index.image_path(rec))
        if self.bbox_crop:
            img = crop_to_bbox(img, rec.bbox, self.bbox_margin)  # type: ignore[arg-type]
        if self.transform is not None:
            img = self.transform(img)
        return img, rec.label, rec.image_id
