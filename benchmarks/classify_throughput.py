"""Throughput of Table 2's scoring loop against the bare model forward on the same batches.

For each configuration (architecture x input size x DataLoader workers) it measures
  loop:    images/s of `classifiers.predict.predict` over a DataLoader of `classifiers.scoring_data.ScoringDataset`
           (JPEG decode, resize, centre crop, normalise, collate, device copy, forward, argmax, gather);
  forward: images/s of ``model(x).argmax(1)`` alone, on the very same batches, prepared beforehand;
and prints their ratio (time of the loop / time of the forward): the data pipeline's overhead. Goal <= 1.3.
Each measurement is repeated ``--repeats`` times, alternating loop and forward, and the best is kept (the
machine may be shared). Models have random weights (speed does not depend on them).

    python benchmarks/classify_throughput.py                         # CPU, about 1.5 minutes on 2 cores
    python benchmarks/classify_throughput.py --configs resnet50:448,vgg16:224 --workers 2 --repeats 2  # ~4 min
    python benchmarks/classify_throughput.py --device cuda --configs resnet50:448,vgg16:448 --workers 0,4,8 \
        --n-images 512 --batch-size 64

Images are the mini benchmark's, upsampled to CUB's typical 500x375 / 375x500 and saved as JPEG quality 90,
so that decode and resize cost what real CUB photos cost (``--n-images``, default 40). Numbers depend on the machine and its load: on a shared CPU a ratio below 1
means another process slowed the forward measurement. The tiny "resnet-mini" row shows the other extreme,
a model so cheap that JPEG decoding dominates (a ratio far above 1.3 is expected there).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifiers import build_classifier, default_preprocess, eval_transform
from classifiers.predict import make_loader, predict, resolve_device
from classifiers.scoring_data import ScoringDataset
from runkit.files import atomic_write_bytes
from cubdata import encode_image, generate_mini_cub, load_rgb


def make_cub_sized_root(dst: Path, n_images: int, seed: int = 0):
    """A CUB root whose ``n_images`` (rounded up to a multiple of 10) test images are mini-benchmark
    images upsampled to 500x375 or 375x500 with mild grain (JPEG sizes and decode costs like CUB's)."""
    per_class = 2 * max(1, -(-n_images // 10))
    idx = generate_mini_cub(dst, n_classes=10, per_class=per_class, seed=seed)
    rng = np.random.default_rng(seed)
    for rec in idx.split("test"):
        img = load_rgb(idx.image_path(rec))
        size = (500, 375) if img.shape[1] >= img.shape[0] else (375, 500)
        big = np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC), np.float32)
        big += rng.normal(0, 3, big.shape)
        atomic_write_bytes(idx.image_path(rec), encode_image(np.clip(big, 0, 255).round().astype(np.uint8), "jpeg", 90))
    return idx


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model, dataset, batch_size: int, workers: int, device: torch.device, repeats: int) -> dict:
    """Best-of-``repeats`` seconds of the scoring loop and of the bare forward over ``dataset``."""
    loader = make_loader(dataset, batch_size, workers, device)
    # the same batches, decoded and on the device, for the bare forward
    batches = [x.to(device) for x, _, _ in loader]
    if device.type == "cuda":
        batches = [x.contiguous(memory_format=torch.channels_last) for x in batches]
    n = sum(len(x) for x in batches)
    with torch.inference_mode():  # warm-up (allocator, cuDNN autotune, first-call costs)
        model(batches[0]).argmax(1).cpu()
    t_loop, t_fwd = [], []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = predict(model, make_loader(dataset, batch_size, workers, device), device, progress=False)
        _sync(device)
        t_loop.append(time.perf_counter() - t0)
        if len(out["model"]["pred"]) != n:
            raise RuntimeError(f"scoring loop returned {len(out['model']['pred'])} predictions for {n} images")
        t0 = time.perf_counter()
        with torch.inference_mode():
            preds = [model(x).argmax(1).cpu() for x in batches]
        _sync(device)
        t_fwd.append(time.perf_counter() - t0)
        if sum(len(p) for p in preds) != n:
            raise RuntimeError("bare forward lost images")
    loop, fwd = min(t_loop), min(t_fwd)
    return {"images": n, "loop_s": loop, "forward_s": fwd, "loop_ips": n / loop, "forward_ips": n / fwd,
            "ratio": loop / fwd}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--configs", default="resnet50:224,resnet-mini:64",
                    help="comma-separated ARCH:IMG_SIZE")
    ap.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--n-images", type=int, default=40, help="test images (CUB-sized)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per batch")
    ap.add_argument("--repeats", type=int, default=3, help="repetitions per measurement (best kept)")
    ap.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'auto'")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    configs = [(a, int(s)) for a, s in (c.split(":") for c in args.configs.split(","))]
    workers = [int(w) for w in args.workers.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        idx = make_cub_sized_root(Path(tmp) / "cub", args.n_images)
        recs = idx.split("test")
        paths = [idx.image_path(r) for r in recs]
        labels = [r.label for r in recs]
        ids = [r.image_id for r in recs]
        print(f"{len(recs)} CUB-sized test images, batch {args.batch_size}, device {device}, "
              f"torch threads {torch.get_num_threads()}")
        print(f"{'arch':<12} {'px':>4} {'workers':>7} {'loop img/s':>11} {'forward img/s':>14} {'ratio':>6}")
        for arch, size in configs:
            model = build_classifier(arch, 200, "none").to(device).eval().requires_grad_(False)
            if device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            ds = ScoringDataset(paths, labels, ids, eval_transform(default_preprocess(arch, size)))
            for w in workers:
                r = measure(model, ds, args.batch_size, w, device, args.repeats)
                r.update(arch=arch, img_size=size, workers=w, device=str(device), threads=torch.get_num_threads())
                results.append(r)
                print(f"{arch:<12} {size:>4} {w:>7} {r['loop_ips']:>11.1f} {r['forward_ips']:>14.1f} "
                      f"{r['ratio']:>6.2f}", flush=True)
            del model
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
