"""Image decoding and atomic file writing shared by every package.

`load_rgb` judges the format by content (Pillow sniffs magic bytes, not the extension), honours the EXIF
orientation tag and converts every mode (L, LA, P, CMYK, I;16, RGBA ...) to 8-bit RGB.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageDecodeError",
    "load_rgb",
    "load_pil_rgb",
    "encode_image",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_save_torch",
]


class ImageDecodeError(OSError):
    """An image file exists but cannot be decoded (truncated, not an image, unsupported)."""


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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints of several GB included)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``.

    An interrupted write never leaves a partial file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path`` (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (temp file, then rename)."""
    import torch  # local: keeps the data layer importable without torch for the corruption workers

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
