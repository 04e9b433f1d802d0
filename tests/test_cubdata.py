"""The CUB data layer: layout reader, decoding of odd images, Dataset, mini benchmark."""
from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cubdata import (
    CubDataset,
    CubLayoutError,
    ImageDecodeError,
    MINI_CLASSES,
    crop_to_bbox,
    encode_image,
    generate_mini_cub,
    load_rgb,
    read_cub,
    write_cub_metadata,
)
from runkit.files import atomic_write_bytes


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def small_root(tmp_path) -> Path:
    generate_mini_cub(tmp_path / "cub", n_classes=2, per_class=4, seed=3)
    return tmp_path / "cub"


# ---------------------------------------------------------------- layout
def test_mini_root_layout(mini_root):
    idx = read_cub(mini_root)
    assert len(idx) == 200 and idx.num_classes == 10  # mini-cub-v2: 8 train + 12 test per class
    assert len(idx.split("train")) == 80 and len(idx.split("test")) == 120
    assert len(idx.split("all")) == 200
    assert [r.is_train for r in idx.records[:20]] == [True] * 8 + [False] * 12
    rec = idx.records[0]
    assert rec.image_id == 1 and rec.class_id == 1 and rec.label == 0 and rec.is_train
    assert rec.rel_path.startswith("001." + MINI_CLASSES[0] + "/")
    assert idx.image_path(rec).is_file()
    assert all(r.bbox is not None for r in idx.records)
    sizes = {load_rgb(idx.image_path(r)).shape for r in idx.records[:40]}
    assert all(96 <= h <= 160 and 96 <= w <= 160 and c == 3 for h, w, c in sizes)
    assert len({h / w for h, w, _ in sizes}) > 5  # mixed aspect ratios


def test_mini_val_variant_is_an_independent_draw(mini_root):
    from cubdata import mini_cub_root

    val = mini_cub_root(variant="val")
    assert val != mini_root and val.name.endswith("-val")
    a, b = read_cub(mini_root), read_cub(val)
    assert [r.rel_path for r in a.records] == [r.rel_path for r in b.records]  # same layout and classes ...
    assert a.image_path(a.records[0]).read_bytes() != b.image_path(b.records[0]).read_bytes()  # ... other images
    with pytest.raises(ValueError, match=r"unknown mini-CUB variant 'test'.*\['main', 'val'\]"):
        mini_cub_root(variant="test")


def test_n_train_is_checked(tmp_path):
    with pytest.raises(ValueError, match="n_train must be in 1..3"):
        generate_mini_cub(tmp_path / "x", n_classes=1, per_class=4, n_train=4)


def test_cache_dir_honours_xdg(monkeypatch, tmp_path):
    from cubdata import cache_dir

    monkeypatch.delenv("DIFFLOSS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "diffloss-toolkit"
    monkeypatch.setenv("DIFFLOSS_CACHE", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"


def test_atomic_writes_follow_the_umask(tmp_path):
    import os

    from runkit.files import atomic_write_text

    p = atomic_write_text(tmp_path / "a.txt", "x")
    old = os.umask(0)
    os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o666 & ~old  # not mkstemp's 0600


def test_mini_is_deterministic(tmp_path):
    generate_mini_cub(tmp_path / "a", n_classes=2, per_class=2, seed=0)
    generate_mini_cub(tmp_path / "b", n_classes=2, per_class=2, seed=0)
    generate_mini_cub(tmp_path / "c", n_classes=2, per_class=2, seed=1)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_expect_full_counts(small_root):
    with pytest.raises(CubLayoutError, match="expected 200 classes.*found 2"):
        read_cub(small_root, expect_full=True)


def test_missing_root_and_files(tmp_path, small_root):
    with pytest.raises(CubLayoutError, match="does not exist"):
        read_cub(tmp_path / "nope")
    (small_root / "train_test_split.txt").unlink()
    with pytest.raises(CubLayoutError, match="missing train_test_split.txt"):
        read_cub(small_root)


def test_inconsistent_root_lists_every_problem(small_root):
    lines = (small_root / "image_class_labels.txt").read_text().splitlines()
    (small_root / "image_class_labels.txt").write_text("\n".join(lines[:-1] + ["8 7"]) + "\n")  # class 7 unknown
    split = (small_root / "train_test_split.txt").read_text().splitlines()
    (small_root / "train_test_split.txt").write_text("\n".join(split[:-1]) + "\n")  # id 8 lacks a split
    img = small_root / "images" / (small_root / "images.txt").read_text().split()[1]
    img.unlink()
    with pytest.raises(CubLayoutError) as err:
        read_cub(small_root)
    msg = str(err.value)
    assert "train_test_split.txt: no entry for 1 image id" in msg and "[8]" in msg
    assert "images/: 1 of" in msg
    assert "problem(s)" in msg


def test_unknown_class_and_bad_split_value(small_root):
    labels = (small_root / "image_class_labels.txt").read_text().replace("\n8 2\n", "\n8 9\n")
    (small_root / "image_class_labels.txt").write_text(labels)
    split = (small_root / "train_test_split.txt").read_text().replace("\n7 0\n", "\n7 5\n")
    (small_root / "train_test_split.txt").write_text(split)
    with pytest.raises(CubLayoutError) as err:
        read_cub(small_root)
    assert "image 8 has class 9, not in classes.txt" in str(err.value)
    assert "image 7 has split 5" in str(err.value)


def test_variant_root_png_names_and_subset(tmp_path, small_root):
    idx = read_cub(small_root)
    test = idx.split("test")
    dst = tmp_path / "variant"
    rel = {}
    for r in test:
        new = str(Path(r.rel_path).with_suffix(".png"))
        rel[r.image_id] = new
        atomic_write_bytes(dst / "images" / new, encode_image(load_rgb(idx.image_path(r)), "png"))
    write_cub_metadata(idx, dst, records=test, rel_paths=rel)
    v = read_cub(dst)
    assert [r.image_id for r in v.records] == [r.image_id for r in test]
    assert v.classes == idx.classes
    assert all(v.image_path(r).suffix == ".png" for r in v.records)
    assert v.split("train") == []
    # PNG round trip is lossless
    np.testing.assert_array_equal(load_rgb(v.image_path(v.records[0])), load_rgb(idx.image_path(test[0])))


def test_variant_reader_resolves_changed_suffix(tmp_path, small_root):
    """images.txt may keep .jpg names while the files were saved as .png."""
    root = tmp_path / "copy"
    shutil.copytree(small_root, root)
    idx = read_cub(root)
    p = idx.image_path(idx.records[0])
    Image.open(p).save(p.with_suffix(".png"))
    p.unlink()
    idx = read_cub(root)
    assert idx.image_path(idx.records[0]).suffix == ".png"


# ---------------------------------------------------------------- decoding
def _rgb_fixture(h=20, w=30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "g.jpg"
    Image.fromarray(np.full((10, 12), 77, np.uint8), "L").save(p, quality=95)
    arr = load_rgb(p)
    assert arr.shape == (10, 12, 3) and arr.dtype == np.uint8
    assert np.all(arr[..., 0] == arr[..., 1]) and abs(int(arr.mean()) - 77) <= 1


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "c.jpg"
    # pure cyan in CMYK = (255, 0, 0, 0) -> RGB (0, 255, 255)
    Image.new("CMYK", (16, 8), (255, 0, 0, 0)).save(p, quality=100)
    assert Image.open(p).mode == "CMYK"
    arr = load_rgb(p)
    assert arr.shape == (8, 16, 3)
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r < 20 and g > 235 and b > 235


def test_png_content_with_jpg_extension(tmp_path):
    src = _rgb_fixture()
    p = tmp_path / "really_png.jpg"
    Image.fromarray(src).save(p, format="PNG")
    np.testing.assert_array_equal(load_rgb(p), src)  # lossless => decoded as PNG, not JPEG


def test_exif_orientation_is_honoured(tmp_path):
    src = np.zeros((10, 30, 3), np.uint8)
    src[:, :5] = 255  # white band on the left of the stored (landscape) pixels
    im = Image.fromarray(src)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    p = tmp_path / "rot.jpg"
    im.save(p, quality=100, exif=exif.tobytes())
    arr = load_rgb(p)
    assert arr.shape == (30, 10, 3)  # displayed as portrait
    assert arr[:5].mean() > 200 and arr[-5:].mean() < 50  # left band ends up on top


def test_rgba_palette_and_16bit(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert load_rgb(tmp_path / "a.png").min() == 255
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "i16.png")
    assert load_rgb(tmp_path / "i16.png").shape == (4, 4, 3)
    Image.fromarray(_rgb_fixture()).convert("P").save(tmp_path / "p.gif")
    assert load_rgb(tmp_path / "p.gif").shape == (20, 30, 3)


def test_truncated_and_non_image_files(tmp_path):
    good = io.BytesIO()
    Image.fromarray(_rgb_fixture(64, 64)).save(good, format="JPEG", quality=95)
    (tmp_path / "trunc.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageDecodeError, match="trunc.jpg"):
        load_rgb(tmp_path / "trunc.jpg")
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        load_rgb(tmp_path / "text.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_rgb(tmp_path / "missing.jpg")


def test_encode_image_is_deterministic_and_validates():
    a = _rgb_fixture()
    assert encode_image(a, "jpeg", 95) == encode_image(a.copy(), "jpeg", 95)
    assert encode_image(a, "png") == encode_image(a, "png")
    with pytest.raises(TypeError, match="uint8 HxWx3"):
        encode_image(a.astype(np.float32))
    with pytest.raises(ValueError, match="unknown image format"):
        encode_image(a, "webp")


def test_atomic_write_leaves_no_temp(tmp_path):
    atomic_write_bytes(tmp_path / "sub" / "f.bin", b"abc")
    assert (tmp_path / "sub" / "f.bin").read_bytes() == b"abc"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.bin"]


# ---------------------------------------------------------------- dataset / bbox
def test_dataset_items_and_bbox_crop(small_root):
    ds = CubDataset(small_root, split="test")
    assert len(ds) == 4 and ds.num_classes == 2
    img, label, image_id = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert label == ds.index.record(image_id).label
    cropped = CubDataset(small_root, split="test", bbox_crop=True)
    c, _, _ = cropped[0]
    x, y, w, h = ds.index.record(image_id).bbox
    assert c.size == (int(w), int(h))
    t = CubDataset(small_root, split="train", transform=lambda im: np.asarray(im).shape)
    assert t[0][0][2] == 3


def test_crop_to_bbox_numbers():
    a = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    np.testing.assert_array_equal(crop_to_bbox(a, (2.0, 3.0, 5.0, 4.0)), a[3:7, 2:7])
    assert crop_to_bbox(a, (2.0, 3.0, 5.0, 4.0), margin=10).shape == (10, 20, 3)  # clipped to the image
    with pytest.raises(ValueError, match="outside"):
        crop_to_bbox(a, (50.0, 50.0, 5.0, 5.0))
    with pytest.raises(ValueError, match="positive"):
        crop_to_bbox(a, (1.0, 1.0, 0.0, 5.0))
