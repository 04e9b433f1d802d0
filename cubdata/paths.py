"""Where a command that rewrites a CUB root's images (the degraded-variant builder, the restorer) puts each
output: the one rule, written once."""
from __future__ import annotations

from pathlib import PurePosixPath

__all__ = ["output_rel_path", "OUTPUT_FORMATS"]

#: Output image formats of the commands that rewrite a CUB root's images.
OUTPUT_FORMATS = ("png", "jpeg")


def output_rel_path(rel_path: str, fmt: str) -> str:
    """Where the output for the image ``rel_path`` (relative to ``images/``, POSIX) goes when written as
    ``fmt``: the same folder and stem; ``.png`` for PNG; for JPEG the original name when it already ends in
    .jpg/.jpeg (any case), else ``.jpg``. ``"001.Bird/a.jpg"`` -> ``"001.Bird/a.png"`` for PNG."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
    p = PurePosixPath(rel_path)
    if fmt == "png":
        return p.with_suffix(".png").as_posix()
    return p.as_posix() if p.suffix.lower() in (".jpg", ".jpeg") else p.with_suffix(".jpg").as_posix()
