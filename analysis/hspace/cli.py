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
from runkit.rundir import RunDir
from runkit.runtime import torch_threads
from corruptions import get_corruption
from diffloss.prior import PRIOR_CHECKPOINTS, PriorOptions, PriorSpec, resolve_prior

from analysis.hspace.config import QUICK_DEFAULTS, HSpaceConfig, make_config
from analysis.hspace.features import RESNET50_FILE, RESNET50_URL, build_feature_extractor, load_classifier_features
from analysis.hspace.report import TEST_FILES, write_study_outputs
from analysis.hspace.stats import P_ADJUST, TESTS, group_tests, paper_ordering, summarize_distances
from analysis.hspace.study import HSpaceResult, run_hspace_study

__all__ = ["HSpaceRunOptions", "run", "build_parser", "config_from_args", "main", "PRIOR_FILE", "PRIOR_URL"]

#: The paper's prior, required in paper mode.
PRIOR_FILE = PRIOR_CHECKPOINTS["adm256-uncond"].filename
PRIOR_URL = PRIOR_CHECKPOINTS["adm256-uncond"].url


#: What analysis.hspace writes in --out (anything else there is someone else's: refused without --overwrite).
OUTPUTS = ("manifest.json", "distances.csv", "summary.csv", "summary.json", "wilcoxon.csv", "mannwhitney.csv",
           "histograms.*", "histogram_overlay.*", "grid.*", "flip_rates.*", "generations/*", "data/*")
#: Outputs a study started again (--overwrite over another study) removes first; data/ (quick mode's groups,
#: named by their content) is kept.
CLEARED = ("manifest.json", "generations", "distances.csv", "summary.csv", "summary.json", "wilcoxon.csv",
           "mannwhitney.csv")
COMMAND = "analysis.hspace"


def run(out: str | Path, *, quick: bool = False, groups: Mapping[str, str | Path] | None = None,
        prior: str | Path = "builtin", prior_config: str | None = None, weights: str | None = None,
        classifier: str | Path | None = None, feature_size: int | None = None, device: str = "auto",
        config: HSpaceConfig | None = None, quick_corruption: str = "lowlight", quick_severity: int = 3,
        quick_restored: bool = True, threads: int | None = None, progress: bool = True, test: str = "wilcoxon",
        p_adjust: str = "holm", overwrite: bool = False) -> HSpaceResult:
    """The whole study as the CLI runs it: check everything, load the prior and the feature network(s), build the
    quick-mode groups if asked, run, write every output into ``out``. Returns the `HSpaceResult`.

    ``prior``/``prior_config``: as ``--prior``/``--prior-config`` (`diffloss.prior.resolve_prior`). Paper mode
    (``quick=False``) needs a ``prior`` other than the built-in 64 px one (the ADM-256 checkpoint), ``groups``
    and ResNet50 ImageNet weights (``weights`` "imagenet" from the torch cache or a path); ``classifier`` (a
    fine-tuned CUB classifier's checkpoint) adds the label flips. Quick mode uses the built-in trained prior,
    the demo's trained ResNet-mini (`analysis.demo.demo_classifiers`) as feature network and label-flip classifier
    (ResNet50 features instead when ``weights`` is given), and mini-CUB groups.
    ``threads``: torch CPU threads for the run (restored afterwards); None: 1 in quick mode (small models on a
    shared CPU run several times faster single-threaded, measured), torch's default otherwise. ``test``: the
    tests between groups, ``p_adjust`` their correction (`group_tests`).

    ``out`` is a run folder (`runkit.rundir.RunDir`): a folder holding files this command did not write, or
    another study (other protocol, groups, prior, feature network or device), is refused unless ``overwrite``
    (then that study is started again); the same study resumes. Every argument and input is checked before the
    first write."""
    with torch_threads(1 if threads is None and quick else threads):
        return _run(out, quick=quick, groups=groups, prior=prior, prior_config=prior_config, weights=weights,
                    classifier=classifier, feature_size=feature_size, device=device, config=config,
                    quick_corruption=quick_corruption, quick_severity=quick_severity, quick_restored=quick_restored,
                    progress=progress, test=test, p_adjust=p_adjust, overwrite=overwrite)


def _check_inputs(quick: bool, groups, prior, prior_config, weights, classifier, feature_size,
                  config: HSpaceConfig) -> tuple[PriorSpec, str | None, int]:
    """(the resolved prior, weights, feature_size) with the mode's defaults; refuses a paper-mode run with the
    built-in prior or without groups, and missing files, before anything is built. ``weights`` None in quick
    mode: the demo classifier's features."""
    if quick:
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
    if int(feature_size) < 1:
        raise ValueError(f"--feature-size must be a positive integer, got {feature_size}")
    if weights is not None and str(weights) not in ("imagenet", "none") and not Path(weights).is_file():
        raise FileNotFoundError(
            f"ResNet50 weights file not found: {weights}. Expected an ImageNet state dict such as {RESNET50_FILE} "
            f"(download it on a connected machine from {RESNET50_URL}) and pass --weights PATH."
        )
    if classifier is not None and not Path(classifier).exists():
        raise FileNotFoundError(f"--classifier {classifier} not found: expected a classifier.pt (or its run folder) "
                                "of python -m classifiers.finetune, e.g. ResNet50 fine-tuned on CUB")
    spec = resolve_prior(prior, prior_config)  # a missing file fails here, before anything is built
    if "diffusion_steps" in spec.kwargs:  # t0 against the prior's process, before anything is built or loaded
        config.check_prior(int(spec.kwargs["diffusion_steps"]))
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


def _feature_networks(quick: bool, weights, classifier, feature_size: int, device, seed: int, progress: bool):
    """(feature extractor, label-flip classifier or None, provenance): quick mode's demo ResNet-mini as both
    unless ResNet50 ``weights`` are given; paper mode's ResNet50 and the ``classifier`` checkpoint if any."""
    if quick and classifier is None:
        from analysis.demo import demo_classifiers

        classifier = demo_classifiers(archs=("resnet-mini",), progress=progress)["resnet-mini"]
    clf = load_classifier_features(classifier, device=device) if classifier is not None else None
    if weights is None:
        extractor, features = clf, f"classifier penultimate features ({classifier})"
    else:
        extractor = build_feature_extractor(weights, size=feature_size, device=device, init_seed=seed)
        features = f"ResNet50 ({weights}) at {feature_size} px"
    return extractor, clf, {"features": features, "classifier": None if classifier is None else str(classifier)}


def _run(out, *, quick, groups, prior, prior_config, weights, classifier, feature_size, device, config,
         quick_corruption, quick_severity, quick_restored, progress, test, p_adjust, overwrite) -> HSpaceResult:
    from classifiers.predict import resolve_device
    from diffloss.prior import load_prior

    out = Path(out)
    config = config or make_config(quick)
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid: {', '.join(TESTS)}")
    if p_adjust not in P_ADJUST:
        raise ValueError(f"unknown p-value adjustment {p_adjust!r}; valid: {', '.join(P_ADJUST)}")
    dev = resolve_device(device)
    spec, weights, feature_size = _check_inputs(quick, groups, prior, prior_config, weights, classifier, feature_size,
                                                config)
    # config.json in the command line's names, so that --config replays the study
    settings = {"quick": bool(quick), "set": [f"{g}={v}" for g, v in (groups or {}).items()], "prior": str(prior),
                "prior_config": prior_config, "weights": weights, "classifier": None if classifier is None
                else str(classifier), "feature_size": int(feature_size), "device": str(dev),
                "quick_corruption": quick_corruption, "quick_severity": int(quick_severity),
                "restore": bool(quick_restored), **config.protocol(), "test": test, "p_adjust": p_adjust}
    run_dir = RunDir(out, COMMAND, settings, outputs=OUTPUTS, overwrite=overwrite,
                     result=[k for k in settings if k not in ("test", "p_adjust")]).check()
    # under torchrun every rank loads the prior and the extractor on its own device (its LOCAL_RANK GPU)
    with distributed(str(dev)) as (rank, world, rank_dev):
        extractor, clf, feature_info = _feature_networks(quick, weights, classifier, feature_size, rank_dev,
                                                         config.seed, progress)
        model, diffusion = load_prior(spec, device=str(rank_dev))
        config.check_prior(int(diffusion.num_timesteps))
        on_rank0(lambda: run_dir.start(clear=CLEARED), rank, world)  # the first write, after every check
        if quick and not groups:
            from analysis.demo.hspace_quick import quick_groups

            groups = quick_groups(out / "data", quick_corruption, quick_severity, restored=quick_restored,
                                  n_images=config.images_per_group, seed=config.seed, split=config.split)
        # the device asked for, not the rank's: the manifest resumes whatever the number of processes
        provenance = {"prior": str(prior), "prior_config": spec.config_name, "weights": str(weights),
                      "feature_size": int(feature_size), "quick": bool(quick), "device": str(dev), **feature_info}
        result = run_hspace_study(groups, model, diffusion, extractor, config, out=out, provenance=provenance,
                                  progress=progress, paired=test == "wilcoxon", classifier=clf)
        on_rank0(lambda: write_study_outputs(result, out, test=test, p_adjust=p_adjust), rank, world)  # rank 0 writes
    return result


@dataclass(kw_only=True)
class HSpaceRunOptions(RunOptions, PriorOptions):
    """The options of ``python -m analysis.hspace`` besides the protocol (`HSpaceConfig`)."""

    out: str = option("runs/hspace", help="output folder (resumable: the same study resumes; another one is "
                                          "refused unless --overwrite)")
    quick: bool = option(False, help="the built-in trained 64 px prior, the demo's trained ResNet-mini as feature "
                                     "network and label-flip classifier, mini-CUB clean/degraded/restored groups, "
                                     "the calibrated pullback edit (docs/hspace.md)")
    weights: str | None = option(None, help=f"ResNet50 feature weights: 'imagenet' (torchvision, from the torch cache "
                                            f"offline; paper-mode default), a path ({RESNET50_FILE}) or 'none' "
                                            "(random); with --quick: ResNet50 features instead of the demo "
                                            "classifier's")
    classifier: str | None = option(None, help="a fine-tuned classifier (classifier.pt or run folder of python -m "
                                               "classifiers.finetune, e.g. ResNet50 on CUB): label flips of the "
                                               "generations (--quick: the demo's ResNet-mini)")
    set: list[str] = option(repeat=True, metavar="LABEL=ROOT",
                            help="an image group: a CUB root or an image folder; repeat (quick mode: built-in groups)")
    levels: int = option(4, check=positive_int, help="number of perturbation levels K")
    scale: float | None = option(None, help="alpha_k = scale * k (default 0.5; "
                                            f"{QUICK_DEFAULTS['scale']} with --quick): sample mode, s1 becomes "
                                            "(1 + alpha_k) s1; pullback, x_t moves alpha_k times the noise's norm")
    test: str = option("wilcoxon", choices=TESTS,
                       help="tests between groups per level and metric: wilcoxon (signed-rank, paired by image: the "
                            "groups hold the same images with the same noise; McNemar for the label flips) or "
                            "mann-whitney (unpaired U; Fisher for the flips)")
    p_adjust: str = option("holm", choices=P_ADJUST,
                           help="correction of all the study's p-values as one family: holm (family-wise error), bh "
                                "(Benjamini-Hochberg false discovery rate) or none")
    feature_size: int | None = option(None, check=lambda name, v: v if v is None else positive_int(name, v),
                                      help=f"ResNet50 input size (default 224; {QUICK_DEFAULTS['feature_size']} "
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
    add_config_arguments(p, HSpaceRunOptions, skip=("seed",))
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
                   weights=opts.weights, classifier=opts.classifier, feature_size=opts.feature_size,
                   device=opts.device, config=config_from_args(args), quick_corruption=opts.quick_corruption,
                   quick_severity=opts.quick_severity, quick_restored=opts.restore, threads=opts.threads or None,
                   progress=opts.progress, test=opts.test, p_adjust=opts.p_adjust, overwrite=opts.overwrite)

    return run_cli(work, report=lambda result: _print_summary(result, opts), out=opts.out)


def _print_summary(result: HSpaceResult, args: HSpaceRunOptions) -> None:
    print(f"h-space study: {len(result.rows)} distances, {len(result.groups)} groups, "
          f"{result.seconds_per_image:.2f} s/image ({result.unet_evals_per_image} UNet evaluations/image)")
    nan = float("nan")
    for s in summarize_distances(result.rows):
        print(f"  {s['group']:>14s} level {s['level']} (alpha {s['alpha']:g}): median {s['median']:.4g} "
              f"mean {s['mean']:.4g} (n={s['n']}); mean |pixel change| {s['pixel_change_mean']:.3g}/255; "
              f"label flips {s['flip_rate']:.0%} [{s['flip_ci_low']:.0%}, {s['flip_ci_high']:.0%}]; median cosine "
              f"{s.get('cosine_median', nan):.3g}; mean |dh| {s.get('dh_norm_mean', nan):.3g} "
              f"({s.get('dh_rel_mean', nan):.1%} of |h|)")
    tests = group_tests(result.rows, test=args.test, p_adjust=args.p_adjust)
    family = sum(t["p_adjusted"] == t["p_adjusted"] for t in tests)
    print(f"tests between groups: {args.test} ({TEST_FILES[args.test][0]}), {family} p-values corrected together "
          f"({args.p_adjust})")
    top = result.config.levels
    for metric in ("distance", "pixel_change", "label_flip"):
        for o in paper_ordering(tests, top, metric):
            print(f"  paper's ordering at level {top}, {metric}: {o['more']} > {o['less']}: {o['verdict']} "
                  f"(means {o['mean_more']:.4g} vs {o['mean_less']:.4g}, adjusted p {o['p_adjusted']:.2g})")
    print(f"outputs in {args.out}")
