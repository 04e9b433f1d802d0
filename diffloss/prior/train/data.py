"""The data of prior training: which images, and every random draw of a step from ``(seed, step)``.

Each step's draws (which images, crops, flips, timesteps, noise) come from a generator seeded with
``(seed, step)`` (:func:`step_draws`), so a resumed run sees the same batches as an uninterrupted one and
under torchrun each rank takes its share ``[rank::world]`` of the same global batch.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cubdata import list_images, load_rgb, read_cub

if TYPE_CHECKING:
    from diffloss.prior.train import PriorTrainConfig

__all__ = ["training_images", "step_seed", "step_draws", "random_resized_crop", "CropDataset", "StepBatches"]


def training_images(data: str | Path | None) -> list[Path]:
    """The clean images to train on: a CUB root's train split (``images.txt`` present), else every image
    under the folder; None: the built-in mini-CUB's train split. Raises FileNotFoundError/ValueError with
    the path when there is nothing to train on."""
    if data is None:
        from cubdata import mini_cub_root

        data = mini_cub_root()
    root = Path(data).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"training data not found: {str(root)!r} (a CUB root or a folder of images)")
    if (root / "images.txt").is_file():
        index = read_cub(root)
        paths = [index.image_path(r) for r in index.split("train")]
        if not paths:
            raise ValueError(f"CUB root {str(root)!r} has no train images (train_test_split.txt)")
        return paths
    paths = list_images(root)
    if not paths:
        raise ValueError(f"no images (.jpg, .png, ...) under {str(root)!r}")
    return paths


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed for step ``step`` of a run seeded ``seed`` (NumPy's SeedSequence: independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1, np.uint64)[0] >> 1)


def step_draws(seed: int, step: int, batch_size: int, n_images: int, num_timesteps: int,
               size: int) -> dict[str, torch.Tensor]:
    """All random draws of one training step, from a generator seeded with ``(seed, step)``:
    ``index`` [B] image indices (with replacement), ``crop_seed`` [B], ``t`` [B] uniform timesteps and
    ``noise`` [B, 3, size, size]. The same on every rank and every device (drawn on the CPU)."""
    g = torch.Generator().manual_seed(step_seed(seed, step))
    return {
        "index": torch.randint(n_images, (batch_size,), generator=g),
        "crop_seed": torch.randint(2**62, (batch_size,), generator=g),
        "t": torch.randint(num_timesteps, (batch_size,), generator=g),
        "noise": torch.randn((batch_size, 3, size, size), generator=g),
    }


def random_resized_crop(image: torch.Tensor, size: int, seed: int, min_scale: float = 0.5,
                        flip: bool = True) -> torch.Tensor:
    """A random crop of ``image`` (``uint8 3xHxW``) covering ``min_scale``..1 of its area with aspect ratio
    3/4..4/3 (torchvision's RandomResizedCrop rule, falling back to the largest centred square), resized to
    ``size`` x ``size`` (bilinear, antialiased), flipped with probability 1/2. Returns ``[-1, 1] 3xSxS``."""
    g = torch.Generator().manual_seed(int(seed))
    _, H, W = image.shape
    area = H * W
    box = None
    for _ in range(10):
        u = torch.rand(3, generator=g).tolist()
        target = area * (min_scale + (1.0 - min_scale) * u[0])
        ratio = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= W and 0 < h <= H:
            top = int(u[2] * (H - h + 1)) if H > h else 0
            left = int(torch.rand(1, generator=g).item() * (W - w + 1)) if W > w else 0
            box = (top, left, h, w)
            break
    if box is None:
        s = min(H, W)
        box = ((H - s) // 2, (W - s) // 2, s, s)
    top, left, h, w = box
    crop = image[:, top:top + h, left:left + w].float().div(127.5).sub(1.0)
    out = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    if flip and torch.rand(1, generator=g).item() < 0.5:
        out = out.flip(-1)
    return out.clamp_(-1.0, 1.0)


class CropDataset(torch.utils.data.Dataset):
    """Item ``(image index, crop seed)`` -> a random resized crop; decoded images are cached per process."""

    def __init__(self, paths: Sequence[Path], size: int, min_scale: float, flip: bool, cache_size: int = 8192):
        self.paths, self.size, self.min_scale, self.flip = list(paths), int(size), float(min_scale), bool(flip)
        self._load = functools.lru_cache(maxsize=cache_size)(self._decode)

    def _decode(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(load_rgb(self.paths[i]).transpose(2, 0, 1)))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        i, seed = item
        return random_resized_crop(self._load(int(i)), self.size, int(seed), self.min_scale, self.flip)


class StepBatches(torch.utils.data.Sampler):
    """Yields, for steps ``start..steps-1``, this rank's share ``[rank::world]`` of the step's (index, seed)."""

    def __init__(self, cfg: PriorTrainConfig, n_images: int, num_timesteps: int, size: int, start: int,
                 rank: int, world: int):
        self.cfg, self.n, self.T, self.size, self.start, self.rank, self.world = (
            cfg, n_images, num_timesteps, size, start, rank, world)

    def __len__(self) -> int:
        return self.cfg.steps - self.start

    def __iter__(self):
        for step in range(self.start, self.cfg.steps):
            d = step_draws(self.cfg.seed, step, self.cfg.batch_size, self.n, self.T, 1)
            pairs = list(zip(d["index"].tolist(), d["crop_seed"].tolist()))
            yield pairs[self.rank::self.world]
