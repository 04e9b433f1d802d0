"""Evidence that a prior is trained, against the strongest simple baselines: denoising error, DDIM
reconstruction and the semantic check.

    python benchmarks/prior_evidence.py --out docs/figures/prior-evidence   # the built-in prior: docs/prior.md's table
    python benchmarks/prior_evidence.py --prior runs/prior-mini64 --out runs/prior-evidence

Every denoiser is called like the UNet (``x_t, t -> eps``) and goes through the same code with the same
draws. The baselines (``diffloss.prior.baselines``) are fitted on mini-CUB's clean **train** split (80 images)
and everything is evaluated on its 120 held-out **test** images (resized and centre-cropped to the prior's
size):
  - predict-zero (eps = 0, so x0 = x_t / sqrt(abar)); the train-mean image;
  - the per-pixel Wiener filter (Gaussian prior, per-pixel mean and variance) and the stationary Wiener
    filter (per-pixel mean, translation-invariant covariance: the Fourier-domain Wiener filter);
  - the best Gaussian blur of x_t / sqrt(abar) (its width per timestep chosen on the train images);
  - an untrained UNet of the prior's architecture, and the prior.
Measurements:
  1. denoising error: mean ||eps_pred - eps||^2 per element at fixed (t, noise) draws, ``--draws`` per image
     with t uniform in 0..999;
  2. DDIM reconstruction: q_sample to ``--t0`` (500) with fixed noise, then ``--ddim-steps`` (50) DDIM steps
     back with the denoiser as the model (the h-space study's unperturbed generation); PSNR against the input;
  3. one-shot reconstruction: the denoiser's x0 estimate from the same x_t0 in one call (for the Wiener
     filters the posterior mean E[x0 | x_t0], the PSNR-optimal estimate under their Gaussian priors);
  4. the semantic check: the demo's mini classifiers (``analysis.demo.demo_classifiers``, trained on the clean
     train images) label both reconstructions; Top-1 against the true class, beside their Top-1 on the inputs
     at the same size. Chance is 10%.
Writes ``evidence.json`` and ``reconstructions.png`` (one column per class; rows: input, the prior, the
strongest baselines, the untrained UNet) to ``--out``, and prints the Markdown table of docs/prior.md
(`markdown_table`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from analysis.demo.classifiers import demo_classifiers
from classifiers import eval_transform, load_classifier
from cubdata import load_square_tensor, mini_cub_root, read_cub
from diffloss.prior import PriorOptions, load_prior, resolve_prior
from diffloss.prior.baselines import MeanImage, PixelWiener, PredictZero, StationaryWiener, fit_blur, one_shot_x0
from diffloss.prior.sampling import ddim_reconstruct
from restoration.metrics import psnr
from runkit.cli import ArgumentParser
from runkit.files import atomic_write_bytes, atomic_write_text
from runkit.options import add_config_arguments
from runkit.runtime import torch_threads

#: The denoisers in table order: (key, label in the table).
DENOISERS = (
    ("zero", "predict zero (eps = 0)"),
    ("mean", "train-mean image"),
    ("pixel_wiener", "Wiener filter, per-pixel Gaussian"),
    ("stationary_wiener", "Wiener filter, stationary Gaussian"),
    ("blur", "best Gaussian blur of x_t / sqrt(abar)"),
    ("untrained", "untrained UNet (same architecture)"),
    ("trained", "the prior"),
)
BASELINES = ("zero", "mean", "pixel_wiener", "stationary_wiener", "blur")
#: Timesteps at which the blur's width is chosen (and the reconstruction's t0 is added).
BLUR_FIT_TIMESTEPS = tuple(range(0, 1000, 25))


def denoising_errors(model, diffusion, x0: torch.Tensor, draws: int, seed: int) -> np.ndarray:
    """Per-image mean squared error of the predicted noise over ``draws`` fixed (t, noise) draws per image
    (``x0`` ``[-1, 1] NCHW``; returns ``[N]``); the same draws for every ``model`` given the same ``seed``."""
    g = torch.Generator().manual_seed(seed)
    errs = []
    with torch.no_grad():
        for _ in range(draws):
            t = torch.randint(int(diffusion.num_timesteps), (x0.shape[0],), generator=g)
            noise = torch.randn(x0.shape, generator=g)
            eps = model(diffusion.q_sample(x0, t, noise=noise), t)[:, :3]
            errs.append(((eps - noise) ** 2).mean(dim=(1, 2, 3)))
    return torch.stack(errs).mean(0).double().numpy()


def psnr01(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB, `restoration.metrics.psnr`) of ``[0, 1]`` images after 8-bit rounding of ``a``."""
    return psnr(torch.round(a.clamp(0, 1) * 255) / 255, b)


def load_classifiers(ckpts: dict[str, Path]) -> dict[str, tuple]:
    """``{arch: (model, test transform)}`` of the classifier checkpoints."""
    out = {}
    for arch, ckpt in ckpts.items():
        model, info = load_classifier(ckpt)
        out[arch] = (model, eval_transform(info["preprocess"]))
    return out


def classify(images01: torch.Tensor, classifier: tuple) -> np.ndarray:
    """Predicted 0-based labels of ``[0, 1] NCHW`` images, through the classifier's own test transform (on the
    8-bit images it would read from disk)."""
    from PIL import Image

    model, tf = classifier
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
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.6, 1.35 * len(rows) + 0.4), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[c].clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=7)
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


def load_split(split: str, size: int) -> tuple[torch.Tensor, np.ndarray]:
    """mini-CUB's ``split`` images at ``size`` px, ``[0, 1] NCHW``, and their 0-based labels."""
    index = read_cub(mini_cub_root())
    records = index.split(split)
    return (torch.stack([load_square_tensor(index.image_path(r), size) for r in records]),
            np.array([r.class_id - 1 for r in records]))


def fit_baselines(diffusion, x_train: torch.Tensor, t0: int, seed: int) -> dict:
    """The closed-form denoisers, fitted on ``x_train`` (``[-1, 1] NCHW``, the train split)."""
    blur_ts = sorted(set(BLUR_FIT_TIMESTEPS) | {int(t0)})
    return {"zero": PredictZero(diffusion), "mean": MeanImage(diffusion, x_train),
            "pixel_wiener": PixelWiener(diffusion, x_train), "stationary_wiener": StationaryWiener(diffusion, x_train),
            "blur": fit_blur(diffusion, x_train, blur_ts, torch.Generator().manual_seed(seed + 2))}


def evidence(args: argparse.Namespace) -> tuple[dict, dict[str, dict[str, torch.Tensor]], torch.Tensor, np.ndarray]:
    """``(result, {denoiser: {"ddim"|"one_shot": reconstructions}}, inputs, labels)``: every measurement of
    the module docstring; images ``[0, 1] NCHW``."""
    t_start = time.perf_counter()
    spec = resolve_prior(args.prior, args.prior_config)
    trained, diffusion = load_prior(spec)
    untrained, _ = load_prior(resolve_prior("random", spec.kwargs), init_seed=args.seed)
    size = int(trained.image_size)
    x_train01, _ = load_split("train", size)
    x01, labels = load_split("test", size)
    if args.images:
        x01, labels = x01[: args.images], labels[: args.images]
    x0 = x01 * 2 - 1
    models = dict(fit_baselines(diffusion, x_train01 * 2 - 1, args.t0, args.seed), untrained=untrained,
                  trained=trained)

    result = {"prior": args.prior, "prior_sha256": spec.sha256, "config": spec.config_name,
              "train_step": spec.step, "images": len(labels), "train_images": len(x_train01), "size": size,
              "t0": args.t0, "ddim_steps": args.ddim_steps, "draws": args.draws, "seed": args.seed,
              "blur_sigma_at_t0": models["blur"].sigma_at(args.t0)}
    classifiers = load_classifiers(demo_classifiers(progress=False))
    result["classifiers_on_inputs"] = {a: float((classify(x01, c) == labels).mean() * 100)
                                       for a, c in classifiers.items()}
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed + 1))
    t0_batch = torch.full((x0.shape[0],), args.t0, dtype=torch.long)
    x_t0 = diffusion.q_sample(x0, t0_batch, noise=noise)
    recon, result["denoisers"], per_image = {}, {}, {}
    for name, _label in DENOISERS:
        model, t1 = models[name], time.perf_counter()
        mse = denoising_errors(model, diffusion, x0, args.draws, args.seed)
        row, per_image[name] = {"denoising_mse": float(mse.mean())}, {"denoising_mse": mse}
        recon[name] = {"ddim": (ddim_reconstruct(model, diffusion, x0, args.t0, args.ddim_steps, noise=noise) + 1) / 2,
                       "one_shot": (one_shot_x0(model, diffusion, x_t0, t0_batch) + 1) / 2}
        for kind, images in recon[name].items():
            per_image[name][kind] = {a: classify(images, c) == labels for a, c in classifiers.items()}
            row[kind] = {"psnr": float(psnr01(images, x01).mean()),
                         "top1": {a: float(v.mean() * 100) for a, v in per_image[name][kind].items()}}
        row["seconds"] = time.perf_counter() - t1
        result["denoisers"][name] = row
        logging.getLogger(__name__).info("%s: %s", name, row)
    result["strongest_baseline"] = strongest_baselines(result)
    result["paired"] = paired_tests(result, per_image)
    result["seconds"] = time.perf_counter() - t_start
    result["load_average"] = list(os.getloadavg())
    result["cpu_count"] = os.cpu_count()
    return result, recon, x01, labels


def _mean_top1(row: dict) -> float:
    return float(np.mean(list(row["top1"].values())))


def strongest_baselines(result: dict) -> dict:
    """The closed-form baseline that does best on each measurement (lowest denoising error, highest PSNR,
    highest mean Top-1 over the classifiers, for DDIM and one-shot reconstructions), and its value."""
    rows = {k: result["denoisers"][k] for k in BASELINES}
    best = {"denoising_mse": min(rows, key=lambda k: rows[k]["denoising_mse"])}
    for kind in ("ddim", "one_shot"):
        best[f"{kind}_psnr"] = max(rows, key=lambda k: rows[k][kind]["psnr"])
        best[f"{kind}_top1"] = max(rows, key=lambda k: _mean_top1(rows[k][kind]))
    values = {"denoising_mse": rows[best["denoising_mse"]]["denoising_mse"]}
    for kind in ("ddim", "one_shot"):
        values[f"{kind}_psnr"] = rows[best[f"{kind}_psnr"]][kind]["psnr"]
        values[f"{kind}_top1"] = _mean_top1(rows[best[f"{kind}_top1"]][kind])
    return {"which": best, "value": values}


def paired_tests(result: dict, per_image: dict) -> list[dict]:
    """The prior against the strongest baseline of each measurement, on the same images: per-image denoising
    error (mean difference with a 95% bootstrap CI, Wilcoxon signed-rank), and per classifier the DDIM and the
    one-shot reconstructions' correctness (exact McNemar). p-values Holm-adjusted over all of them
    (`analysis.stats`)."""
    from analysis.stats import holm_adjust, mcnemar_test, paired_difference

    which = result["strongest_baseline"]["which"]
    best = which["denoising_mse"]
    d = paired_difference(per_image["trained"]["denoising_mse"], per_image[best]["denoising_mse"], seed=0)
    tests = [{"measurement": "denoising MSE", "baseline": best, "n": d["n"], "mean_diff": d["mean_diff"],
              "ci_low": d["ci_low"], "ci_high": d["ci_high"], "n_prior_lower": d["n_a_lower"], "p_value": d["p_value"],
              "test": "Wilcoxon signed-rank"}]
    for kind in ("ddim", "one_shot"):
        best = which[f"{kind}_top1"]
        for arch in sorted(per_image["trained"][kind]):
            m = mcnemar_test(per_image["trained"][kind][arch], per_image[best][kind][arch])
            tests.append({"measurement": f"{kind} correct, {arch}", "baseline": best, "n": m["n"], "b": m["b"],
                          "c": m["c"], "p_value": m["p_value"], "test": "exact McNemar"})
    for t, adj in zip(tests, holm_adjust([t["p_value"] for t in tests])):
        t["p_holm"] = adj
    return tests


def markdown_table(result: dict) -> str:
    """The table of docs/prior.md: one row per denoiser, Top-1 per classifier (sorted by name)."""
    archs = sorted(result["classifiers_on_inputs"])
    pair = " / ".join(archs)
    lines = [f"| denoiser | denoising MSE | DDIM reconstruction PSNR (dB) | DDIM reconstructions correct, {pair} (%) | "
             f"one-shot x0 PSNR (dB) | one-shot x0 correct, {pair} (%) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, label in DENOISERS:
        r = result["denoisers"][name]
        cells = [f"{r['denoising_mse']:.4f}"]
        for kind in ("ddim", "one_shot"):
            cells += [f"{r[kind]['psnr']:.2f}", " / ".join(f"{r[kind]['top1'][a]:.1f}" for a in archs)]
        if name == "blur":
            label += f" (sigma {result['blur_sigma_at_t0']:g} px at t0)"
        lines.append(f"| {'**' + label + '**' if name == 'trained' else label} | " + " | ".join(cells) + " |")
    lines.append("| (the inputs themselves) | | | | | " + " / ".join(
        f"{result['classifiers_on_inputs'][a]:.1f}" for a in archs) + " |")
    return "\n".join(lines)


def markdown_paired_table(result: dict) -> str:
    """The paired tests of `paired_tests` as a Markdown table (docs/prior.md)."""
    labels = dict(DENOISERS)
    lines = ["| measurement | strongest baseline | the prior against it, same images | p (Holm) |", "|---|---|---|---:|"]
    for t in result["paired"]:
        if "mean_diff" in t:
            what = (f"mean difference {t['mean_diff']:+.4f} (95% CI {t['ci_low']:+.4f} to {t['ci_high']:+.4f}); "
                    f"lower on {t['n_prior_lower']} of {t['n']} images ({t['test']})")
        else:
            what = f"right where it is wrong: {t['b']}, the reverse: {t['c']}, of {t['n']} images ({t['test']})"
        measurement = t["measurement"].replace("one_shot", "one-shot x0").replace("ddim", "DDIM reconstructions")
        lines.append(f"| {measurement} | {labels[t['baseline']]} | {what} | {t['p_holm']:.2g} |")
    return "\n".join(lines)


def print_table(result: dict) -> None:
    print(f"prior {result['prior'] or result['config']} (step {result['train_step']}), {result['images']} clean "
          f"mini-CUB test images at {result['size']} px, baselines fitted on {result['train_images']} train "
          f"images, t0 = {result['t0']}, {result['ddim_steps']} DDIM steps, {result['draws']} draws; "
          f"{result['seconds']:.0f} s (load average {result['load_average'][0]:.1f} on {result['cpu_count']} CPUs)")
    print(markdown_table(result))
    print()
    print(markdown_paired_table(result))
    best, trained = result["strongest_baseline"], result["denoisers"]["trained"]
    print(f"denoising error: strongest baseline ({best['which']['denoising_mse']}) / the prior = "
          f"{best['value']['denoising_mse'] / trained['denoising_mse']:.2f}x")
    for kind in ("ddim", "one_shot"):
        print(f"{kind} Top-1 (mean over classifiers): the prior {_mean_top1(trained[kind]):.1f}%, strongest baseline "
              f"({best['which'][f'{kind}_top1']}) {best['value'][f'{kind}_top1']:.1f}%")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with torch_threads(args.threads):
        result, recon, x01, labels = evidence(args)
    out = Path(args.out)
    atomic_write_text(out / "evidence.json", json.dumps(result, indent=2) + "\n")
    # one column per class (the first test image of each)
    first = [int(np.flatnonzero(labels == c)[0]) for c in sorted(set(labels.tolist()))]
    sigma = result["blur_sigma_at_t0"]
    atomic_write_bytes(out / "reconstructions.png", reconstruction_figure(
        [("input", x01[first]),
         (f"the prior\n(step {result['train_step']}), DDIM", recon["trained"]["ddim"][first]),
         ("stationary Wiener,\nDDIM", recon["stationary_wiener"]["ddim"][first]),
         ("stationary Wiener,\none-shot", recon["stationary_wiener"]["one_shot"][first]),
         (f"blur (sigma {sigma:g}),\none-shot", recon["blur"]["one_shot"][first]),
         ("untrained UNet,\nDDIM", recon["untrained"]["ddim"][first])],
        title=f"Reconstruction from t0 = {args.t0} ({args.ddim_steps} DDIM steps, or one call) of held-out "
              "mini-CUB test images"))
    print_table(result)
    print(f"wrote {out / 'evidence.json'} and {out / 'reconstructions.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
