"""What the diffusion prior "sees": per-timestep DiffLoss terms of degraded and restored sets against clean.

    python -m analysis.naturalness --quick                        # mini-CUB, the built-in prior, demo sets
    python -m analysis.naturalness --cub-root data/CUB_200_2011 --prior ckpt/256x256_diffusion_uncond.pt \\
        --set fog=data/cub-degraded/fog/3 --set "w/o DiffLoss/fog=data/restored/fog-wo" \\
        --set "w/ DiffLoss/fog=data/restored/fog-w" --images 200 --out runs/naturalness

For each image of the clean CUB root's test split and each set (a degraded or restored copy of that split,
the same image ids), the image and its clean original are noised with the SAME t and noise, as DiffLoss
does, and the frozen prior is run on both. Per timestep t of ``--timesteps``:

    denoise  = mean (eps(z_t, t) - noise)^2      how well the prior denoises the set's own image
    nat      = mean (eps(z_t, t) - eps(x_t, t))^2 DiffLoss's L_nat against the clean image (0 for clean)
    sem      = mean (h(z_t, t) - h(x_t, t))^2     DiffLoss's L_sem: h-space (middle block) distance

``nat`` and ``sem`` are what DiffLoss minimises, so a set whose terms are near the clean floor at every t
is one DiffLoss cannot tell from clean. ``denoise`` is NOT a naturalness score: smooth (fog) and dark (low
light) images are easier to denoise than clean ones, so their ``denoise`` is lower than clean's.

Outputs in ``--out``: ``naturalness.csv`` (one row per set, metric and t: mean, std, n), ``naturalness.md``
and ``naturalness.png`` (one panel per metric, error against t on a log scale, one line per set with a 95%
band). Images are resized and centre-cropped to the prior's size. Works with any guided-diffusion prior
(``--prior`` builtin, a prior.safetensors or 256x256_diffusion_uncond.pt), on a GPU with ``--device cuda``.
"""
from __future__ import annotations

import argparse
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from runkit.files import atomic_write_bytes, atomic_write_text, write_csv
from cubdata import load_square_tensor, read_cub
from runkit.checks import nonnegative_int, positive_int
from runkit.cli import parse_set
from runkit.errors import run_cli
from runkit.options import RunOptions, add_config_arguments, config_from_args, option
from diffloss.prior.spec import PriorOptions
from diffloss.criterion import diffuse, model_timesteps, prior_prediction
from diffloss.prior.hspace import hspace_hook

log = logging.getLogger(__name__)

__all__ = ["METRICS", "prior_response", "naturalness_terms", "measure_naturalness", "summarize",
           "format_markdown", "plot_naturalness", "build_parser", "main"]

METRICS = ("denoise", "nat", "sem")
METRIC_LABELS = {"denoise": "denoising error  |eps(z_t) - noise|^2", "nat": "L_nat  |eps(z_t) - eps(x_t)|^2",
                 "sem": "L_sem  |h(z_t) - h(x_t)|^2"}
DEFAULT_TIMESTEPS = (25, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 975)
CLEAN = "clean"
COLUMNS = ("set", "metric", "t", "mean", "std", "n")


@torch.no_grad()
def prior_response(model: nn.Module, diffusion, x0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps prediction [B, 3, H, W], h-space [B, C, h, w])`` of the prior at ``x_t = diffuse(x0, t, noise)``;
    ``x0`` in ``[-1, 1] NCHW``."""
    x_t = diffuse(diffusion, x0, t, noise)
    with hspace_hook(model) as hs:
        out = model(x_t, model_timesteps(diffusion, t))
    return prior_prediction(diffusion, out, x_t, t, "eps"), hs.h.float()


def naturalness_terms(model: nn.Module, diffusion, images: torch.Tensor, clean: torch.Tensor, t: int,
                      noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ``denoise``, ``nat`` and ``sem`` (see the module doc) of ``images`` against ``clean``
    (both ``[0, 1] NCHW``) at timestep ``t`` with the shared ``noise``. Returns ``{metric: [B]}``."""
    if images.shape != clean.shape:
        raise ValueError(f"images and clean must have the same shape, got {tuple(images.shape)} and {tuple(clean.shape)}")
    tt = torch.full((images.shape[0],), int(t), device=images.device, dtype=torch.long)
    eps_z, h_z = prior_response(model, diffusion, images * 2 - 1, tt, noise)
    eps_x, h_x = prior_response(model, diffusion, clean * 2 - 1, tt, noise)
    per = lambda a, b: (a - b).pow(2).flatten(1).mean(1)  # noqa: E731
    return {"denoise": per(eps_z, noise), "nat": per(eps_z, eps_x), "sem": per(h_z, h_x)}


@dataclass
class _Pairs:
    ids: list[int]
    paths: dict[str, list[Path]]  # set name -> paths in ids order (clean included)


def _pair_sets(clean_root: str | Path, sets: Mapping[str, str | Path], images: int | None) -> _Pairs:
    clean = read_cub(clean_root)
    records = clean.split("test")
    if not records:
        raise ValueError(f"clean CUB root {clean.root} has no test images")
    paths = {CLEAN: {r.image_id: clean.image_path(r) for r in records}}
    for name, root in sets.items():
        if name == CLEAN:
            raise ValueError(f"'{CLEAN}' is the clean root's name; rename set {name!r}")
        idx = read_cub(root)
        paths[name] = {r.image_id: idx.image_path(r) for r in idx.split("test")}
    common = sorted(set.intersection(*(set(p) for p in paths.values())))
    dropped = {n: len(p) - len(common) for n, p in paths.items() if len(p) != len(common)}
    if not common:
        raise ValueError("the sets share no test image id with the clean root; a set must be a degraded/restored "
                         "copy of the clean root's test split (corruptions.degrade, restoration.restore)")
    if dropped:
        log.warning("using the %d test images present in every set (dropped per set: %s)", len(common), dropped)
    ids = common[:images] if images else common
    return _Pairs(ids, {n: [p[i] for i in ids] for n, p in paths.items()})


def measure_naturalness(model: nn.Module, diffusion, clean_root: str | Path, sets: Mapping[str, str | Path],
                        timesteps: Sequence[int] = DEFAULT_TIMESTEPS, images: int | None = None,
                        batch_size: int = 16, seed: int = 0, device: str | torch.device = "cpu",
                        progress: bool = True) -> list[dict]:
    """Per-image terms for every set (and ``clean``) and timestep. Returns rows ``{set, image_id, t,
    denoise, nat, sem}``. The noise of image ``i`` at timestep ``t`` is drawn from ``(seed, image_id, t)``, so
    every set meets the same noise and a subset of images or timesteps gives the same numbers."""
    T = int(diffusion.num_timesteps)
    bad = [t for t in timesteps if not 0 <= int(t) < T]
    if bad:
        raise ValueError(f"timesteps must be in 0..{T - 1}, got {bad}")
    size = int(model.image_size)
    pairs = _pair_sets(clean_root, sets, images)
    device = torch.device(device)
    rows: list[dict] = []
    names = list(pairs.paths)
    n_batches = math.ceil(len(pairs.ids) / batch_size)
    bar = tqdm(total=n_batches * len(names), desc="naturalness", disable=not progress, dynamic_ncols=True)
    for b in range(n_batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        ids = pairs.ids[sl]
        clean = torch.stack([load_square_tensor(p, size) for p in pairs.paths[CLEAN][sl]]).to(device)
        noises = {t: torch.stack([torch.randn((3, size, size), generator=torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, i, int(t)]).generate_state(1)[0]))) for i in ids]).to(device)
            for t in timesteps}
        for name in names:
            imgs = clean if name == CLEAN else torch.stack(
                [load_square_tensor(p, size) for p in pairs.paths[name][sl]]).to(device)
            for t in timesteps:
                terms = naturalness_terms(model, diffusion, imgs, clean, int(t), noises[t])
                for k, image_id in enumerate(ids):
                    rows.append({"set": name, "image_id": image_id, "t": int(t),
                                 **{m: float(terms[m][k]) for m in METRICS}})
            bar.update(1)
    bar.close()
    return rows


def summarize(rows: Sequence[Mapping]) -> list[dict]:
    """Mean, standard deviation and count per (set, metric, t), sets in first-appearance order."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        for m in METRICS:
            groups.setdefault((r["set"], m, int(r["t"])), []).append(float(r[m]))
    out = []
    for (name, metric, t), vals in groups.items():
        v = np.asarray(vals)
        out.append({"set": name, "metric": metric, "t": t, "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)})
    return out


def format_markdown(summary: Sequence[Mapping], metric: str) -> str:
    """One Markdown table of ``metric``: a row per set, a column per timestep (mean over images)."""
    sets = list(dict.fromkeys(r["set"] for r in summary))
    ts = sorted({r["t"] for r in summary})
    cell = {(r["set"], r["t"]): r["mean"] for r in summary if r["metric"] == metric}
    lines = [f"| {metric} | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
    for s in sets:
        lines.append(f"| {s} | " + " | ".join(f"{cell[(s, t)]:.3g}" if (s, t) in cell else "" for t in ts) + " |")
    return "\n".join(lines)


def plot_naturalness(summary: Sequence[Mapping], axes: Sequence | None = None):
    """One panel per metric: mean against t (log y), one line per set with its 95% band (1.96 standard
    errors). ``clean`` is black and dashed; it is the floor of ``nat``/``sem`` (exactly 0, not drawn on the
    log axis). Returns the axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(METRICS), figsize=(5.0 * len(METRICS), 3.8))
    sets = list(dict.fromkeys(r["set"] for r in summary))
    colours = {s: f"C{i}" for i, s in enumerate(s for s in sets if s != CLEAN)}
    for ax, metric in zip(axes, METRICS):
        for s in sets:
            pts = sorted((r["t"], r["mean"], r["std"], r["n"]) for r in summary if r["set"] == s and r["metric"] == metric)
            t = np.array([p[0] for p in pts], float)
            m = np.array([p[1] for p in pts], float)
            se = np.array([p[2] / math.sqrt(max(p[3], 1)) for p in pts], float)
            if s == CLEAN and metric != "denoise":
                continue  # identically 0 against itself
            style = dict(color="black", linestyle="--") if s == CLEAN else dict(color=colours[s])
            ax.plot(t, m, marker="o", markersize=3, label=s, **style)
            ax.fill_between(t, np.maximum(m - 1.96 * se, 1e-12), m + 1.96 * se, alpha=0.15, color=style["color"])
        ax.set_yscale("log")
        ax.set_xlabel("timestep t")
        ax.set_title(METRIC_LABELS[metric], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean over images")
    axes[-1].legend(fontsize=7, loc="best")
    return axes


def write_outputs(rows: Sequence[Mapping], out: str | Path, title: str = "") -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    summary = summarize(rows)
    paths = {"csv": write_csv(out / "naturalness.csv", summary, COLUMNS, float_format=".6g")}
    md = "\n\n".join(format_markdown(summary, m) for m in METRICS) + "\n"
    paths["md"] = atomic_write_text(out / "naturalness.md", (f"{title}\n\n" if title else "") + md)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(15, 3.8))
    plot_naturalness(summary, axes)
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths["png"] = atomic_write_bytes(out / "naturalness.png", buf.getvalue())
    return paths


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class NaturalnessConfig(RunOptions, PriorOptions):
    """The options of ``python -m analysis.naturalness``."""

    quick: bool = option(False, help="mini-CUB with the Table 2 demo's degraded and restored sets (built and "
                                     "cached on first use)")
    cub_root: str | None = option(None, help="the clean CUB root (its test split)")
    set: list[str] = option(repeat=True, metavar="LABEL=CUB_ROOT",
                            help="a degraded or restored copy of the clean test split; repeat")
    timesteps: str = option(",".join(map(str, DEFAULT_TIMESTEPS)), help="comma-separated timesteps")
    images: int = option(0, check=nonnegative_int, help="first N test images (0: all)")
    batch_size: int = option(16, check=positive_int, help="images per UNet call")
    seed: int = option(0, check=nonnegative_int, help="seed of the noise")
    out: str = option("runs/naturalness", help="output folder")

    def check(self) -> None:
        steps = self.timestep_list()
        if not steps or any(not 0 <= t < 1000 for t in steps):
            raise ValueError(f"--timesteps must be comma-separated integers in 0..999, got {self.timesteps!r}")
        if self.quick and (self.cub_root or self.set):
            raise ValueError("--quick builds its own sets; leave out --cub-root and --set")
        if not self.quick and (not self.cub_root or not self.set):
            raise ValueError("give --cub-root CUB_ROOT and at least one --set LABEL=CUB_ROOT (or run --quick)")

    def timestep_list(self) -> list[int]:
        try:
            return [int(v) for v in self.timesteps.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--timesteps must be comma-separated integers, got {self.timesteps!r}") from None

    def sets(self) -> dict[str, str]:
        pairs = [parse_set(t) for t in self.set]
        for label, roots in pairs:
            if len(roots) != 1:
                raise ValueError(f"--set {label}: one root per set")
        return {label: roots[0] for label, roots in pairs}


def build_parser() -> argparse.ArgumentParser:
    from runkit.cli import ArgumentParser

    p = ArgumentParser(prog="python -m analysis.naturalness", description=__doc__)
    return add_config_arguments(p, NaturalnessConfig, skip=("overwrite",))


def _quick_sets(progress: bool) -> tuple[Path, dict[str, Path]]:
    from analysis.demo.table2 import demo_spec

    spec, _ = demo_spec(progress=progress)
    sets = {}
    for s in spec.sets:
        name = s.degradation if s.config == "degraded" else f"{s.config} ({s.degradation})"
        sets[name] = Path(s.root)
    return Path(spec.clean), sets


def main(argv: Sequence[str] | None = None) -> int:
    args = config_from_args(NaturalnessConfig, build_parser().parse_args(argv))
    return run_cli(lambda: _main(args), threads=args.threads, out=args.out)


def _main(args: NaturalnessConfig) -> int:
    from classifiers.predict import resolve_device
    from diffloss.prior import load_prior, resolve_prior

    args.validate()
    timesteps = args.timestep_list()
    sets = args.sets()
    for name, root in [("--cub-root", args.cub_root)] + list(sets.items()):
        if root and not Path(root).exists():
            raise FileNotFoundError(f"{name}: {root} does not exist (expected a CUB root)")
    out = Path(args.out)  # created only when there is something to write: a refusal leaves nothing behind
    device = resolve_device(args.device)
    spec = resolve_prior(args.prior, args.prior_config)
    model, diffusion = load_prior(spec, device=str(device))
    if args.quick:
        clean, sets = _quick_sets(args.progress)
    else:
        clean = Path(args.cub_root)
    rows = measure_naturalness(model, diffusion, clean, sets, timesteps, images=args.images or None,
                               batch_size=args.batch_size, seed=args.seed, device=device,
                               progress=args.progress)
    title = f"prior {spec.label}, {len({r['image_id'] for r in rows})} test images of {clean.name}"
    out.mkdir(parents=True, exist_ok=True)
    paths = write_outputs(rows, out, title)
    print(title)
    print(format_markdown(summarize(rows), "nat"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
