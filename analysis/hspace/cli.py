"""``python -m analysis.hspace``: the study as the command line runs it (`run`), its parser (the protocol's
options generated from `HSpaceConfig`) and `main`."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

from runkit.cli import ArgumentParser, add_config_arguments
from runkit.distributed import distributed, env_world, on_rank0
from runkit.errors import run_cli
from runkit.runtime import torch_threads
from corruptions import get_corruption_names
from diffloss.prior import PRIOR_CHECKPOINTS, PRIOR_CONFIGS

from analysis.hspace.config import QUICK_DEFAULTS, HSpaceConfig, make_config
from analysis.hspace.features import RESNET50_FILE, build_feature_extractor
from analysis.hspace.report import TEST_FILES, write_study_outputs
from analysis.hspace.stats import TESTS, summarize_distances
from analysis.hspace.study import HSpaceResult, run_hspace_study

__all__ = ["run", "build_parser", "config_from_args", "main", "PRIOR_FILE", "PRIOR_URL"]

#: The paper's prior, required in paper mode.
PRIOR_FILE = PRIOR_CHECKPOINTS["adm256-uncond"].filename
PRIOR_URL = PRIOR_CHECKPOINTS["adm256-uncond"].url


def run(out: str | Path, *, quick: bool = False, groups: Mapping[str, str | Path] | None = None,
        prior: str | Path | None = None, prior_config: str | None = None, weights: str | None = None,
        feature_size: int | None = None, device: str = "auto", config: HSpaceConfig | None = None,
        quick_corruption: str = "lowlight", quick_severity: int = 3, quick_restored: bool = True,
        threads: int | None = None, progress: bool = True, test: str = "wilcoxon") -> HSpaceResult:
    """The whole study as the CLI runs it: load the prior and ResNet50, build the quick-mode groups if asked,
    run, write every output into ``out``. Returns the `HSpaceResult`.

    Paper mode (``quick=False``) needs ``prior`` (the ADM-256 checkpoint), ``groups`` and ResNet50 ImageNet
    weights (``weights`` "imagenet" from the torch cache or a path); quick mode uses the built-in trained prior,
    a random ResNet50 unless ``weights`` is given, and mini-CUB groups. ``threads``: torch CPU threads for the
    run (restored afterwards); None: 1 in quick mode (small models on a shared CPU run several times faster
    single-threaded, measured), torch's default otherwise. ``test``: the tests between groups (`group_tests`)."""
    with torch_threads(1 if threads is None and quick else threads):
        return _run(out, quick=quick, groups=groups, prior=prior, prior_config=prior_config, weights=weights,
                    feature_size=feature_size, device=device, config=config, quick_corruption=quick_corruption,
                    quick_severity=quick_severity, quick_restored=quick_restored, progress=progress, test=test)


def _check_inputs(quick: bool, groups, prior, weights, feature_size) -> tuple[str, str, int]:
    """(prior, weights, feature_size) with the mode's defaults; refuses a paper-mode run without a prior or
    groups, and missing files, before anything is built."""
    if quick:
        weights = "none" if weights is None else weights
        prior = "builtin" if prior is None else prior
        feature_size = feature_size or QUICK_DEFAULTS["feature_size"]
    else:
        weights = "imagenet" if weights is None else weights
        feature_size = feature_size or 224
        if prior is None:
            raise ValueError(
                f"paper mode needs --prior PATH to the ADM-256 unconditional checkpoint {PRIOR_FILE} "
                f"(from openai/guided-diffusion: {PRIOR_URL}), or a prior.pt of diffloss.prior.train; or run --quick"
            )
        if not groups:
            raise ValueError("paper mode needs at least one --group NAME=CUB_ROOT_OR_FOLDER (or run --quick)")
    from diffloss.prior import resolve_prior_spec

    resolve_prior_spec(prior)  # a missing file fails here, before anything is built
    for g, src in (groups or {}).items():
        if not Path(src).exists():
            raise FileNotFoundError(f"group {g!r}: {src} does not exist (expected a CUB root or an image folder)")
    if quick and not groups and env_world() > 1:
        raise ValueError(
            "--quick builds its groups (degraded copies, demo restorers) in one process and does not run under "
            "torchrun: run it once without torchrun, then pass the groups it made under OUT/data with --group "
            "NAME=PATH to the torchrun run"
        )
    return prior, weights, int(feature_size)


def _run(out, *, quick, groups, prior, prior_config, weights, feature_size, device, config, quick_corruption,
         quick_severity, quick_restored, progress, test="wilcoxon") -> HSpaceResult:
    from classifiers.predict import resolve_device
    from diffloss.prior import load_prior

    out = Path(out)
    config = config or HSpaceConfig()
    dev = resolve_device(device)
    prior, weights, feature_size = _check_inputs(quick, groups, prior, weights, feature_size)
    # under torchrun every rank loads the prior and the extractor on its own device (its LOCAL_RANK GPU)
    with distributed(str(dev)) as (rank, world, rank_dev):
        extractor = build_feature_extractor(weights, size=feature_size, device=rank_dev, init_seed=config.seed)
        model, diffusion = load_prior(prior, config=prior_config, device=str(rank_dev))
        prior_config = model.prior_info["config"]
        if quick and not groups:
            from analysis.demo.hspace_quick import quick_groups

            groups = quick_groups(out / "data", quick_corruption, quick_severity, restored=quick_restored,
                                  n_images=config.images_per_group, seed=config.seed, split=config.split)
        # the device asked for, not the rank's: the manifest resumes whatever the number of processes
        provenance = {"prior": str(prior) if prior else None, "prior_config": prior_config, "weights": str(weights),
                      "feature_size": int(feature_size), "quick": bool(quick), "device": str(dev)}
        result = run_hspace_study(groups, model, diffusion, extractor, config, out=out, provenance=provenance,
                                  progress=progress, paired=test == "wilcoxon")
        on_rank0(lambda: write_study_outputs(result, out, test=test), rank, world)  # rank 0 alone writes
    return result


def _parse_group(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"--group expects NAME=PATH (e.g. clean=data/CUB_200_2011), got {text!r}")
    return name.strip(), path.strip()


def build_parser() -> argparse.ArgumentParser:
    from analysis import hspace

    p = ArgumentParser(prog="python -m analysis.hspace", description=hspace.__doc__)
    p.add_argument("--out", default="runs/hspace", help="output folder (resumable)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the built-in trained 64 px prior, random ResNet50, mini-CUB clean/degraded/restored groups")
    p.add_argument("--prior", default=None,
                   help=f"the prior: a checkpoint ({PRIOR_FILE}, or a prior.pt of diffloss.prior.train), 'builtin' "
                        "(the trained mini-CUB prior; the --quick default) or 'random'; required in paper mode")
    p.add_argument("--prior-config", default=None, choices=sorted(PRIOR_CONFIGS),
                   help="architecture of a bare guided-diffusion state dict (default adm256-uncond; a prior.pt "
                        "carries its own)")
    p.add_argument("--weights", default=None,
                   help=f"ResNet50 weights: 'imagenet' (torchvision, from the torch cache offline), a path "
                        f"({RESNET50_FILE}) or 'none' (random; quick mode default)")
    p.add_argument("--group", action="append", type=_parse_group, default=None, metavar="NAME=PATH",
                   help="an image group: a CUB root or an image folder; repeat (quick mode: built-in groups)")
    d = HSpaceConfig()
    p.add_argument("--levels", type=int, default=len(d.alphas), help="number of perturbation levels K")
    p.add_argument("--scale", type=float, default=d.alphas[0],
                   help="alpha_k = scale * k: the top singular value s1 becomes (1 + alpha_k) s1")
    add_config_arguments(p, HSpaceConfig)  # the protocol: --t0, --steps, ..., --batch-size, --grid-images
    p.add_argument("--test", default="wilcoxon", choices=TESTS,
                   help="test between groups per level and metric: wilcoxon (signed-rank, paired by image: the groups "
                        "hold the same images with the same noise) or mann-whitney (unpaired U)")
    p.add_argument("--feature-size", type=int, default=None,
                   help=f"ResNet50 input size (default 224; {QUICK_DEFAULTS['feature_size']} with --quick)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, 0: torch's choice (default: 1 with --quick, where it is faster on a "
                        "shared CPU; else torch's choice)")
    p.add_argument("--quick-corruption", default="lowlight", choices=list(get_corruption_names()), help="quick mode: the corruption of the degraded group")
    p.add_argument("--quick-severity", type=int, default=3, choices=range(1, 6), help="quick mode: its severity")
    p.add_argument("--no-restored", action="store_true",
                   help="quick mode: skip the restored groups (no demo restorer training)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> HSpaceConfig:
    """The `HSpaceConfig` of parsed CLI arguments (quick-mode defaults where a flag was not given)."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(HSpaceConfig) if f.name != "alphas"}
    return make_config(args.quick, levels=args.levels, scale=args.scale, alphas=args.alphas, **values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> HSpaceResult:
        groups = dict(args.group) if args.group else None
        if groups is not None and len(groups) != len(args.group):
            raise ValueError("--group names must be unique")
        return run(args.out, quick=args.quick, groups=groups, prior=args.prior, prior_config=args.prior_config,
                   weights=args.weights, feature_size=args.feature_size, device=args.device,
                   config=config_from_args(args), quick_corruption=args.quick_corruption,
                   quick_severity=args.quick_severity, quick_restored=not args.no_restored, threads=args.threads,
                   progress=not args.no_progress, test=args.test)

    return run_cli(work, report=lambda result: _print_summary(result, args), out=args.out)


def _print_summary(result: HSpaceResult, args: argparse.Namespace) -> None:
    print(f"h-space study: {len(result.rows)} distances, {len(result.groups)} groups, "
          f"{result.seconds_per_image:.2f} s/image ({result.unet_evals_per_image} UNet evaluations/image)")
    nan = float("nan")
    for s in summarize_distances(result.rows):
        print(f"  {s['group']:>14s} level {s['level']} (alpha {s['alpha']:g}): median {s['median']:.4g} "
              f"mean {s['mean']:.4g} (n={s['n']}); median cosine {s.get('cosine_median', nan):.3g}, relative "
              f"{s.get('relative_median', nan):.3g}; mean |dh| {s.get('dh_norm_mean', nan):.3g} "
              f"({s.get('dh_rel_mean', nan):.1%} of |h|)")
    print(f"tests between groups: {args.test} ({TEST_FILES[args.test][0]})")
    print(f"outputs in {args.out}")
