"""``python -m analysis.hspace.calibrate``: calibrate the quick mode's edit for a prior on mini-CUB's separate
validation draw (``cubdata.mini_cub_root(variant="val")``; never the benchmark's test split).

For every setting of `CALIBRATION_GRID` (edit, t0, DDIM steps, t_edit and the top level's strength alpha) each
validation image is noised to x_t0 (the study's seeded noise), generated back unperturbed and at alpha, and the
pair is compared: the mean absolute pixel change (0..255), the label-flip rate of the demo's trained ResNet-mini,
the change of h (``dh_rel``: ||h' - h|| / ||h||, mean over the edited steps) and the classifier's accuracy on the
unperturbed generations (does the re-synthesis keep the class?). Beside the study's edits (`SVD_MODES`) two
controls: ``zero-h`` replaces h by zeros at every edited step (the largest possible h edit: does the decoder read
h at all?) and ``random`` moves x_t0 along a random direction, as far as ``pullback`` does (is the pullback
direction special, or does any move of x_t0 do the same?).

Targets (issue 16): mean |level K - level 0| >= 8/255 and a label-flip rate >= 30% at the top level on clean
images. Outputs in ``--out``: calibration.csv, calibration.md (the table of docs/hspace.md), config.json and
done.json.

    python -m analysis.hspace.calibrate --out runs/hspace-calibration
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from runkit.checks import positive_int
from runkit.cli import ArgumentParser
from runkit.errors import run_cli
from runkit.files import atomic_write_text
from runkit.options import RunOptions, add_config_arguments, config_from_args, option
from runkit.rundir import RunDir
from runkit.runtime import torch_threads

from analysis.hspace.features import pixel_change
from analysis.hspace.groups import image_seed
from analysis.hspace.perturbation import PullbackEdit, make_edit
from analysis.hspace.report import markdown_table, write_csv
from analysis.hspace.sampling import ddim_generate, ddim_schedule, spaced_diffusion, start_latent

__all__ = ["CALIBRATION_GRID", "TARGETS", "CONTROLS", "calibrate_edit", "CalibrationConfig", "build_parser", "main"]

#: The settings tried (one strength each, against the unperturbed generation): the paper's edit (sample) at the
#: paper-mode protocol, then on every step at growing strength, at other t0 and step counts; the batch direction;
#: the two controls; the pullback edit at growing strength and t0; and quick mode's four levels (4 steps, every
#: step, alpha 12.5 .. 50). alpha: sample, s1 becomes (1 + alpha) s1; batch-svd, alpha standard deviations along
#: the batch's first principal component; pullback and random, alpha times the noise's norm.
CALIBRATION_GRID = (
    dict(edit="sample", t0=500, steps=8, t_edit=200, alpha=2.0),
    dict(edit="sample", t0=500, steps=8, t_edit=200, alpha=50.0),
    dict(edit="sample", t0=500, steps=8, t_edit=0, alpha=2.0),
    dict(edit="sample", t0=500, steps=8, t_edit=0, alpha=10.0),
    dict(edit="sample", t0=500, steps=8, t_edit=0, alpha=25.0),
    dict(edit="sample", t0=500, steps=8, t_edit=0, alpha=50.0),
    dict(edit="sample", t0=500, steps=8, t_edit=0, alpha=100.0),
    dict(edit="sample", t0=500, steps=8, t_edit=0, alpha=-1.0),
    dict(edit="sample", t0=400, steps=8, t_edit=0, alpha=50.0),
    dict(edit="sample", t0=600, steps=8, t_edit=0, alpha=50.0),
    dict(edit="sample", t0=500, steps=25, t_edit=0, alpha=50.0),
    dict(edit="sample", t0=500, steps=6, t_edit=0, alpha=50.0),
    dict(edit="batch-svd", t0=500, steps=8, t_edit=0, alpha=10.0),
    dict(edit="batch-svd", t0=500, steps=8, t_edit=0, alpha=50.0),
    dict(edit="zero-h", t0=500, steps=8, t_edit=0, alpha=1.0),
    dict(edit="pullback", t0=500, steps=8, t_edit=500, alpha=0.05),
    dict(edit="pullback", t0=500, steps=8, t_edit=500, alpha=0.1),
    dict(edit="pullback", t0=500, steps=8, t_edit=500, alpha=0.2),
    dict(edit="random", t0=500, steps=8, t_edit=500, alpha=0.2),
    dict(edit="pullback", t0=300, steps=8, t_edit=300, alpha=0.2),
    dict(edit="sample", t0=500, steps=4, t_edit=0, alpha=12.5),
    dict(edit="sample", t0=500, steps=4, t_edit=0, alpha=25.0),
    dict(edit="sample", t0=500, steps=4, t_edit=0, alpha=37.5),
    dict(edit="sample", t0=500, steps=4, t_edit=0, alpha=50.0),
)
#: The controls beside the study's edits (see the module's docstring).
CONTROLS = ("zero-h", "random")
#: What the top level must reach on clean images: mean |pixel change| (0..255) and label-flip rate.
TARGETS = {"pixel_change": 8.0, "flip_rate": 0.30}


class _ZeroH:
    """Control: h replaced by zeros at the edited steps for the samples with alpha != 0."""

    def __init__(self, alpha: torch.Tensor) -> None:
        self.alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
        self.active = False
        self.calls = 0
        self._rel = torch.zeros(self.alpha.shape[0], dtype=torch.float64)

    def move(self, model, spaced, x, i):
        return x

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return h
        self.calls += 1
        keep = (self.alpha == 0).to(h.device).view(-1, 1, 1, 1)
        self._rel += (~keep.view(-1)).double().cpu()  # ||0 - h|| / ||h|| = 1 where edited
        return torch.where(keep, h, torch.zeros_like(h))

    @property
    def dh_rel(self) -> torch.Tensor:
        return self._rel / max(self.calls, 1)


class _RandomMove(PullbackEdit):
    """Control: x_t moved along a fixed random unit direction per image (seeded) instead of the pullback direction,
    as far as `PullbackEdit` moves it (alpha * sqrt(1 - abar_t) * sqrt(D)); records the change of h as it does."""

    def __init__(self, alpha: torch.Tensor, directions: torch.Tensor) -> None:
        super().__init__(alpha)
        self.directions = directions

    def move(self, model, spaced, x, i):
        sigma = math.sqrt(1.0 - float(spaced.alphas_cumprod[int(i)]))
        size = self.alpha.to(x.device, x.dtype) * sigma * math.sqrt(x[0].numel())
        return x + size.view(-1, 1, 1, 1) * self.directions.to(x.device, x.dtype)


def _edit(setting: Mapping, alpha: torch.Tensor, keys: Sequence[str], seed: int, shape) -> object:
    name = setting["edit"]
    if name == "zero-h":
        return _ZeroH(alpha)
    if name == "random":
        dirs = []
        for key in keys:
            g = torch.Generator().manual_seed(image_seed(seed + 1, key))
            d = torch.randn(shape, generator=g)
            dirs += [d / d.norm()] * 2
        return _RandomMove(alpha, torch.stack(dirs))
    return make_edit(alpha, name)


@torch.no_grad()
def calibrate_edit(model, diffusion, classifier, images: torch.Tensor, labels: torch.Tensor, keys: Sequence[str],
                   setting: Mapping, seed: int = 0, batch_images: int = 8) -> dict:
    """One row of the calibration table for ``setting`` (a `CALIBRATION_GRID` entry): ``images`` [N, 3, S, S] in
    [0, 1] (S = the prior's size) with their 0-based ``labels`` [N] and ``keys`` (the seeds of their noise, as in
    the study); ``classifier`` predicts classes of [0, 1] images (`ClassifierFeatures`). Returns the setting
    with pixel_change (mean |level K - level 0|, 0..255), flip_rate, dh_rel, acc_level0, acc_top (classifier
    accuracy on the unperturbed and the edited generations), n and seconds_per_image."""
    spaced = spaced_diffusion(diffusion, ddim_schedule(setting["t0"], setting["steps"], int(diffusion.num_timesteps)))
    device = next(model.parameters()).device
    pix, flips, rel, acc0, acc1 = [], [], [], [], []
    t_start = time.perf_counter()
    for s in range(0, images.shape[0], batch_images):
        x0 = images[s:s + batch_images].to(device) * 2 - 1
        k = list(keys[s:s + batch_images])
        n = x0.shape[0]
        x_t = torch.cat([start_latent(model, spaced, x0[j:j + 1], "noise",
                                      torch.Generator().manual_seed(image_seed(seed, key))) for j, key in enumerate(k)])
        alpha = torch.tensor([0.0, float(setting["alpha"])]).repeat(n)
        edit = _edit(setting, alpha, k, seed, x_t.shape[1:])
        gen = ddim_generate(model, spaced, x_t.repeat_interleave(2, dim=0), t_edit=setting["t_edit"], edit=edit)
        gen01 = ((gen.float() + 1) / 2).clamp(0, 1)
        pix.append(pixel_change(gen01.reshape(n, 2, *gen01.shape[1:]))[:, 0])
        pred = classifier.predict(gen01).reshape(n, 2).cpu()
        flips.append((pred[:, 1] != pred[:, 0]).double())
        truth = labels[s:s + batch_images]
        acc0.append((pred[:, 0] == truth).double())
        acc1.append((pred[:, 1] == truth).double())
        rel.append(edit.dh_rel.reshape(n, 2)[:, 1])
    cat = lambda parts: torch.cat(parts).double().mean().item()  # noqa: E731
    return {**dict(setting), "n": int(images.shape[0]), "pixel_change": cat(pix), "flip_rate": cat(flips),
            "dh_rel": cat(rel), "acc_level0": cat(acc0), "acc_top": cat(acc1),
            "meets_targets": bool(cat(pix) >= TARGETS["pixel_change"] and cat(flips) >= TARGETS["flip_rate"]),
            "seconds_per_image": (time.perf_counter() - t_start) / max(1, images.shape[0])}


COLUMNS = ("edit", "t0", "steps", "t_edit", "alpha", "n", "pixel_change", "flip_rate", "dh_rel", "acc_level0",
           "acc_top", "meets_targets", "seconds_per_image")


@dataclass(kw_only=True)
class CalibrationConfig(RunOptions):
    """The options of ``python -m analysis.hspace.calibrate``."""

    out: str = option("runs/hspace-calibration", help="output folder")
    images: int = option(24, check=positive_int, result=True,
                         help="validation-draw images (the first of its image list)")
    batch_size: int = option(8, check=positive_int, help="images per UNet batch (each with 2 samples)")


def _validation_images(n: int, size: int):
    from cubdata import load_square_tensor, mini_cub_root, read_cub

    idx = read_cub(mini_cub_root(variant="val"))
    records = list(idx.split("all"))[:n]
    images = torch.stack([load_square_tensor(idx.image_path(r), size) for r in records])
    return images, torch.tensor([r.label for r in records]), [str(r.image_id) for r in records]


def run_calibration(cfg: CalibrationConfig, grid: Sequence[Mapping] = CALIBRATION_GRID) -> list[dict]:
    """The calibration table of ``grid`` on ``cfg.images`` validation-draw images; writes it into ``cfg.out``."""
    from classifiers.predict import resolve_device
    from diffloss.prior import load_prior, resolve_prior
    from tqdm.auto import tqdm

    from analysis.demo import demo_classifiers
    from analysis.hspace.features import load_classifier_features

    run_dir = RunDir(cfg.out, "analysis.hspace.calibrate", cfg, outputs=("calibration.csv", "calibration.md")).check()
    dev = resolve_device(cfg.device)
    model, diffusion = load_prior(resolve_prior("builtin"), device=str(dev))
    ckpt = demo_classifiers(archs=("resnet-mini",), progress=cfg.progress)["resnet-mini"]
    classifier = load_classifier_features(ckpt, device=dev)
    images, labels, keys = _validation_images(cfg.images, int(model.image_size))
    run_dir.start(clear=("calibration.csv", "calibration.md"))
    rows = [calibrate_edit(model, diffusion, classifier, images, labels, keys, s, seed=cfg.seed,
                           batch_images=cfg.batch_size)
            for s in tqdm(grid, desc="calibration", disable=not cfg.progress)]
    write_csv(Path(cfg.out) / "calibration.csv", rows, COLUMNS)
    fmt = {"pixel_change": "{:.1f}", "flip_rate": "{:.0%}", "dh_rel": "{:.2f}", "acc_level0": "{:.0%}",
           "acc_top": "{:.0%}", "seconds_per_image": "{:.2f}", "alpha": "{:g}"}
    text = markdown_table(rows, COLUMNS, fmt)
    atomic_write_text(Path(cfg.out) / "calibration.md", text)
    run_dir.finish({"rows": len(rows)})
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m analysis.hspace.calibrate", description=__doc__)
    add_config_arguments(p, CalibrationConfig)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_args(CalibrationConfig, build_parser().parse_args(argv))

    def work():
        with torch_threads(cfg.threads or 1):
            return run_calibration(cfg)

    def report(rows):
        import os

        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        print(markdown_table(rows, COLUMNS, {"pixel_change": "{:.1f}", "flip_rate": "{:.0%}", "dh_rel": "{:.2f}",
                                             "acc_level0": "{:.0%}", "acc_top": "{:.0%}",
                                             "seconds_per_image": "{:.2f}", "alpha": "{:g}"}))
        print(f"load average {load} on {os.cpu_count()} CPUs; outputs in {cfg.out}")

    return run_cli(work, config=cfg, report=report, out=cfg.out)


if __name__ == "__main__":
    raise SystemExit(main())
