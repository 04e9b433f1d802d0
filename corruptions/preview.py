"""Save a grid of one image under every corruption (rows) and severity (columns) for people to look at.

    python -m corruptions.preview bird.jpg --out grid.png
    python -m corruptions.preview --out grid.png          # an image of the built-in mini benchmark

Each panel is titled with its PSNR (dB) against the clean image, which sits in the first column.
"""
from __future__ import annotations

import argparse
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cubdata import ImageDecodeError, load_rgb, mini_cub_root, read_cub
from runkit.files import atomic_write_bytes
from runkit.errors import EXPECTED_ERRORS, run_cli
from runkit.options import RunOptions, add_config_arguments, config_from_args, option
from runkit.checks import positive_int

from corruptions import corrupt, get_corruption, get_corruption_names, image_rng
from corruptions._checks import check_image, check_severity

log = logging.getLogger(__name__)

__all__ = ["PreviewConfig", "corruption_grid", "plot_corruption_grid", "psnr", "default_preview_image", "build_parser",
           "main"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two ``uint8 HxWx3`` images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def corruption_grid(
    image: np.ndarray, corruptions=None, severities=(1, 2, 3, 4, 5), seed: int = 0, image_id: int = 0
) -> dict[tuple[str, int], np.ndarray]:
    """``{(corruption, severity): uint8 HxWx3}`` for ``image`` (``uint8 HxWx3``); the generator of each cell
    is `corruptions.image_rng` (seed, image_id, corruption, severity), as in the benchmark builder."""
    check_image(image)
    names = list(corruptions or get_corruption_names())
    sevs = [check_severity(s) for s in severities]
    return {(n, s): corrupt(image, n, s, image_rng(seed, image_id, n, s)) for n in names for s in sevs}


def plot_corruption_grid(
    image: np.ndarray, grid: dict[tuple[str, int], np.ndarray], fig=None, panel_inches: float = 2.0
):
    """Draw ``image`` and ``grid`` (from `corruption_grid`) as rows = corruptions, columns = clean +
    severities, each titled with its PSNR. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(k[0] for k in grid))
    sevs = sorted({k[1] for k in grid})
    h, w = image.shape[:2]
    if fig is None:
        fig = plt.figure(figsize=(panel_inches * (len(sevs) + 1), panel_inches * len(names) * h / w + 0.4))
    axes = np.atleast_2d(fig.subplots(len(names), len(sevs) + 1, squeeze=False))
    for r, name in enumerate(names):
        axes[r, 0].imshow(image)
        axes[r, 0].set_title("clean", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=10)
        for c, sev in enumerate(sevs, start=1):
            out = grid[(name, sev)]
            axes[r, c].imshow(out)
            axes[r, c].set_title(f"severity {sev}: {psnr(out, image):.1f} dB", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def default_preview_image() -> Path:
    """The first test image of the built-in mini benchmark."""
    idx = read_cub(mini_cub_root())
    return idx.image_path(idx.split("test")[0])


@dataclass(kw_only=True)
class PreviewConfig(RunOptions):
    """The preview's options: one image, the corruptions and severities of the grid, the figure file."""

    image: str | None = option(None, flag="image", nargs="?", help="image file (default: a mini-benchmark test image)")
    out: str = option("corruptions-preview.png", help="output figure (.png, .pdf, .jpg ...)")
    corruptions: str = option("fog,rain,lowlight", help="comma-separated names of registered corruptions or "
                                                        "pkg.module:function")
    severities: str = option("1,2,3,4,5", help="comma-separated severities, each in 1..5")
    seed: int = option(0, help="seed of the per-cell generators")
    dpi: int = option(120, check=positive_int, help="resolution of the saved figure")

    def check(self) -> None:
        self.grid()

    def grid(self) -> tuple[list[str], list[int]]:
        """The corruption names and severities; ValueError naming the bad one."""
        names = [n.strip() for n in self.corruptions.split(",") if n.strip()]
        if not names:
            raise ValueError(f"--corruptions names no corruption; valid: {', '.join(get_corruption_names())}")
        for n in names:
            get_corruption(n)  # an unknown name raises, listing the valid ones
        sevs = []
        for s in self.severities.split(","):
            try:
                sevs.append(check_severity(int(s)))
            except ValueError:
                raise ValueError(f"--severities must be comma-separated integers in 1..5, got {self.severities!r}") from None
        return names, sevs


def build_parser() -> argparse.ArgumentParser:
    from runkit.cli import ArgumentParser

    p = ArgumentParser(prog="python -m corruptions.preview", description=__doc__)
    # the default is read from the registry when the parser is built: corruptions registered since count
    return add_config_arguments(p, PreviewConfig, defaults={"corruptions": ",".join(get_corruption_names())},
                                skip=("device", "threads", "overwrite", "progress"))


#: The advice added to a decode error's line.
_HINTS = {ImageDecodeError: "; pass a readable image file (JPEG, PNG, ...)"}


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(PreviewConfig, build_parser().parse_args(argv))
    # CubLayoutError (no default image) is a ValueError
    return run_cli(lambda: _main(cfg.validate()), errors=(*EXPECTED_ERRORS, TypeError), hints=_HINTS, out=cfg.out,
                   out_kind="file")


def _main(args: PreviewConfig) -> int:
    names, sevs = args.grid()
    path = Path(args.image) if args.image else default_preview_image()
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}; pass an existing image (or none for a mini-benchmark image)")
    image = load_rgb(path)  # ImageDecodeError names the file

    import matplotlib

    matplotlib.use("Agg")  # files only; never opens a window
    import matplotlib.pyplot as plt

    grid = corruption_grid(image, names, sevs, seed=args.seed)
    fig = plot_corruption_grid(image, grid)
    buf = io.BytesIO()
    fmt = Path(args.out).suffix.lstrip(".").lower() or "png"
    fig.savefig(buf, format=fmt, dpi=args.dpi)
    plt.close(fig)
    atomic_write_bytes(args.out, buf.getvalue())
    size = f"{image.shape[1]}x{image.shape[0]}"
    print(f"wrote {args.out}: {len(names)} corruption(s) x {len(sevs)} severities of {path} ({size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
