"""Paired-data readers (restoration.pairs): every public layout, name pairing, errors, synthetic pairs, crops,
and the step-indexed batch plan that makes resuming exact."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cubdata import ImageDecodeError, load_rgb, read_cub, train_val_split
from restoration.pairs import (
    FolderPairs,
    RandomCropPairs,
    SyntheticPairs,
    UnmatchedPairsError,
    batch_keys,
    find_folder_pairs,
    open_pairs,
    pair_by_name,
)


def _img(path: Path, value: int, size=(24, 20)) -> np.ndarray:
    """Write a PNG whose pixels encode ``value`` (so pairs can be checked), return the array."""
    h, w = size
    arr = np.full((h, w, 3), value, np.uint8)
    arr[0, 0] = (value * 7) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _pair_dirs(root: Path, low: str, high: str, names_low, names_high=None, start=10):
    names_high = names_low if names_high is None else names_high
    for i, (a, b) in enumerate(zip(names_low, names_high)):
        _img(root / low / a, start + i)
        _img(root / high / b, 100 + start + i)


def _check_pairs(pairs, n):
    assert len(pairs) == n
    for p in pairs:
        lo, hi = np.asarray(Image.open(p.low)), np.asarray(Image.open(p.high))
        assert int(hi[1, 1, 0]) - int(lo[1, 1, 0]) == 100  # the partner written by _pair_dirs


def test_lol_layout(tmp_path):
    _pair_dirs(tmp_path / "our485", "low", "high", [f"{i}.png" for i in (1, 2, 3)])
    _pair_dirs(tmp_path / "eval15", "low", "high", ["778.png", "779.png"], start=50)
    train, val = find_folder_pairs(tmp_path, "train"), find_folder_pairs(tmp_path, "val")
    _check_pairs(train, 3)
    _check_pairs(val, 2)
    assert {p.name for p in val} == {"778", "779"}
    assert len(find_folder_pairs(tmp_path, "all")) == 5
    src = open_pairs(str(tmp_path), "val")
    lo, hi = src.load(0)
    assert lo.dtype == np.uint8 and lo.shape == hi.shape == (24, 20, 3)


def test_rain13k_input_target_with_split_folders(tmp_path):
    # extensions may differ between the two sides (lossless here so values can be checked)
    _pair_dirs(tmp_path / "train", "input", "target", [f"{i}.png" for i in range(4)], [f"{i}.bmp" for i in range(4)])
    _pair_dirs(tmp_path / "test", "input", "target", ["a.png"], start=60)
    _check_pairs(find_folder_pairs(tmp_path, "train"), 4)
    _check_pairs(find_folder_pairs(tmp_path, "val"), 1)


def test_rain100h_rain_norain_names(tmp_path):
    # Rain100H's original naming: rain/norain-1x2.png pairs with norain/norain-1.png
    _pair_dirs(tmp_path, "rain", "norain", [f"norain-{i}x2.png" for i in (1, 2, 10)],
               [f"norain-{i}.png" for i in (1, 2, 10)])
    pairs = find_folder_pairs(tmp_path, "all")
    _check_pairs(pairs, 3)
    assert sorted(p.name for p in pairs) == ["1", "10", "2"]


def test_dense_haze_hazy_gt(tmp_path):
    _pair_dirs(tmp_path, "hazy", "GT", [f"{i:02d}_hazy.png" for i in (1, 2)], [f"{i:02d}_GT.png" for i in (1, 2)])
    _check_pairs(find_folder_pairs(tmp_path, "all"), 2)


def test_nh_haze_flat_folder(tmp_path):
    for i in (1, 2, 3):
        _img(tmp_path / f"{i:02d}_hazy.png", 10 + i)
        _img(tmp_path / f"{i:02d}_GT.png", 110 + i)
    _check_pairs(find_folder_pairs(tmp_path, "all"), 3)


def test_generic_low_high_spec_and_holdout(tmp_path):
    names = [f"img{i:02d}.png" for i in range(12)]
    _pair_dirs(tmp_path, "dark", "bright", names)
    spec = f"{tmp_path / 'dark'}:{tmp_path / 'bright'}"
    train, val, every = open_pairs(spec, "train"), open_pairs(spec, "val"), open_pairs(spec, "all")
    assert len(every) == 12 and len(train) == 11 and len(val) == 1
    assert {val.name(0)} == {"img09"}  # every 10th pair by sorted name
    assert val.name(0) not in {train.name(i) for i in range(len(train))}


def test_unmatched_names_error_lists_files(tmp_path):
    _pair_dirs(tmp_path, "low", "high", ["a.png", "b.png", "c.png"], ["a.png", "b.png", "zzz.png"])
    with pytest.raises(UnmatchedPairsError) as err:
        pair_by_name(tmp_path / "low", tmp_path / "high")
    msg = str(err.value)
    assert "c.png" in msg and "zzz.png" in msg and "file name" in msg


def test_unknown_layout_and_missing_folder(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="not a recognised paired layout"):
        find_folder_pairs(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_pairs(str(tmp_path / "nope"))


def test_size_mismatch_is_an_error(tmp_path):
    _img(tmp_path / "low" / "x.png", 1, size=(20, 20))
    _img(tmp_path / "high" / "x.png", 2, size=(20, 22))
    src = FolderPairs(pair_by_name(tmp_path / "low", tmp_path / "high"))
    with pytest.raises(ValueError, match="same size"):
        src.load(0)


def test_synthetic_pairs_deterministic_and_degraded(mini_root):
    a = open_pairs(f"synthetic:lowlight:3:{mini_root}", "train", seed=0)
    b = SyntheticPairs("lowlight", 3, mini_root, "train", seed=0)
    # only the train split (80 images) is read: 10% of each class (1 of 8) is val, the rest train
    assert len(a) == 70 and len(open_pairs(f"synthetic:lowlight:3:{mini_root}", "val")) == 10
    assert len(open_pairs(f"synthetic:lowlight:3:{mini_root}", "all")) == 80
    lo_a, hi_a = a.load(5)
    lo_b, hi_b = b.load(5)
    np.testing.assert_array_equal(lo_a, lo_b)
    np.testing.assert_array_equal(hi_a, hi_b)
    assert lo_a.shape == hi_a.shape and lo_a.mean() < 0.6 * hi_a.mean()  # low light is darker
    lo_c, _ = SyntheticPairs("lowlight", 3, mini_root, "train", seed=1).load(5)
    assert not np.array_equal(lo_a, lo_c)


def test_train_val_split_is_seeded_stratified_and_inside_the_train_split(mini_root):
    index = read_cub(mini_root)
    train_ids = {r.image_id for r in index.split("train")}
    train, val = train_val_split(index)  # 10%, seed 0
    assert {r.image_id for r in train} | {r.image_id for r in val} == train_ids
    assert not {r.image_id for r in train} & {r.image_id for r in val}
    assert Counter(r.class_id for r in val) == {c: 1 for c in range(1, 11)}  # round(0.1 * 8) = 1 per class
    assert [r.image_id for r in val] == sorted(r.image_id for r in val)  # images.txt order
    assert train_val_split(index) == (train, val)  # seeded: the same parts again
    other = train_val_split(index, seed=1)[1]
    assert {r.image_id for r in other} != {r.image_id for r in val}
    assert Counter(r.class_id for r in train_val_split(index, 0.25)[1]) == {c: 2 for c in range(1, 11)}
    assert train_val_split(index, 0.0)[1] == [] and len(train_val_split(index, 0.99)[1]) == 70  # never all 8
    with pytest.raises(ValueError, match=r"\[0, 1\), got 1"):
        train_val_split(index, 1)
    with pytest.raises(ValueError, match="--val-fraction 0 holds none"):
        SyntheticPairs("fog", 3, mini_root, "val", val_fraction=0.0)
    src = SyntheticPairs("fog", 3, mini_root, "val", val_fraction=0.25)
    assert sorted(src.names) == sorted(r.rel_path for r in train_val_split(index, 0.25)[1])


def test_training_and_validation_never_read_a_test_image(mini_root_unreadable_test, tmp_path):
    from restoration.train import train_restoration

    root = mini_root_unreadable_test
    with pytest.raises(ImageDecodeError):  # the copy really is broken
        load_rgb(read_cub(root).image_path(read_cub(root).split("test")[0]))
    for split in ("train", "val", "all"):
        src = open_pairs(f"synthetic:fog:3:{root}", split)
        for i in range(len(src)):
            src.load(i)
    run = train_restoration(out=str(tmp_path / "run"), pairs=f"synthetic:fog:3:{root}", crop=32, batch_size=2,
                            steps=2, val_every=1, val_images=10, ckpt_every=0, plot=False, progress=False)
    assert (run / "val.csv").read_text().count("\n") == 3  # header + 2 validations
    assert json.loads((run / "config.json").read_text())["settings"]["val_fraction"] == 0.1  # recorded in the run


def test_synthetic_spec_errors(mini_root):
    with pytest.raises(ValueError, match="fog"):
        open_pairs(f"synthetic:snow:3:{mini_root}")
    with pytest.raises(ValueError, match="1..5"):
        open_pairs(f"synthetic:fog:9:{mini_root}")
    with pytest.raises(ValueError, match="integer"):
        open_pairs("synthetic:fog:x")


def test_random_crop_pads_small_images_and_keeps_alignment(tmp_path):
    rng = np.random.default_rng(0)
    high = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(high).save(tmp_path / "h.png")
    Image.fromarray(255 - high).save(tmp_path / "l.png")
    (tmp_path / "low").mkdir(), (tmp_path / "high").mkdir()
    (tmp_path / "l.png").rename(tmp_path / "low" / "x.png")
    (tmp_path / "h.png").rename(tmp_path / "high" / "x.png")
    ds = RandomCropPairs(open_pairs(f"{tmp_path / 'low'}:{tmp_path / 'high'}", "all"), crop=32)
    for seed in range(4):
        lo, hi = ds[(0, seed)]
        assert lo.shape == hi.shape == (3, 32, 32)
        assert float(lo.min()) >= 0 and float(lo.max()) <= 1
        assert np.allclose(lo.numpy(), 1 - hi.numpy(), atol=1e-6)  # same crop and flip on both
    a, b = ds[(0, 7)], ds[(0, 7)]
    assert np.array_equal(a[0].numpy(), b[0].numpy())
    ds16 = RandomCropPairs(ds.source, crop=16)
    crops = {ds16[(0, s)][1].numpy().tobytes() for s in range(8)}
    assert len(crops) > 1  # the crop offset really is random


def test_batch_keys_epochs_and_ranks():
    n, b = 10, 4
    seen = [k[0] for s in range(5) for k in batch_keys(s, n, b, seed=3)]  # 20 samples = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert batch_keys(2, n, b, 3) == batch_keys(2, n, b, 3)
    assert batch_keys(2, n, b, 3) != batch_keys(2, n, b, 4)
    # two ranks of batch 2 together see exactly the global batch of one process with batch 4
    assert batch_keys(1, n, 2, 3, rank=0, world_size=2) + batch_keys(1, n, 2, 3, rank=1, world_size=2) == batch_keys(1, n, 4, 3)
