"""Evidence that a prior is trained: denoising error, DDIM reconstruction PSNR and the semantic check.

    python benchmarks/prior_evidence.py                       # the built-in prior on mini-CUB's test split
    python benchmarks/prior_evidence.py --prior runs/prior-mini64 --out runs/prior-evidence

On mini-CUB's held-out clean test images (resized and centre-cropped to the prior's size), for the trained
prior and for an untrained one of the same architecture (same draws):
  1. denoising error: mean ||eps_pred - eps||^2 per element at fixed (t, noise) draws, ``--draws`` per image
     with t uniform in 0..999;
  2. DDIM reconstruction: q_sample to ``--t0`` (500), then ``--ddim-steps`` (50) DDIM steps back, the h-space
     study's unperturbed generation; PSNR against the input at the prior's size;
  3. the semantic check: the demo's mini classifiers (trained on clean mini-CUB train images, cached by
     ``analysis.demo.classifiers``) label the reconstructions; Top-1 against the true class, beside their Top-1 on
     the inputs at the same size. Chance is 10%.
Writes ``evidence.json`` and ``reconstructions.png`` (rows: input, trained prior, untrained prior) to
``--out`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from classifiers import eval_transform, load_classifier
from analysis.demo.classifiers import demo_classifiers
from runkit.files import atomic_write_bytes, atomic_write_text
from cubdata import load_square_tensor, mini_cub_root, read_cub
from runkit.cli import ArgumentParser
from runkit.runtime import torch_threads
from restoration.metrics import psnr
from diffloss.prior import PriorOptions, load_prior, resolve_prior
from runkit.options import add_config_arguments
from diffloss.prior.sampling import ddim_reconstruct


def denoising_error(model, diffusion, x0: torch.Tensor, draws: int, seed: int) -> float:
    """Mean squared error of the predicted noise at ``draws`` fixed (t, noise) draws per image."""
    g = torch.Generator().manual_seed(seed)
    errs = []
    with torch.no_grad():
        for _ in range(draws):
            t = torch.randint(int(diffusion.num_timesteps), (x0.shape[0],), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            eps = model(diffusion.q_sample(x0, t, noise=noise), t)[:, :3]
            errs.append(((eps - noise) ** 2).mean(dim=(1, 2, 3)))
    return float(torch.stack(errs).mean())


def psnr01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB, `restoration.metrics.psnr`) of ``[0, 1]`` images after 8-bit rounding of ``a``."""
    return psnr(torch.round(a.clamp(0, 1) * 255) / 255, b)


def classify(images01: torch.Tensor, ckpt: Path) -> np.ndarray:
    """Predicted 0-based labels of ``[0, 1] NCHW`` images, through the checkpoint's own test transform."""
    from PIL import Image

    model, info = load_classifier(ckpt)
    tf = eval_transform(info["preprocess"])
    batch = torch.stack([tf(Image.fromarray((im.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)))
                         for im in images01.clamp(0, 1)])
    with torch.no_grad():
        return model(batch).argmax(1).numpy()


def reconstruction_figure(rows, title: str = "") -> bytes:
    """PNG bytes of a labelled grid: one row per ``(label, [0, 1] NCHW images)``, one column per image."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.2, 1.35 * len(rows) + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[c].clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python benchmarks/prior_evidence.py", description=__doc__)
    add_config_arguments(p, PriorOptions)
    p.add_argument("--out", default="runs/prior-evidence", help="output folder")
    p.add_argument("--images", type=int, default=0, help="use the first N test images (0: all)")
    p.add_argument("--t0", type=int, default=500, help="reconstruction start timestep")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps of the reconstruction")
    p.add_argument("--draws", type=int, default=8, help="(t, noise) draws per image for the denoising error")
    p.add_argument("--seed", type=int, default=0, help="seed of every draw")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p


def evidence(args: argparse.Namespace) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, np.ndarray]:
    """``(result, {"trained"|"untrained": reconstructions}, inputs, labels)``: every measurement of the module
    docstring for the prior ``args.prior`` and an untrained one of its architecture; images ``[0, 1] NCHW``."""
    t_start = time.perf_counter()
    spec = resolve_prior(args.prior, args.prior_config)
    trained, diffusion = load_prior(spec)
    untrained, _ = load_prior(resolve_prior("random", spec.kwargs), init_seed=args.seed)
    size = int(trained.image_size)
    index = read_cub(mini_cub_root())
    records = index.split("test")
    if args.images:
        records = records[: args.images]
    x01 = torch.stack([load_square_tensor(index.image_path(r), size) for r in records])
    labels = np.array([r.class_id - 1 for r in records])
    x0 = x01 * 2 - 1

    result = {"prior": None if spec.path is None else str(spec.path), "config": spec.config_name,
              "train_step": spec.step, "images": len(records),
              "size": size, "t0": args.t0, "ddim_steps": args.ddim_steps, "draws": args.draws, "seed": args.seed}
    ckpts = demo_classifiers(progress=False)
    result["classifiers_on_inputs"] = {a: float((classify(x01, c) == labels).mean() * 100) for a, c in ckpts.items()}
    recon = {}
    for name, model in (("trained", trained), ("untrained", untrained)):
        t0 = time.perf_counter()
        err = denoising_error(model, diffusion, x0, args.draws, args.seed)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed + 1))
        rec01 = (ddim_reconstruct(model, diffusion, x0, args.t0, args.ddim_steps, noise=noise) + 1) / 2
        recon[name] = rec01
        top1 = {a: float((classify(rec01, c) == labels).mean() * 100) for a, c in ckpts.items()}
        result[name] = {"denoising_mse": err, "recon_psnr_mean": float(psnr01(rec01, x01).mean()),
                        "recon_top1": top1, "seconds": time.perf_counter() - t0}
    result["mse_ratio_untrained_over_trained"] = result["untrained"]["denoising_mse"] / result["trained"]["denoising_mse"]
    result["seconds"] = time.perf_counter() - t_start
    return result, recon, x01, labels


def print_table(result: dict, args: argparse.Namespace) -> None:
    archs = sorted(result["classifiers_on_inputs"])
    print(f"prior {args.prior} (step {result['train_step']}), {result['images']} clean mini-CUB test images at "
          f"{result['size']} px, t0 = {args.t0}, {args.ddim_steps} DDIM steps, {result['seconds']:.0f} s")
    print("| prior | denoising MSE | recon PSNR (dB) | " + " | ".join(f"recon Top-1 {a} (%)" for a in archs) + " |")
    print("|---|---|---|" + "---|" * len(archs))
    for name in ("untrained", "trained"):
        r = result[name]
        print(f"| {name} | {r['denoising_mse']:.4f} | {r['recon_psnr_mean']:.2f} | "
              + " | ".join(f"{r['recon_top1'][a]:.1f}" for a in archs) + " |")
    print("| (inputs at the prior's size) | | | " + " | ".join(f"{result['classifiers_on_inputs'][a]:.1f}" for a in archs) + " |")
    print(f"denoising error ratio untrained / trained: {result['mse_ratio_untrained_over_trained']:.1f}x")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with torch_threads(args.threads):
        result, recon, x01, labels = evidence(args)
    out = Path(args.out)
    atomic_write_text(out / "evidence.json", json.dumps(result, indent=2) + "\n")
    # one column per class (the first test image of each), rows: input, trained, untrained
    first = [int(np.flatnonzero(labels == c)[0]) for c in sorted(set(labels.tolist()))]
    atomic_write_bytes(out / "reconstructions.png", reconstruction_figure(
        [("input", x01[first]), (f"trained prior\n(step {result['train_step']})", recon["trained"][first]),
         ("untrained prior", recon["untrained"][first])],
        title=f"DDIM reconstruction from t0 = {args.t0} ({args.ddim_steps} steps) of held-out mini-CUB test images"))
    print_table(result, args)
    print(f"wrote {out / 'evidence.json'} and {out / 'reconstructions.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
