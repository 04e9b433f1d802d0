"""The built-in mini benchmark: a tiny, deterministic dataset in the exact CUB-200-2011 layout.

Ten "species" (classes), twenty images each (eight train, twelve test), 96-160 px with mixed aspect ratios.
Each image is one object on a smooth, low-saturation background. The class is carried by the object's
hue (five hues) together with its shape and surface texture (striped ellipse vs dotted triangle), with
per-image jitter of position, size, rotation, hue, brightness and background. A small classifier learns
it in seconds; fog (contrast/saturation loss), rain (line texture) and low light (dark + noise) all
remove part of that evidence, so accuracy drops on degraded copies and restoration can bring it back.

It is a smoke benchmark: numbers on it say that the pipeline runs and that effects have the expected
sign, nothing about real birds.
"""
from __future__ import annotations

import colorsys
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from runkit.files import atomic_write_bytes, atomic_write_text
from cubdata.io import encode_image
from cubdata.layout import CubIndex, read_cub

log = logging.getLogger(__name__)

__all__ = ["generate_mini_cub", "mini_cub_root", "cache_dir", "MINI_VERSION", "MINI_CLASSES",
           "MINI_VARIANTS"]

#: v2: 20 images per class (8 train, 12 test, so the demo's Top-1 has n = 120) and a separate validation
#: benchmark (`mini_cub_root(variant="val")`, the same generator with seed 1) for tuning on images the
#: demo's test split never shares. v1 had 6 train + 6 test per class and no validation set.
MINI_VERSION = "mini-cub-v2"
MINI_PER_CLASS = 20
MINI_TRAIN_PER_CLASS = 8
#: seed of each variant: "main" is the benchmark (train + test), "val" an independent draw for tuning.
MINI_VARIANTS = {"main": 0, "val": 1}
_HUES = {"Crimson": 0.0, "Amber": 0.10, "Olive": 0.22, "Teal": 0.50, "Violet": 0.76}
_FORMS = {"Striped_Ellipse": "ellipse", "Dotted_Triangle": "triangle"}
MINI_CLASSES = [f"{h}_{f}" for f in _FORMS for h in _HUES]  # class ids 1..10 in this order


def cache_dir() -> Path:
    """Cache folder for generated data and small cached models: ``$DIFFLOSS_CACHE``, else
    ``$XDG_CACHE_HOME/diffloss-toolkit``, else ``~/.cache/diffloss-toolkit``."""
    env = os.environ.get("DIFFLOSS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "diffloss-toolkit"


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1] (bilinear upsampling of a coarse grid)."""
    grid = rng.random((cells, cells)).astype(np.float32)
    im = Image.fromarray((grid * 255).astype(np.uint8), "L").resize((w, h), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def _render(rng: np.random.Generator, class_idx: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    hue_name = list(_HUES)[class_idx % len(_HUES)]
    form = list(_FORMS.values())[class_idx // len(_HUES)]
    w, h = (int(v) for v in rng.integers(96, 161, size=2))
    # background: low-saturation smooth gradient, random hue, mild grain
    bg_hue = rng.random()
    base = np.array(colorsys.hsv_to_rgb(bg_hue, 0.15 + 0.1 * rng.random(), 0.45 + 0.3 * rng.random()), np.float32)
    field = _smooth_field(rng, h, w)[..., None]
    img = base[None, None, :] * (0.75 + 0.5 * field) + rng.normal(0, 0.02, (h, w, 3)).astype(np.float32)

    # object mask
    s = min(w, h)
    size = s * (0.55 + 0.25 * rng.random())
    cx = w / 2 + (rng.random() - 0.5) * (w - size) * 0.6
    cy = h / 2 + (rng.random() - 0.5) * (h - size) * 0.6
    angle = rng.uniform(0, np.pi)
    ss = 4  # supersampling for smooth edges
    mask_im = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(mask_im)
    if form == "ellipse":
        a, b = size / 2, size / 3.2
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        pts = np.stack([a * np.cos(t), b * np.sin(t)], 1)
    else:
        r = size / 1.9
        t = np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) - np.pi / 2
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T + np.array([cx, cy])
    draw.polygon([(float(x * ss), float(y * ss)) for x, y in pts], fill=255)
    mask = np.asarray(mask_im.resize((w, h), Image.LANCZOS), dtype=np.float32)[..., None] / 255.0

    # object colour and texture
    hue = (_HUES[hue_name] + rng.normal(0, 0.015)) % 1.0
    val = 0.75 + 0.2 * rng.random()
    col = np.array(colorsys.hsv_to_rgb(hue, 0.8, val), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    period = s / 11.0
    if form == "ellipse":
        tex = 0.5 + 0.5 * np.cos(2 * np.pi * u / period)
    else:
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        tex = (np.sqrt(du**2 + dv**2) > 0.28).astype(np.float32)
    dark = col * 0.35
    obj = dark + (col - dark) * tex[..., None]
    img = img * (1 - mask) + obj * mask
    img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(mask[..., 0] > 0.5)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return img, (float(x0), float(y0), float(x1 - x0), float(y1 - y0))


def generate_mini_cub(
    out_root: str | os.PathLike, n_classes: int = 10, per_class: int = 12, seed: int = 0,
    n_train: int | None = None,
) -> CubIndex:
    """Write the mini benchmark into ``out_root`` (a CUB root) and return its index.

    Deterministic: the same arguments give byte-identical files. Per class, the first ``n_train`` images
    (default: half of ``per_class``) are train, the rest test. Files are written atomically; ``images.txt`` is written last, so a
    folder with ``images.txt`` is complete.
    """
    if not 1 <= n_classes <= len(MINI_CLASSES):
        raise ValueError(f"n_classes must be in 1..{len(MINI_CLASSES)}, got {n_classes}")
    if per_class < 2:
        raise ValueError(f"per_class must be >= 2 (one train, one test), got {per_class}")
    n_train = per_class // 2 if n_train is None else int(n_train)
    if not 1 <= n_train < per_class:
        raise ValueError(f"n_train must be in 1..{per_class - 1} (at least one train and one test image), got {n_train}")
    out = Path(out_root)
    lines = {"images": [], "labels": [], "split": [], "bbox": []}
    image_id = 0
    for c in range(n_classes):
        cls_dir = f"{c + 1:03d}.{MINI_CLASSES[c]}"
        for k in range(per_class):
            image_id += 1
            rng = np.random.default_rng([seed, c, k])
            img, bbox = _render(rng, c)
            rel = f"{cls_dir}/{MINI_CLASSES[c]}_{k + 1:04d}_{image_id}.jpg"
            atomic_write_bytes(out / "images" / rel, encode_image(img, "jpeg", 95))
            lines["images"].append(f"{image_id} {rel}\n")
            lines["labels"].append(f"{image_id} {c + 1}\n")
            lines["split"].append(f"{image_id} {int(k < n_train)}\n")
            lines["bbox"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in bbox) + "\n")
    atomic_write_text(out / "classes.txt", "".join(f"{c + 1} {c + 1:03d}.{MINI_CLASSES[c]}\n" for c in range(n_classes)))
    atomic_write_text(out / "image_class_labels.txt", "".join(lines["labels"]))
    atomic_write_text(out / "train_test_split.txt", "".join(lines["split"]))
    atomic_write_text(out / "bounding_boxes.txt", "".join(lines["bbox"]))
    atomic_write_text(out / "images.txt", "".join(lines["images"]))
    return read_cub(out)


def mini_cub_root(cache: str | os.PathLike | None = None, variant: str = "main") -> Path:
    """Path of the built-in mini benchmark, generated on first use under ``cache`` (default `cache_dir`).

    ``variant="main"``: the benchmark (8 train + 12 test images per class). ``"val"``: an independent draw
    of the same generator (seed 1), for choosing settings (e.g. DiffLoss' gamma and lambda) on images that
    neither the benchmark's test split nor anything trained on its train split has seen.
    """
    if variant not in MINI_VARIANTS:
        raise ValueError(f"unknown mini-CUB variant {variant!r}; valid: {sorted(MINI_VARIANTS)}")
    root = Path(cache) if cache is not None else cache_dir()
    root = root / (MINI_VERSION if variant == "main" else f"{MINI_VERSION}-{variant}")
    try:
        read_cub(root)
        return root
    except ValueError:
        pass
    log.info("generating the built-in mini benchmark into %s", root)
    generate_mini_cub(root, per_class=MINI_PER_CLASS, n_train=MINI_TRAIN_PER_CLASS, seed=MINI_VARIANTS[variant])
    return root
