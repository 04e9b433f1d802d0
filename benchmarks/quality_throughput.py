"""SSIM on CPU: the toolkit's `restoration.metrics.ssim` against the library call that could replace it,
torchmetrics' ``structural_similarity_index_measure`` in float32, timed in the same run on the same images.

  torchmetrics float32: ``structural_similarity_index_measure(p, g, data_range=1.0, reduction="none")``, one
                        image per call (a batch of CUB-sized images runs slower per image on CPU);
  toolkit:              ``restoration.metrics.ssim(p, g)``: torchmetrics' formula and boundary handling in float64,
                        the Gaussian window applied as two 1-D passes, one image at a time;
  end to end:           ``analysis.quality.evaluate_quality(pred, gt, "psnr,ssim")`` (decode + PSNR + SSIM).

For each torch thread count it runs ``--rounds`` interleaved rounds (each times both SSIMs on every image, then
the end-to-end path), so a burst of load on a shared machine hits both, and prints the median ms per image, the
ratio torchmetrics / toolkit (median and range over rounds), the load average and the CPU count. Agreement:
both against torchmetrics in float64 (the exact value, about 1.4 s per image) on the first ``--n-ref`` images.

    python benchmarks/quality_throughput.py            # 12 CUB-sized pairs, threads 1,2, 3 rounds: about a minute
    python benchmarks/quality_throughput.py --quick    # 4 pairs, one thread, one round: seconds

Images are 500x375 or 375x500 at random like CUB's photos, in turn textured (bicubic upsampling of 12x16 noise
plus grain), smooth (3x4 noise, faint grain: a blurred background) and flat (one colour plus faint grain: a sky,
where float32 loses most); ground truth as JPEG quality 90, "restored" images (ground truth plus noise) as PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from analysis.quality import evaluate_quality, match_images
from cubdata import encode_image, load_rgb
from restoration.metrics import ssim
from runkit.files import atomic_write_bytes
from runkit.runtime import torch_threads


def make_pairs(root: Path, n_images: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> tuple[Path, Path]:
    """``root/gt`` (JPEG q90) and ``root/pred`` (PNG, gt plus noise): ``n_images`` pairs of ``size`` (W, H) or its
    transpose, at random; in turn textured, smooth and flat."""
    rng = np.random.default_rng(seed)
    gt_dir, pred_dir = root / "gt", root / "pred"
    for i in range(n_images):
        wh = size if rng.random() < 0.6 else size[::-1]
        cells, grain, noise = [((12, 16), 4, 8), ((3, 4), 1, 2), ((1, 1), 1, 1)][i % 3]
        small = rng.integers(0, 256, (*cells, 3) if wh[0] > wh[1] else (*cells[::-1], 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize(wh, Image.BICUBIC), np.float32)
        img = np.clip(img + rng.normal(0, grain, img.shape), 0, 255).round().astype(np.uint8)
        pred = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).round().astype(np.uint8)
        atomic_write_bytes(gt_dir / f"{i:05d}.jpg", encode_image(img, "jpeg", 90))
        atomic_write_bytes(pred_dir / f"{i:05d}.png", encode_image(pred, "png"))
    return pred_dir, gt_dir


def torchmetrics_ssim(pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torchmetrics' SSIM with the toolkit's settings (Gaussian 11x11, sigma 1.5, data range 1) in ``dtype``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(pred.to(dtype), target.to(dtype), data_range=1.0,
                                               reduction="none").reshape(-1).float()


def _load_pairs(pred_dir: Path, gt_dir: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    t = lambda path: torch.from_numpy(load_rgb(path)).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
    return [(t(p), t(g)) for _, p, g in match_images(pred_dir, gt_dir)]


def _ms_per_image(fn, pairs) -> float:
    t0 = time.perf_counter()
    for p, g in pairs:
        fn(p, g)
    return 1e3 * (time.perf_counter() - t0) / len(pairs)


def agreement(pairs) -> dict:
    """Largest |difference| of torchmetrics float32 and of the toolkit from torchmetrics float64 over ``pairs``."""
    ref = torch.cat([torchmetrics_ssim(p, g, torch.float64) for p, g in pairs])
    f32 = torch.cat([torchmetrics_ssim(p, g) for p, g in pairs])
    ours = torch.cat([ssim(p, g) for p, g in pairs])
    return {"n": len(pairs), "torchmetrics_f32_max_abs_diff": float((f32 - ref).abs().max()),
            "toolkit_max_abs_diff": float((ours - ref).abs().max())}


def compare(nt: int, pred_dir: Path, gt_dir: Path, pairs, rounds: int) -> dict:
    """One row: both SSIMs and the end-to-end path at ``nt`` torch threads, ``rounds`` interleaved rounds."""
    times = {"torchmetrics_f32": [], "toolkit": [], "end_to_end": []}
    with torch_threads(nt):
        ssim(*pairs[0]), torchmetrics_ssim(*pairs[0])  # warm-up (first-call allocations, oneDNN kernels)
        for _ in range(rounds):
            times["torchmetrics_f32"].append(_ms_per_image(torchmetrics_ssim, pairs))
            times["toolkit"].append(_ms_per_image(ssim, pairs))
            t0 = time.perf_counter()
            evaluate_quality(pred_dir, gt_dir, "psnr,ssim", progress=False)
            times["end_to_end"].append(1e3 * (time.perf_counter() - t0) / len(pairs))
    ratios = [a / b for a, b in zip(times["torchmetrics_f32"], times["toolkit"])]
    row = {"threads": nt, **{f"{k}_ms_per_image": float(np.median(v)) for k, v in times.items()},
           "ratio": float(np.median(ratios)), "ratio_range": [min(ratios), max(ratios)], "rounds": rounds,
           "n_images": len(pairs), "load_average": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}
    print(f"threads {nt}: SSIM torchmetrics float32 {row['torchmetrics_f32_ms_per_image']:.1f} ms/image, toolkit "
          f"(float64, separable) {row['toolkit_ms_per_image']:.1f} ms/image, ratio {row['ratio']:.2f} "
          f"({row['ratio_range'][0]:.2f}-{row['ratio_range'][1]:.2f} over {rounds} rounds); end to end "
          f"(decode + PSNR + SSIM) {row['end_to_end_ms_per_image']:.1f} ms/image; {len(pairs)} images; load average "
          f"{' '.join(f'{v:.2f}' for v in row['load_average'])} on {row['cpus']} CPUs", flush=True)
    return row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=12, help="image pairs timed (default 12)")
    p.add_argument("--n-ref", type=int, default=6, help="of those, pairs compared with torchmetrics in float64 "
                   "(about 1.4 s each; default 6)")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per thread count (default 3)")
    p.add_argument("--quick", action="store_true", help="4 pairs, 3 compared in float64, one thread, one round")
    p.add_argument("--seed", type=int, default=0, help="image seed (default 0)")
    p.add_argument("--size", default="500x375", help="image size WxH, used in both orientations (default 500x375)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n_images, args.n_ref, args.threads, args.rounds = 4, 3, "1", 1
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        pred_dir, gt_dir = make_pairs(Path(tmp), args.n_images, args.seed, size)
        pairs = _load_pairs(pred_dir, gt_dir)
        rows = [compare(nt, pred_dir, gt_dir, pairs, max(1, args.rounds)) for nt in threads]
        agree = agreement(pairs[:max(1, min(args.n_ref, len(pairs)))])
    print(f"agreement with torchmetrics float64 on {agree['n']} images: torchmetrics float32 max |diff| "
          f"{agree['torchmetrics_f32_max_abs_diff']:.1e}, toolkit max |diff| {agree['toolkit_max_abs_diff']:.1e}")
    results = {"rows": rows, "agreement": agree}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
