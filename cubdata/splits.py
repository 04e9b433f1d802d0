"""The validation part of a CUB root: a seeded, class-stratified part of its *train* split.

The test split is read only by evaluation (restore, classify, quality, hspace, naturalness). Everything that
validates, early-stops, sweeps or monitors while training takes its images from `train_val_split`: per class,
``round(fraction * n)`` of that class's ``n`` train images (at least one when the class has two or more, never
all of them), chosen by ``numpy.random.default_rng([seed, class_id])``. The same (root, fraction, seed) always
gives the same parts, whatever else changes (the training seed, the number of workers).
"""
from __future__ import annotations

import numpy as np

from cubdata.layout import CubIndex, CubRecord

__all__ = ["VAL_FRACTION", "VAL_SEED", "train_val_split"]

#: Default share of each class's train images held out for validation.
VAL_FRACTION = 0.1
#: Default seed of the draw: fixed, so runs with different training seeds validate on the same images.
VAL_SEED = 0


def train_val_split(index: CubIndex, fraction: float = VAL_FRACTION, seed: int = VAL_SEED
                    ) -> tuple[list[CubRecord], list[CubRecord]]:
    """``(train, val)`` records of ``index``'s train split: per class ``round(fraction * n)`` of its ``n`` train
    images go to val (at least 1 if ``fraction > 0`` and ``n >= 2``; at most ``n - 1``), drawn with
    ``default_rng([seed, class_id])``. Both lists keep ``images.txt`` order; their union is the train split.
    ``fraction`` in [0, 1); 0 gives an empty val part."""
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be a number in [0, 1), got {fraction!r}")
    by_class: dict[int, list[CubRecord]] = {}
    for rec in index.split("train"):
        by_class.setdefault(rec.class_id, []).append(rec)
    val_ids: set[int] = set()
    for class_id, recs in by_class.items():
        n = len(recs)
        k = min(n - 1, max(1 if fraction > 0 and n >= 2 else 0, int(round(fraction * n))))
        picked = np.random.default_rng([int(seed), int(class_id)]).permutation(n)[:k]
        val_ids.update(recs[i].image_id for i in picked)
    train = [r for r in index.split("train") if r.image_id not in val_ids]
    val = [r for r in index.split("train") if r.image_id in val_ids]
    return train, val
