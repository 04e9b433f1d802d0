"""Throughput of `analysis.quality` (PSNR + SSIM) against the per-image torchmetrics loop it replaced.

For each torch thread count it times, on the same CUB-sized image pairs (decode included):
  old: the former loop: per image, decode both files, convert to [0, 1] float, then torchmetrics'
       ``peak_signal_noise_ratio`` and ``structural_similarity_index_measure`` in float64 (kept below as
       `score_per_image_torchmetrics`, the reference);
  new: ``analysis.quality.evaluate_quality(pred, gt, "psnr,ssim")`` (separable SSIM window, same-size batches);
and prints seconds per image, user/system CPU seconds per image, the ratio old/new, and the largest difference
between the two methods' per-image values (expected 0). Goal: new <= 0.15 s per image on 2 cores.

    python benchmarks/quality_throughput.py                          # 40 pairs, old method on 6 of them
    python benchmarks/quality_throughput.py --n-images 200 --n-old 20 --threads 1,2 --batch-size 8

Images are smooth random pictures (bicubic upsampling of 12x16 noise plus grain), 500x375 or 375x500 at random
like CUB's photos; ground truth as JPEG quality 90, "restored" images as PNG. The old method costs seconds per
image, so it runs on the first ``--n-old`` pairs only. On a shared machine only the ratio is meaningful.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from analysis.quality import evaluate_quality, match_images
from runkit.files import atomic_write_bytes
from cubdata import encode_image, load_rgb
from runkit.runtime import torch_threads


def make_pairs(root: Path, n_images: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> tuple[Path, Path]:
    """``root/gt`` (JPEG q90) and ``root/pred`` (PNG, gt plus noise): ``n_images`` pairs of ``size`` (W, H) or
    its transpose, at random."""
    rng = np.random.default_rng(seed)
    gt_dir, pred_dir = root / "gt", root / "pred"
    for i in range(n_images):
        wh = size if rng.random() < 0.6 else size[::-1]
        small = rng.integers(0, 256, (12, 16, 3) if wh[0] > wh[1] else (16, 12, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize(wh, Image.BICUBIC), np.float32)
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).round().astype(np.uint8)
        pred = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).round().astype(np.uint8)
        atomic_write_bytes(gt_dir / f"{i:05d}.jpg", encode_image(img, "jpeg", 90))
        atomic_write_bytes(pred_dir / f"{i:05d}.png", encode_image(pred, "png"))
    return pred_dir, gt_dir


@torch.no_grad()
def score_per_image_torchmetrics(pairs) -> list[dict]:
    """The former `evaluate_quality` loop for PSNR + SSIM: one torchmetrics call per image and metric."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    rows = []
    for key, p_path, g_path in pairs:
        pu = torch.from_numpy(load_rgb(p_path)).permute(2, 0, 1)[None]
        gu = torch.from_numpy(load_rgb(g_path)).permute(2, 0, 1)[None]
        pf, gf = (pu.float() / 255.0).double(), (gu.float() / 255.0).double()
        rows.append({"image": key,
                     "psnr": float(peak_signal_noise_ratio(pf, gf, data_range=1.0, reduction="none",
                                                           dim=(1, 2, 3)).reshape(-1).float()[0]),
                     "ssim": float(structural_similarity_index_measure(pf, gf, data_range=1.0,
                                                                       reduction="none").reshape(-1).float()[0])})
    return rows


def _timed(fn):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    out = fn()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return out, wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=40, help="image pairs scored by the new path (default 40)")
    p.add_argument("--n-old", type=int, default=6, help="of those, pairs scored by the old per-image loop (default 6)")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    p.add_argument("--batch-size", type=int, default=8, help="evaluate_quality's batch_size (default 8)")
    p.add_argument("--seed", type=int, default=0, help="image seed (default 0)")
    p.add_argument("--size", default="500x375", help="image size WxH, used in both orientations (default 500x375)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def compare(nt: int, pred_dir: Path, gt_dir: Path, n_old: int, n_images: int, batch_size: int) -> dict:
    """One row: old and new method at ``nt`` torch threads (set once per configuration, never per image)."""
    pairs = match_images(pred_dir, gt_dir)
    with torch_threads(nt):
        old, t_old, u_old, s_old = _timed(lambda: score_per_image_torchmetrics(pairs[:n_old]))
        new, t_new, u_new, s_new = _timed(lambda: evaluate_quality(
            pred_dir, gt_dir, "psnr,ssim", progress=False, batch_size=batch_size)["per_image"])
    diff = max(abs(a[m] - b[m]) for a, b in zip(old, new) for m in ("psnr", "ssim"))
    row = {"threads": nt, "old_s_per_image": t_old / n_old, "new_s_per_image": t_new / n_images,
           "old_user_sys": [u_old / n_old, s_old / n_old], "new_user_sys": [u_new / n_images, s_new / n_images],
           "max_abs_diff": diff}
    row["ratio"] = row["old_s_per_image"] / row["new_s_per_image"]
    print(f"threads {nt}: old {row['old_s_per_image']:.3f} s/img (user {row['old_user_sys'][0]:.3f}, "
          f"sys {row['old_user_sys'][1]:.3f}; {n_old} imgs)  new {row['new_s_per_image']:.3f} s/img "
          f"(user {row['new_user_sys'][0]:.3f}, sys {row['new_user_sys'][1]:.3f}; {n_images} imgs)  "
          f"ratio {row['ratio']:.1f}x  max |diff| {diff:.2e}", flush=True)
    return row


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    n_old = max(1, min(args.n_old, args.n_images))
    with tempfile.TemporaryDirectory() as tmp:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        pred_dir, gt_dir = make_pairs(Path(tmp), args.n_images, args.seed, size)
        results = [compare(nt, pred_dir, gt_dir, n_old, args.n_images, args.batch_size) for nt in threads]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
