"""Throughput of `restoration.restore` with the small nets against its floor (decode + network + encode).

    python benchmarks/restore_throughput.py                    # 48 CUB-sized images, every registered net
    python benchmarks/restore_throughput.py --nets iat --n-images 200 --threads 2

For N CUB-sized images (generated mini-CUB test images upscaled to a longer side of 500 px, JPEG, as in
CUB-200-2011) and a
randomly initialised net of each name (speed does not depend on the weights), it times in one run:
  decode   `cubdata.load_rgb` of every image;
  network  `restoration.restore.restore_array` on the decoded images, one image per call (the CUB images have
           many sizes, so real batches are small);
  encode   PNG encoding of the outputs (`cubdata.encode_image`);
  restore  the whole `restoration.restore.restore_cub_root` (decode, network, encode, atomic writes, manifest),
and prints images/s for each and restore / floor, where floor = decode + network + encode. The full test split
of CUB (5,794 images) is projected from the restore rate.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from runkit.files import atomic_write_bytes
from cubdata import encode_image, generate_mini_cub, load_rgb, read_cub
from runkit.runtime import torch_threads
from restoration.checkpoint import CKPT_FORMAT
from restoration.nets import NETS, build_net
from restoration.restore import restore_array, restore_cub_root

CUB_TEST_IMAGES = 5794


def make_cub_sized_root(dst: Path, n_images: int) -> Path:
    """A generated mini-CUB root whose ``n_images`` test images are upscaled to CUB's typical size (longer
    side 500 px, JPEG quality 95). Boxes are left at the small size: the restorer does not read them."""
    per_class = 2 * max(1, -(-n_images // 10))  # half of each class is test
    index = generate_mini_cub(dst, n_classes=10, per_class=per_class, seed=0)
    for r in index.split("test"):
        img = Image.fromarray(load_rgb(index.image_path(r)))
        w, h = img.size
        scale = 500 / max(w, h)
        img = img.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
        atomic_write_bytes(index.image_path(r), encode_image(np.asarray(img), "jpeg", 95))
    return dst


def _bench_row(name: str, images: list, t_decode: float, root: Path, tmp: Path, batch_size: int) -> str:
    """One table row: the net alone, PNG encoding alone, and the whole restore_cub_root, in images/s."""
    n = len(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_net(name).eval()
    restore_array(net, images[:1])  # warm-up
    t0 = time.perf_counter()
    outs = [restore_array(net, [im])[0] for im in images]
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    for o in outs:
        encode_image(o, "png")
    t_enc = time.perf_counter() - t0
    ckpt = tmp / f"{name}.pt"
    torch.save({"format": CKPT_FORMAT, "net": name, "net_kwargs": {},
                "state_dict": net.state_dict(), "step": 0, "config": {}}, ckpt)
    t0 = time.perf_counter()
    restore_cub_root(ckpt, root, tmp / f"out-{name}", batch_size=batch_size, progress=False)
    t_restore = time.perf_counter() - t0
    floor = t_decode + t_net + t_enc
    return (f"| {name} | {n / t_decode:.1f} | {n / t_net:.1f} | {n / t_enc:.1f} | {n / floor:.1f} | "
            f"{n / t_restore:.1f} | {t_restore / floor:.2f} | {CUB_TEST_IMAGES * t_restore / n / 60:.1f} min |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default=",".join(NETS.names()), help="comma-separated net names (default: all)")
    p.add_argument("--n-images", type=int, default=48, help="number of CUB-sized images (default 48)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="restore_cub_root's --batch-size (default 8)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_cub_sized_root(tmp / "in", args.n_images)
        index = read_cub(root)
        paths = [index.image_path(r) for r in index.split("test")]  # n_images rounded up to whole classes
        t0 = time.perf_counter()
        images = [load_rgb(p) for p in paths]
        t_decode = time.perf_counter() - t0
        print(f"{len(paths)} images of about {images[0].shape[1]}x{images[0].shape[0]} px, {args.threads} thread(s)")
        print("| net | decode img/s | network img/s | encode img/s | floor img/s | restore img/s | restore / floor | "
              "full test split (5,794) |")
        print("|---|---|---|---|---|---|---|---|")
        for name in [s for s in args.nets.split(",") if s]:
            print(_bench_row(name, images, t_decode, root, tmp, args.batch_size), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
