"""Paired (degraded, clean) image data for training restoration networks.

A *pairs spec* (the training CLI's ``--pairs``) is one of

- a folder in one of the public layouts, detected automatically:
    LOL            ``ROOT/our485/{low,high}`` (train) and ``ROOT/eval15/{low,high}`` (val)
    Rain100H/13K   ``input/`` + ``target/``  or  ``rain/`` + ``norain/`` (optionally under ``train/`` and
                   ``test/``)
    Dense/NH-Haze  ``hazy/`` + ``GT/``, or one folder of ``NN_hazy.png`` + ``NN_GT.png`` files
- ``LOW_DIR:HIGH_DIR``: any two folders, paired by file name;
- ``synthetic:CORRUPTION:SEVERITY[:CUB_ROOT]``: clean CUB images (the built-in mini-CUB by default) and the
  same images degraded on the fly with one of our corruptions (`corruptions.corrupt`) at that severity.
  Only the CUB *train* split is read: val is its seeded, class-stratified part (`cubdata.train_val_split`,
  ``val_fraction`` of each class, 10% by default), train the rest, all both; the test split is left to
  evaluation. The degradation of each image is drawn from ``numpy.random.default_rng([seed, image_id])``: one
  fixed degraded version per image, like a real paired set, identical on every run.

Pairing by name: files match on their stem (extension ignored); if that leaves files unmatched, stems are
compared again after dropping the layouts' role words (``low``, ``high``, ``hazy``, ``GT``, ``rain``,
``norain``, ``input``, ``target``, ``clean``) and a trailing ``x2`` (Rain100H's ``norain-1x2``), so
``01_hazy.png`` pairs with ``01_GT.png``. Anything still unmatched is an `UnmatchedPairsError`.

Splits: a layout with split folders uses them (LOL's our485/eval15, ``train``/``test``); a layout without
uses every 10th pair (by sorted name) as val and the rest as train (fewer than 10 pairs: both use all).

Training batches come from `StepBatchSampler` + `RandomCropPairs`: the images, crop offsets and flips of
step ``s`` are a pure function of ``(seed, s)``, so a resumed run sees exactly the batches an uninterrupted
run would, with any number of DataLoader workers.
"""
from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cubdata import IMAGE_SUFFIXES, VAL_FRACTION, VAL_SEED, load_rgb, mini_cub_root, read_cub, train_val_split

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "UnmatchedPairsError",
    "Pair",
    "PairSource",
    "FolderPairs",
    "SyntheticPairs",
    "pair_by_name",
    "find_folder_pairs",
    "open_pairs",
    "ROLE_PAIRS",
    "RandomCropPairs",
    "StepBatchSampler",
    "batch_keys",
    "to_tensor",
]

_LOW_ROLES = ("low", "input", "rain", "rainy", "hazy")
_HIGH_ROLES = ("high", "target", "norain", "gt", "clean")
# (low, high) folder names of the supported layouts, in order of preference (matched case-insensitively)
ROLE_PAIRS = (("low", "high"), ("input", "target"), ("rain", "norain"), ("rainy", "norain"), ("hazy", "gt"))
_TRAIN_DIRS = ("our485", "train", "training")
_VAL_DIRS = ("eval15", "test", "val", "valid", "validation", "eval")
_ROLE_WORDS = set(_LOW_ROLES + _HIGH_ROLES)
VAL_EVERY = 10
SPLITS = ("train", "val", "all")


class UnmatchedPairsError(ValueError):
    """Degraded and clean folders whose file names do not pair up one-to-one."""


@dataclass(frozen=True)
class Pair:
    """One training pair: ``low`` (degraded input) and ``high`` (clean target) image files."""

    name: str
    low: Path
    high: Path


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _loose_key(stem: str) -> str:
    words = [w for w in re.split(r"[-_\s.]+", stem.lower()) if w and w not in _ROLE_WORDS]
    key = "_".join(words)
    return re.sub(r"x2$", "", key) if not re.fullmatch(r"x2", key) else key


def _keyed(files: list[Path], keyfn, side: str, folder) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        k = keyfn(f)
        if k in out:
            raise UnmatchedPairsError(
                f"{side} folder {folder}: {out[k].name} and {f.name} map to the same pairing key {k!r}; "
                "pairs are matched by file name, so each name must be unique per folder"
            )
        out[k] = f
    return out


def _pair_files(low_files: list[Path], high_files: list[Path], low_where, high_where) -> list[Pair]:
    if not low_files or not high_files:
        empty = low_where if not low_files else high_where
        raise UnmatchedPairsError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found in {empty}")
    for keyfn in (lambda p: p.stem, lambda p: _loose_key(p.stem)):
        lows = _keyed(low_files, keyfn, "degraded", low_where)
        highs = _keyed(high_files, keyfn, "clean", high_where)
        if set(lows) == set(highs):
            return [Pair(k, lows[k], highs[k]) for k in sorted(lows)]
    only_low = sorted(lows[k].name for k in set(lows) - set(highs))
    only_high = sorted(highs[k].name for k in set(highs) - set(lows))
    raise UnmatchedPairsError(
        f"degraded/clean file names do not pair up: {len(only_low)} file(s) of {low_where} have no partner in "
        f"{high_where} (e.g. {only_low[:5]}) and {len(only_high)} file(s) of {high_where} have none in "
        f"{low_where} (e.g. {only_high[:5]}). Pairs are matched by file name (extension and role words like "
        "'hazy'/'GT'/'low'/'high' ignored); rename the files or remove the extras."
    )


def pair_by_name(low_dir: str | os.PathLike, high_dir: str | os.PathLike) -> list[Pair]:
    """Pair the images of ``low_dir`` (degraded) and ``high_dir`` (clean) by file name (see module doc).

    Raises `UnmatchedPairsError` listing the files without a partner, FileNotFoundError for a missing folder.
    """
    low_dir, high_dir = Path(low_dir), Path(high_dir)
    for d in (low_dir, high_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"pairs folder not found: {d}")
    return _pair_files(_image_files(low_dir), _image_files(high_dir), low_dir, high_dir)


def _child(folder: Path, names) -> Path | None:
    """The sub-folder of ``folder`` whose lower-cased name is the first of ``names`` present."""
    if not folder.is_dir():
        return None
    subs = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
    for n in names:
        if n in subs:
            return subs[n]
    return None


def _leaf_pairs(folder: Path) -> list[Pair] | None:
    """Pairs of a folder holding a (low, high) role pair of sub-folders, or flat ``*_hazy``/``*_GT`` files."""
    for low_name, high_name in ROLE_PAIRS:
        lo, hi = _child(folder, (low_name,)), _child(folder, (high_name,))
        if lo is not None and hi is not None:
            return pair_by_name(lo, hi)
    files = _image_files(folder)
    lows = [f for f in files if re.search(r"[-_](hazy|low|rain|input)$", f.stem, re.I)]
    highs = [f for f in files if re.search(r"[-_](gt|high|clean|norain|target)$", f.stem, re.I)]
    if lows and highs:
        return _pair_files(lows, highs, f"{folder} (*_hazy/*_low files)", f"{folder} (*_GT/*_high files)")
    return None


def _holdout(pairs: list[Pair], split: str) -> list[Pair]:
    if split == "all" or len(pairs) < VAL_EVERY:
        if split != "all":
            log.warning("only %d pairs and no split folders: train and val both use all of them", len(pairs))
        return pairs
    val = [p for i, p in enumerate(pairs) if i % VAL_EVERY == VAL_EVERY - 1]
    return val if split == "val" else [p for i, p in enumerate(pairs) if i % VAL_EVERY != VAL_EVERY - 1]


def find_folder_pairs(root: str | os.PathLike, split: str = "train") -> list[Pair]:
    """Detect the layout of ``root`` (see module doc) and return the pairs of ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pairs folder not found: {root}")
    leaf = _leaf_pairs(root)
    if leaf is not None:
        return _holdout(leaf, split)
    train_dir, val_dir = _child(root, _TRAIN_DIRS), _child(root, _VAL_DIRS)
    train = _leaf_pairs(train_dir) if train_dir is not None else None
    val = _leaf_pairs(val_dir) if val_dir is not None else None
    if train is None and val is None:
        seen = sorted(p.name for p in root.iterdir())[:12]
        raise ValueError(
            f"{root} is not a recognised paired layout (found {seen}). Expected one of: LOL (our485/low|high, "
            "eval15/low|high), input/+target/, rain/+norain/, hazy/+GT/ (each optionally under train/ and test/), "
            "a folder of *_hazy/*_GT files, or pass LOW_DIR:HIGH_DIR or synthetic:CORRUPTION:SEVERITY"
        )
    if split == "all":
        return (train or []) + (val or [])
    if train is not None and val is not None:
        return train if split == "train" else val
    return _holdout(train if train is not None else val, split)  # type: ignore[arg-type]


class PairSource:
    """A list of (degraded, clean) image pairs called ``names``. ``load(i)`` -> (``uint8 HxWx3``,
    ``uint8 HxWx3``), same size. Subclasses implement ``_load(i)`` and pass ``names`` (or override ``__len__``
    and ``name``); ``load`` keeps the last ``cache_size`` decoded pairs in memory (LRU)."""

    def __init__(self, cache_size: int = 0, names: list[str] | None = None) -> None:
        self.names = list(names or [])
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        return self.names[i]

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        pair = self._load(i)
        if self.cache_size:
            self._cache[i] = pair
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return pair


class FolderPairs(PairSource):
    """Pairs of image files. ``cache_size`` decoded pairs are kept in memory (LRU)."""

    def __init__(self, pairs: list[Pair], description: str = "", cache_size: int = 256) -> None:
        if not pairs:
            raise ValueError(f"no pairs in {description or 'the given list'}")
        self.pairs = list(pairs)
        self.description = description
        super().__init__(cache_size, [p.name for p in self.pairs])

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.pairs[i]
        low, high = load_rgb(p.low), load_rgb(p.high)
        if low.shape != high.shape:
            raise ValueError(
                f"pair {p.name!r}: degraded {p.low} is {low.shape[1]}x{low.shape[0]} but clean {p.high} is "
                f"{high.shape[1]}x{high.shape[0]}; paired images must have the same size"
            )
        return low, high

    def __repr__(self) -> str:
        return f"FolderPairs({len(self)} pairs, {self.description})"


class SyntheticPairs(PairSource):
    """Clean images of a CUB root's train split and their degraded versions, made on the fly with
    ``corruptions.corrupt(image, corruption, severity, rng=np.random.default_rng([seed, image_id]))``.

    ``split``: ``"val"`` is `cubdata.train_val_split`'s part (``val_fraction`` of each class's train images,
    drawn with ``val_seed``), ``"train"`` the rest of the train split, ``"all"`` the whole train split. The
    CUB test split is never read."""

    def __init__(self, corruption: str, severity: int, cub_root: str | os.PathLike | None = None,
                 split: str = "train", seed: int = 0, cache_size: int = 4096, val_fraction: float = VAL_FRACTION,
                 val_seed: int = VAL_SEED) -> None:
        from corruptions import check_severity, get_corruption  # local: only synthetic pairs need corruptions

        get_corruption(corruption)  # an unknown name raises, listing the valid ones
        severity = check_severity(severity)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.corruption, self.severity, self.seed, self.split = corruption, severity, int(seed), split
        self.val_fraction, self.val_seed = float(val_fraction), int(val_seed)
        self.index = read_cub(cub_root if cub_root is not None else mini_cub_root())
        train, val = train_val_split(self.index, self.val_fraction, self.val_seed)
        self.records = {"train": train, "val": val, "all": self.index.split("train")}[split]
        if not self.records:
            hint = (f"; --val-fraction {val_fraction:g} holds none of them out: raise it or pass --val-images 0"
                    if split == "val" and train else "")
            raise ValueError(f"CUB root {self.index.root} has no {split} images in its train split "
                             f"({len(train)} train + {len(val)} val){hint}")
        super().__init__(cache_size, [r.rel_path for r in self.records])

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        from corruptions import corrupt

        rec = self.records[i]
        clean = load_rgb(self.index.image_path(rec))
        rng = np.random.default_rng([self.seed, rec.image_id])
        low = np.ascontiguousarray(corrupt(clean, self.corruption, self.severity, rng=rng))
        return low, clean

    def __repr__(self) -> str:
        return (f"SyntheticPairs({self.corruption}:{self.severity}, {self.split}: {len(self)} train-split images of "
                f"{self.index.root}, val fraction {self.val_fraction:g} seed {self.val_seed})")


def open_pairs(spec: str, split: str = "train", seed: int = 0, val_fraction: float = VAL_FRACTION) -> PairSource:
    """Open a pairs spec (see module doc) for ``split`` in ``("train", "val", "all")``; ``val_fraction``: the
    share of each class's train images that synthetic CUB pairs hold out as val."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"pairs spec must be a non-empty string, got {spec!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if spec.startswith("synthetic:"):
        parts = spec.split(":", 3)
        if len(parts) < 3:
            raise ValueError(f"synthetic pairs spec must be synthetic:CORRUPTION:SEVERITY[:CUB_ROOT], got {spec!r}")
        try:
            severity = int(parts[2])
        except ValueError:
            from corruptions import SEVERITIES

            raise ValueError(f"severity in {spec!r} must be an integer in {SEVERITIES}, got {parts[2]!r}") from None
        return SyntheticPairs(parts[1], severity, parts[3] if len(parts) == 4 and parts[3] else None, split, seed,
                              val_fraction=val_fraction)
    if ":" in spec and not Path(spec).is_dir():
        low_dir, _, high_dir = spec.partition(":")
        return FolderPairs(_holdout(pair_by_name(low_dir, high_dir), split), f"{low_dir} -> {high_dir} ({split})")
    return FolderPairs(find_folder_pairs(spec, split), f"{spec} ({split})")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 HxWx3`` -> ``[0, 1] CHW float32``."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"expected a uint8 HxWx3 array, got {getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not (ph or pw):
        return image
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)


class RandomCropPairs(torch.utils.data.Dataset):
    """Random ``crop x crop`` patches of a `PairSource` for training.

    Indexed by keys ``(pair_index, sample_seed)`` (from `StepBatchSampler`): the crop offset and the
    horizontal flip come from ``numpy.random.default_rng(sample_seed)``. Images smaller than the crop are
    padded (reflect; edge when too small to reflect) up to it. Returns ``(low, high)`` as
    ``[0, 1] 3 x crop x crop float32`` tensors.
    """

    def __init__(self, source: PairSource, crop: int, flip: bool = True) -> None:
        if int(crop) < 1:
            raise ValueError(f"crop must be >= 1, got {crop}")
        self.source, self.crop, self.flip = source, int(crop), bool(flip)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key) -> tuple[torch.Tensor, torch.Tensor]:
        index, sample_seed = key
        low, high = self.source.load(int(index))
        low, high = _pad_to(low, self.crop), _pad_to(high, self.crop)
        rng = np.random.default_rng(int(sample_seed))
        h, w = low.shape[:2]
        y, x = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
        low, high = low[y : y + self.crop, x : x + self.crop], high[y : y + self.crop, x : x + self.crop]
        if self.flip and rng.random() < 0.5:
            low, high = low[:, ::-1], high[:, ::-1]
        return to_tensor(low), to_tensor(high)


def batch_keys(step: int, n: int, batch: int, seed: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    """Keys ``(pair_index, sample_seed)`` of process ``rank``'s share of step ``step``'s global batch.

    Sample number ``p = step * batch * world_size + k`` is item ``p % n`` of epoch ``p // n``'s permutation
    (``default_rng([seed, epoch])``), so every pair is seen once per epoch; its sample seed is derived from
    ``(seed, p)``. A pure function of its arguments: resuming needs only the step.
    """
    if n < 1:
        raise ValueError(f"no training pairs (n={n})")
    out = []
    base = step * batch * world_size + rank * batch
    perms: dict[int, np.ndarray] = {}
    for p in range(base, base + batch):
        epoch, pos = divmod(p, n)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        sample_seed = int(np.random.default_rng([seed, 1, p]).integers(0, 2**63 - 1))
        out.append((int(perms[epoch][pos]), sample_seed))
    return out


class StepBatchSampler(torch.utils.data.Sampler):
    """Batch sampler yielding `batch_keys` for steps ``start, ..., stop - 1`` (use as ``batch_sampler=``)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield batch_keys(step, self.n, self.batch, self.seed, self.rank, self.world_size)
