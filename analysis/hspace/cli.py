"""``python -m analysis.hspace``: the study as the command line runs it (`run`), its parser (the protocol's
options generated from `HSpaceConfig`) and `main`."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from runkit.checks import nonnegative_int, positive_int
from runkit.cli import ArgumentParser, parse_set
from runkit.options import RunOptions, add_config_arguments, option
from runkit.options import config_from_args as options_from_args
from runkit.distributed import distributed, env_world, on_rank0
from runkit.errors import run_cli
from runkit.runtime import torch_threads
from corruptions import get_corruption
from diffloss.prior import PRIOR_CHECKPOINTS, PriorOptions, PriorSpec, resolve_prior

from analysis.hspace.config import QUICK_DEFAULTS, HSpaceConfig, make_config
from analysis.hspace.features import RESNET50_FILE, build_feature_extractor
from analysis.hspace.report import TEST_FILES, write_study_outputs
from analysis.hspace.stats import TESTS, summarize_distances
from analysis.hspace.study import HSpaceResult, run_hspace_study

__all__ = ["HSpaceRunOptions", "run", "build_parser", "config_from_args", "main", "PRIOR_FILE", "PRIOR_URL"]

#: The paper's prior, required in paper mode.
PRIOR_FILE = PRIOR_CHECKPOINTS["adm256-uncond"].filename
PRIOR_URL = PRIOR_CHECKPOINTS["adm256-uncond"].url


def run(out: str | Path, *, quick: bool = False, groups: Mapping[str, str | Path] | None = None,
        prior: str | Path = "builtin", prior_config: str | None = None, weights: str | None = None,
        feature_size: int | None = None, device: str = "auto", config: HSpaceConfig | None = None,
        quick_corruption: str = "lowlight", quick_severity: int = 3, quick_restored: bool = True,
        threads: int | None = None, progress: bool = True, test: str = "wilcoxon") -> HSpaceResult:
    """The whole study as the CLI runs it: load the prior and ResNet50, build the quick-mode groups if asked,
    run, write every output into ``out``. Returns the `HSpaceResult`.

    ``prior``/``prior_config``: as ``--prior``/``--prior-config`` (`diffloss.prior.resolve_prior`). Paper mode
    (``quick=False``) needs a ``prior`` other than the built-in 64 px one (the ADM-256 checkpoint), ``groups``
    and ResNet50 ImageNet weights (``weights`` "imagenet" from the torch cache or a path); quick mode uses the
    built-in trained prior by default, a random ResNet50 unless ``weights`` is given, and mini-CUB groups.
    ``threads``: torch CPU threads for the run (restored afterwards); None: 1 in quick mode (small models on a
    shared CPU run several times faster single-threaded, measured), torch's default otherwise. ``test``: the
    tests between groups (`group_tests`)."""
    with torch_threads(1 if threads is None and quick else threads):
        return _run(out, quick=quick, groups=groups, prior=prior, prior_config=prior_config, weights=weights,
                    feature_size=feature_size, device=device, config=config, quick_corruption=quick_corruption,
                    quick_severity=quick_severity, quick_restored=quick_restored, progress=progress, test=test)


def _check_inputs(quick: bool, groups, prior, prior_config, weights, feature_size) -> tuple[PriorSpec, str, int]:
    """(the resolved prior, weights, feature_size) with the mode's defaults; refuses a paper-mode run with the
    built-in prior or without groups, and missing files, before anything is built."""
    if quick:
        weights = "none" if weights is None else weights
        feature_size = feature_size or QUICK_DEFAULTS["feature_size"]
    else:
        weights = "imagenet" if weights is None else weights
        feature_size = feature_size or 224
        if str(prior) == "builtin":
            raise ValueError(
                f"paper mode needs --prior PATH to the ADM-256 unconditional checkpoint {PRIOR_FILE} "
                f"(from openai/guided-diffusion: {PRIOR_URL}), or a prior.safetensors of diffloss.prior.train; "
                "the built-in 64 px prior is --quick's"
            )
        if not groups:
            raise ValueError("paper mode needs at least one --set LABEL=CUB_ROOT_OR_FOLDER (or run --quick)")
    spec = resolve_prior(prior, prior_config)  # a missing file fails here, before anything is built
    for g, src in (groups or {}).items():
        if not Path(src).exists():
            raise FileNotFoundError(f"group {g!r}: {src} does not exist (expected a CUB root or an image folder)")
    if quick and not groups and env_world() > 1:
        raise ValueError(
            "--quick builds its groups (degraded copies, demo restorers) in one process and does not run under "
            "torchrun: run it once without torchrun, then pass the groups it made under OUT/data with --set "
            "LABEL=PATH to the torchrun run"
        )
    return spec, weights, int(feature_size)


def _run(out, *, quick, groups, prior, prior_config, weights, feature_size, device, config, quick_corruption,
         quick_severity, quick_restored, progress, test="wilcoxon") -> HSpaceResult:
    from classifiers.predict import resolve_device
    from diffloss.prior import load_prior

    out = Path(out)
    config = config or HSpaceConfig()
    dev = resolve_device(device)
    spec, weights, feature_size = _check_inputs(quick, groups, prior, prior_config, weights, feature_size)
    # under torchrun every rank loads the prior and the extractor on its own device (its LOCAL_RANK GPU)
    with distributed(str(dev)) as (rank, world, rank_dev):
        extractor = build_feature_extractor(weights, size=feature_size, device=rank_dev, init_seed=config.seed)
        model, diffusion = load_prior(spec, device=str(rank_dev))
        if quick and not groups:
            from analysis.demo.hspace_quick import quick_groups

            groups = quick_groups(out / "data", quick_corruption, quick_severity, restored=quick_restored,
                                  n_images=config.images_per_group, seed=config.seed, split=config.split)
        # the device asked for, not the rank's: the manifest resumes whatever the number of processes
        provenance = {"prior": str(prior), "prior_config": spec.config_name, "weights": str(weights),
                      "feature_size": int(feature_size), "quick": bool(quick), "device": str(dev)}
        result = run_hspace_study(groups, model, diffusion, extractor, config, out=out, provenance=provenance,
                                  progress=progress, paired=test == "wilcoxon")
        on_rank0(lambda: write_study_outputs(result, out, test=test), rank, world)  # rank 0 alone writes
    return result


@dataclass(kw_only=True)
class HSpaceRunOptions(RunOptions, PriorOptions):
    """The options of ``python -m analysis.hspace`` besides the protocol (`HSpaceConfig`)."""

    out: str = option("runs/hspace", help="output folder (resumable)")
    quick: bool = option(False, help="smoke run: the built-in trained 64 px prior, random ResNet50, mini-CUB "
                                     "clean/degraded/restored groups")
    weights: str | None = option(None, help=f"ResNet50 weights: 'imagenet' (torchvision, from the torch cache "
                                            f"offline), a path ({RESNET50_FILE}) or 'none' (random; quick mode "
                                            "default)")
    set: list[str] = option(repeat=True, metavar="LABEL=ROOT",
                            help="an image group: a CUB root or an image folder; repeat (quick mode: built-in groups)")
    levels: int = option(4, check=positive_int, help="number of perturbation levels K")
    scale: float = option(0.5, help="alpha_k = scale * k: the top singular value s1 becomes (1 + alpha_k) s1")
    test: str = option("wilcoxon", choices=TESTS,
                       help="test between groups per level and metric: wilcoxon (signed-rank, paired by image: the "
                            "groups hold the same images with the same noise) or mann-whitney (unpaired U)")
    feature_size: int | None = option(None, help=f"ResNet50 input size (default 224; {QUICK_DEFAULTS['feature_size']} "
                                                 "with --quick)")
    threads: int = option(0, check=nonnegative_int, help="torch CPU threads (0: 1 with --quick, where it is faster on "
                                                         "a shared CPU; else torch's choice)")
    quick_corruption: str = option("lowlight", help="quick mode: the corruption of the degraded group")
    quick_severity: int = option(3, choices=(1, 2, 3, 4, 5), help="quick mode: its severity")
    restore: bool = option(True, help="quick mode: the restored groups",
                           negative_help="quick mode: skip the restored groups (no demo restorer training)")

    def groups(self) -> dict[str, str] | None:
        """``{label: root}`` of the ``--set`` options (None when there are none)."""
        if not self.set:
            return None
        pairs = [parse_set(t) for t in self.set]
        for label, roots in pairs:
            if len(roots) != 1:
                raise ValueError(f"--set {label}: one root per group")
        groups = {label: roots[0] for label, roots in pairs}
        if len(groups) != len(pairs):
            raise ValueError("--set labels must be unique")
        return groups


def build_parser() -> argparse.ArgumentParser:
    from analysis import hspace

    p = ArgumentParser(prog="python -m analysis.hspace", description=hspace.__doc__)
    add_config_arguments(p, HSpaceRunOptions, skip=("seed", "overwrite"))
    add_config_arguments(p, HSpaceConfig)  # the protocol: --t0, --steps, ..., --batch-size, --grid-images
    return p


def config_from_args(args: argparse.Namespace) -> HSpaceConfig:
    """The `HSpaceConfig` of parsed CLI arguments (quick-mode defaults where a flag was not given)."""
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(HSpaceConfig) if f.name != "alphas"}
    return make_config(args.quick, levels=args.levels, scale=args.scale, alphas=args.alphas, **values)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = options_from_args(HSpaceRunOptions, args)

    def work() -> HSpaceResult:
        opts.validate()
        get_corruption(opts.quick_corruption)  # an unknown name: the valid ones
        return run(opts.out, quick=opts.quick, groups=opts.groups(), prior=opts.prior, prior_config=opts.prior_config,
                   weights=opts.weights, feature_size=opts.feature_size, device=opts.device,
                   config=config_from_args(args), quick_corruption=opts.quick_corruption,
                   quick_severity=opts.quick_severity, quick_restored=opts.restore, threads=opts.threads or None,
                   progress=opts.progress, test=opts.test)

    return run_cli(work, report=lambda result: _print_summary(result, opts), out=opts.out)


def _print_summary(result: HSpaceResult, args: HSpaceRunOptions) -> None:
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
