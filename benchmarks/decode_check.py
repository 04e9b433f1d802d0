"""What the up-front image check costs: `cubdata.require_decodable` (a full decode of every image, made by
`restoration.train`, `diffloss.prior.train` and `classifiers.finetune` before their first write).

    python benchmarks/decode_check.py                 # 200 CUB-sized images
    python benchmarks/decode_check.py --n-images 500

Generates mini-CUB images upscaled to CUB's typical size (longer side 500 px, JPEG quality 95), times
`require_decodable` over them on this process's one thread, and projects the time for CUB-200-2011's 5,994
training images (the prior) and all 11,788 images (fine-tuning checks both splits). Prints the load average and
CPU count beside the numbers: on a shared machine they vary with the load.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cubdata import encode_image, generate_mini_cub, load_rgb, require_decodable
from runkit.files import atomic_write_bytes

CUB_TRAIN_IMAGES, CUB_IMAGES = 5994, 11788


def cub_sized_images(dst: Path, n_images: int) -> list[Path]:
    """``n_images`` generated mini-CUB images upscaled to a longer side of 500 px (JPEG quality 95)."""
    per_class = max(1, -(-n_images // 10))
    index = generate_mini_cub(dst, n_classes=10, per_class=per_class, seed=0)
    paths = [index.image_path(r) for r in index.records[:n_images]]
    for path in paths:
        img = Image.fromarray(load_rgb(path))
        scale = 500 / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        atomic_write_bytes(path, encode_image(np.asarray(img), "jpeg", 95))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=200, help="images to check")
    p.add_argument("--repeats", type=int, default=3, help="timed passes (the fastest is reported)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        paths = cub_sized_images(Path(tmp) / "cub", args.n_images)
        require_decodable(paths[:5])  # warm-up
        best = min(_timed(paths) for _ in range(args.repeats))
    per_image = best / len(paths)
    print(f"require_decodable: {1e3 * per_image:.2f} ms per CUB-sized image ({len(paths)} images, best of "
          f"{args.repeats}); projected {per_image * CUB_TRAIN_IMAGES:.0f} s for CUB's {CUB_TRAIN_IMAGES:,} training "
          f"images, {per_image * CUB_IMAGES:.0f} s for all {CUB_IMAGES:,}")
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
    return 0


def _timed(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    require_decodable(paths)
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
