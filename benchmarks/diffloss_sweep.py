"""Choose the demo's DiffLoss weights (gamma, lambda) on a validation set the demo's test split never touches.

    python benchmarks/diffloss_sweep.py                                   # about 10 minutes on 2 CPU cores
    python benchmarks/diffloss_sweep.py --gammas 1e-3,1e-1,1 --lams 1e-2 --corruptions rain

The demo restorers (`analysis.demo.restorers.ensure_demo_restorers`: the same shared L2 warm-up, then the same
number of steps without or with DiffLoss against the built-in trained prior) are trained on synthetic pairs
from mini-CUB's train split, once per (gamma, lambda), and restore the degraded test images of mini-CUB's
separate validation draw (``mini_cub_root(variant="val")``, seed 1). Per corruption and setting it reports
PSNR / SSIM against the clean validation images, Top-1 of the demo's two mini classifiers on the restored
images, and the mean absolute difference from the w/o-DiffLoss restoration (in 1/255 units). The restorers
are cached where the demo caches them, so the chosen setting costs the demo nothing more.
Writes ``sweep.csv`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifiers import eval_transform, load_classifier
from analysis.demo.classifiers import demo_classifiers
from corruptions.degrade import build_degraded_cub
from cubdata import load_rgb, mini_cub_root, read_cub
from runkit.files import write_csv
from restoration.restore import restore_cub_root
from analysis.demo.restorers import DEMO_SETTINGS, ensure_demo_restorers
from runkit.runtime import torch_threads
from restoration.metrics import psnr_ssim

COLUMNS = ("corruption", "setting", "gamma", "lam", "psnr", "ssim", "top1_resnet_mini", "top1_vgg_mini",
           "diff_to_wo_255", "n")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def score_root(root: Path, clean: dict[int, np.ndarray], classifiers: dict) -> tuple[dict, dict[int, np.ndarray]]:
    """PSNR/SSIM against ``clean`` and Top-1 per classifier of the test split of the CUB root ``root``."""
    index = read_cub(root)
    records = index.split("test")
    images = {r.image_id: load_rgb(index.image_path(r)) for r in records}
    labels = np.array([r.class_id - 1 for r in records])
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float().div(255)[None]  # noqa: E731
    ps, ss = zip(*[(float(p), float(s)) for r in records for p, s in [psnr_ssim(t(images[r.image_id]), t(clean[r.image_id]))]])
    out = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "n": len(records)}
    for arch, (model, tf) in classifiers.items():
        with torch.no_grad():
            x = torch.stack([tf(Image.fromarray(images[r.image_id])) for r in records])
            pred = model(x).argmax(1).numpy()
        out[f"top1_{arch.replace('-', '_')}"] = float((pred == labels).mean() * 100)
    return out, images


def sweep_corruption(c: str, severity: int, settings, out: Path, clean, classifiers) -> list[dict]:
    """Rows of one corruption: the degraded images, then each restorer setting (w/o DiffLoss first)."""
    degraded = out / "val-degraded" / c / str(severity)
    score, _ = score_root(degraded, clean, classifiers)
    rows = [{"corruption": c, "setting": "degraded", **score}]
    wo_images = None
    for label, g, lam in settings:
        s = {} if g is None else {"gamma": g, "lam": lam}
        ckpt = ensure_demo_restorers((c,), severity, settings=s, variants=g is not None)[c][label]
        dst = out / "restored" / f"{c}-{'wo' if g is None else f'g{g:g}-l{lam:g}'}"
        restore_cub_root(ckpt, degraded, dst, split="test", progress=False, overwrite=True)
        score, images = score_root(dst, clean, classifiers)
        if g is None:
            wo_images, diff = images, 0.0
        else:
            diff = float(np.mean([np.abs(images[k].astype(float) - wo_images[k].astype(float)).mean() for k in images]))
        rows.append({"corruption": c, "setting": label, "gamma": g, "lam": lam, "diff_to_wo_255": diff, **score})
        print(f"  {c} {label} gamma={g} lam={lam}: PSNR {score['psnr']:.2f} top-1 "
              f"{score['top1_resnet_mini']:.1f}/{score['top1_vgg_mini']:.1f} diff {diff:.2f}/255", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    print("| corruption | setting | gamma | lambda | PSNR | SSIM | Top-1 ResNet-mini | Top-1 VGG-mini | mean |w - w/o| (/255) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = "" if r.get("gamma") is None else f"{r['gamma']:g}"
        lam = "" if r.get("lam") is None else f"{r['lam']:g}"
        d = "" if r.get("diff_to_wo_255") is None else f"{r['diff_to_wo_255']:.2f}"
        print(f"| {r['corruption']} | {r['setting']} | {g} | {lam} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
              f"{r['top1_resnet_mini']:.1f} | {r['top1_vgg_mini']:.1f} | {d} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gammas", default="1e-3,1e-2,1e-1,1", help="gamma values (default %(default)s)")
    p.add_argument("--lams", default="1e-2,1", help="lambda values (default %(default)s)")
    p.add_argument("--corruptions", default="fog,rain,lowlight", help="corruptions (default %(default)s)")
    p.add_argument("--severity", type=int, default=3, help="severity (default 3)")
    p.add_argument("--out", default="runs/diffloss-sweep", help="output folder (default runs/diffloss-sweep)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    out = Path(args.out)
    corruptions = [c for c in args.corruptions.split(",") if c]
    settings = [("w/o DiffLoss", None, None)] + [("w/ DiffLoss", g, lam) for g in _floats(args.gammas)
                                                 for lam in _floats(args.lams)]
    with torch_threads(args.threads):
        val = mini_cub_root(variant="val")
        build_degraded_cub(val, out / "val-degraded", corruptions=corruptions, severities=(args.severity,),
                           split="test", progress=False)
        vindex = read_cub(val)
        clean = {r.image_id: load_rgb(vindex.image_path(r)) for r in vindex.split("test")}
        classifiers = {}
        for arch, ckpt in demo_classifiers(progress=False).items():
            model, info = load_classifier(ckpt)
            classifiers[arch] = (model, eval_transform(info["preprocess"]))
        rows = [row for c in corruptions for row in sweep_corruption(c, args.severity, settings, out, clean, classifiers)]
    write_csv(out / "sweep.csv", rows, COLUMNS, float_format=".6g")
    print(f"\nvalidation: mini-CUB val draw (seed 1), {rows[0]['n']} test images per corruption, severity "
          f"{args.severity}; restorers: {DEMO_SETTINGS['warmup_steps']} L2 warm-up steps + "
          f"{DEMO_SETTINGS['steps']} steps; {time.perf_counter() - t_start:.0f} s")
    print_table(rows)
    print(f"chosen: {choose_setting(rows)}")
    print(f"wrote {out / 'sweep.csv'}")
    return 0


#: the smallest mean |w - w/o| (in 1/255) on every corruption for a setting to count as changing the restorer
MIN_EFFECT_255 = 0.5


def choose_setting(rows) -> str:
    """The rule the demo's gamma and lambda follow: among the settings whose restorations differ from w/o
    DiffLoss by at least `MIN_EFFECT_255` on average for every corruption, the highest mean validation Top-1
    (both classifiers, all corruptions), ties broken by mean PSNR."""
    by = {}
    for r in rows:
        if r["setting"] == "w/ DiffLoss":
            by.setdefault((r["gamma"], r["lam"]), []).append(r)
    ok = {k: v for k, v in by.items() if all(r["diff_to_wo_255"] >= MIN_EFFECT_255 for r in v)}
    if not ok:
        return f"none: no setting changes every corruption's restorations by {MIN_EFFECT_255}/255"
    key = max(ok, key=lambda k: (np.mean([(r["top1_resnet_mini"] + r["top1_vgg_mini"]) / 2 for r in ok[k]]),
                                 np.mean([r["psnr"] for r in ok[k]])))
    top1 = np.mean([(r["top1_resnet_mini"] + r["top1_vgg_mini"]) / 2 for r in ok[key]])
    return (f"gamma={key[0]:g} lam={key[1]:g} (mean validation Top-1 {top1:.1f}% over both classifiers and "
            f"{len(ok[key])} corruptions; {len(ok)} of {len(by)} settings change every corruption by >= "
            f"{MIN_EFFECT_255}/255)")


if __name__ == "__main__":
    sys.exit(main())
