"""`evaluate_quality`: score a folder of predicted images against the ground truth, batch by batch."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cubdata import load_rgb
from restoration.metrics import psnr, ssim

from analysis.quality.files import check_decodable, match_images
from analysis.quality.pretrained import load_fid, load_lpips

log = logging.getLogger(__name__)

__all__ = ["METRICS", "HIGHER_IS_BETTER", "parse_metrics", "evaluate_quality"]

METRICS = ("psnr", "ssim", "lpips", "fid")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "fid": False}


def parse_metrics(metrics) -> tuple[str, ...]:
    """``"psnr,ssim"`` or a sequence -> lower-case names of `METRICS`; ValueError listing the valid ones."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    metrics = tuple(m.lower() for m in metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise ValueError(f"unknown metric(s) {bad or metrics}; valid: {', '.join(METRICS)}")
    return metrics


def _same_size_batches(pairs, batch_size: int):
    """Decode ``(key, pred_path, gt_path)`` pairs in order and yield ``(pairs, pred uint8 NHWC, gt uint8 NHWC)``
    runs of consecutive pairs of one size, at most ``batch_size`` long (order kept, memory bounded)."""
    run, preds, gts = [], [], []
    for pair in pairs:
        _, p_path, g_path = pair
        pred, gt = load_rgb(p_path), load_rgb(g_path)
        if pred.shape != gt.shape:
            raise ValueError(f"{p_path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth {g_path} is "
                             f"{gt.shape[1]}x{gt.shape[0]}; restored images must keep the original size")
        if run and (len(run) == batch_size or pred.shape != preds[0].shape):
            yield run, np.stack(preds), np.stack(gts)
            run, preds, gts = [], [], []
        run.append(pair)
        preds.append(pred)
        gts.append(gt)
    if run:
        yield run, np.stack(preds), np.stack(gts)


def _score_batch(pu: torch.Tensor, gu: torch.Tensor, metrics, lp, fid, where: str) -> dict[str, list[float]]:
    """Per-image scores of one batch (``uint8 NCHW`` tensors); FID only accumulates its features."""
    pf, gf = pu.float() / 255.0, gu.float() / 255.0
    scores = {}
    if "psnr" in metrics:
        scores["psnr"] = psnr(pf, gf).tolist()
    if "ssim" in metrics:
        scores["ssim"] = ssim(pf, gf).tolist()
    if lp is not None:
        try:
            scores["lpips"] = lp(pf, gf, normalize=True).reshape(-1).tolist()
        except RuntimeError as err:  # e.g. an image smaller than the backbone's receptive field
            raise ValueError(f"LPIPS failed on {where} ({pu.shape[3]}x{pu.shape[2]}): {err}") from err
    if fid is not None:
        fid.update(pu, real=False)
        fid.update(gu, real=True)
    return scores


def _summary(rows: list[dict], metrics, fid, pred_dir) -> dict:
    """``{"n", <metric>: mean over images (finite values; PSNR of identical images is inf), "fid"}``."""
    summary: dict = {"n": len(rows)}
    for m in metrics:
        if m == "fid":
            summary["fid"] = float(fid.compute())
            continue
        vals = np.array([r[m] for r in rows], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        if len(finite) < len(vals):
            log.warning("%s: %d identical image pair(s) have infinite PSNR; averaged over the finite ones",
                        pred_dir, len(vals) - len(finite))
        summary[m] = float(finite.mean()) if len(finite) else float("inf")
    return summary


@torch.no_grad()
def evaluate_quality(pred_dir, gt_dir, metrics=("psnr", "ssim"), device: str = "cpu", lpips_net: str = "alex",
                     lpips_weights=None, fid_weights=None, progress: bool = True, batch_size: int = 8) -> dict:
    """Score the images of ``pred_dir`` against ``gt_dir`` (see `match_images`).

    Returns ``{"per_image": [{"image": key, "psnr": .., ...}], "summary": {"n": N, "psnr": mean, ..., "fid": ..}}``.
    Images are decoded to uint8 and scored as ``[0, 1]`` floats; a size mismatch is an error. Consecutive images
    of one size are scored together, up to ``batch_size`` at a time; the values do not depend on the batching.
    Uses torch's current CPU thread count (the CLI's ``--threads`` sets it).
    """
    metrics = parse_metrics(metrics)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = match_images(pred_dir, gt_dir)
    check_decodable(p for _, pred, gt in pairs for p in (pred, gt))
    lp = load_lpips(lpips_net, lpips_weights, device) if "lpips" in metrics else None
    fid = load_fid(fid_weights, device) if "fid" in metrics else None
    if fid is not None and len(pairs) < 2:
        raise ValueError(f"FID needs at least 2 images per set, found {len(pairs)}")
    rows = []
    with tqdm(total=len(pairs), desc=f"quality {Path(pred_dir).name}", disable=not progress) as bar:
        for run, pred, gt in _same_size_batches(pairs, int(batch_size)):
            pu = torch.from_numpy(pred).permute(0, 3, 1, 2).to(device)
            gu = torch.from_numpy(gt).permute(0, 3, 1, 2).to(device)
            scores = _score_batch(pu, gu, metrics, lp, fid, where=f"{run[0][1]} ({lpips_net})")
            rows += [{"image": key, **{m: v[i] for m, v in scores.items()}} for i, (key, _, _) in enumerate(run)]
            bar.update(len(run))
    return {"per_image": rows, "summary": _summary(rows, metrics, fid, pred_dir), "metrics": list(metrics),
            "pred": str(pred_dir), "gt": str(gt_dir)}
