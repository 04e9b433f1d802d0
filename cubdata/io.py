"""Image decoding and encoding shared by every package.

`load_rgb` judges the format by content (Pillow sniffs magic bytes, not the extension), honours the EXIF
orientation tag and converts every mode (L, LA, P, CMYK, I;16, RGBA ...) to 8-bit RGB.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runkit.errors import UnreadableInputError

__all__ = ["ImageDecodeError", "load_rgb", "load_pil_rgb", "require_decodable", "encode_image", "IMAGE_SUFFIXES",
           "list_images", "load_square_tensor"]

#: File suffixes read as images wherever a plain folder is accepted (compared lower-case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")






class ImageDecodeError(UnreadableInputError):
    """An image file exists but cannot be decoded (truncated, not an image, unsupported)."""

    hint = "; replace it with a readable image (or, in an image folder, remove it)"


def load_pil_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` to an RGB PIL image, EXIF-transposed, whatever its format or mode on disk."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # force a full decode so truncated files fail here, not later
            im = ImageOps.exif_transpose(im)
            if im.mode == "CMYK":
                # Pillow's CMYK->RGB is naive but deterministic; Adobe-inverted CMYK JPEGs are already
                # un-inverted by Pillow's JPEG decoder.
                im = im.convert("RGB")
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                hi = max(float(arr.max()), 1.0)
                im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, rgba)
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ImageDecodeError(f"cannot decode image {path}: {err}") from err


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode ``path`` to a ``uint8 HxWx3`` RGB array (content-sniffed format, EXIF orientation applied).

    Raises ``FileNotFoundError`` if missing and ``ImageDecodeError`` if the file cannot be decoded.
    """
    return np.asarray(load_pil_rgb(path), dtype=np.uint8).copy()


def require_decodable(paths, *, desc: str = "checking images", progress: bool = False) -> int:
    """Decode every image of ``paths`` once, as `load_pil_rgb` does when the work reaches it, so that a
    missing or broken file stops a command before its first write instead of mid-run. Raises
    ``FileNotFoundError`` / ``ImageDecodeError`` naming the first bad file; returns the number checked.
    Cost: a full decode, a few ms per CUB-sized (500x375) JPEG on one core, half a minute or so for CUB's 5,994
    training images (``python benchmarks/decode_check.py`` measures it); the decoded pixels are not kept."""
    paths = list(paths)
    if progress and paths:
        from tqdm.auto import tqdm

        paths = tqdm(paths, desc=desc, unit="img", leave=False, dynamic_ncols=True)
    n = 0
    for path in paths:
        load_pil_rgb(path)
        n += 1
    return n


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """Encode a ``uint8 HxWx3`` array to JPEG or PNG bytes; deterministic for identical input."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        seen = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise TypeError(f"encode_image expects a uint8 HxWx3 array, got {seen}")
    fmt = fmt.lower()
    buf = io.BytesIO()
    im = Image.fromarray(image, "RGB")
    if fmt in ("jpeg", "jpg"):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        im.save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2, optimize=False)
    elif fmt == "png":
        im.save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"unknown image format {fmt!r}; use 'jpeg' or 'png'")
    return buf.getvalue()












def load_square_tensor(path: str | os.PathLike, size: int):
    """Decode an image, resize its shorter side to ``size`` (bicubic, antialiased) and centre-crop:
    ``[0, 1] 3 x size x size float`` torch tensor (the size a diffusion prior takes)."""
    import torch

    im = load_pil_rgb(path)
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by `IMAGE_SUFFIXES`) under ``folder``, recursively, sorted by relative path; hidden files
    and folders (names starting with '.') are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {str(root)!r}")
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            found.append(p)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())










