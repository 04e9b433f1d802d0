"""``python -m analysis.naturalness``: the options (`NaturalnessConfig`), the checks made before any work, the
run folder (`runkit.rundir.RunDir`: a rerun resumes from its manifest) and `main`."""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from runkit.checks import fraction, nonnegative_int, positive_int
from runkit.cli import ArgumentParser, parse_set
from runkit.errors import run_cli
from runkit.options import RunOptions, add_config_arguments, config_from_args, option
from runkit.rundir import RunDir
from analysis.stats import P_ADJUST_METHODS
from diffloss.prior.spec import PriorOptions, PriorSpec

from analysis.naturalness.measure import CLEAN, DEFAULT_TIMESTEPS
from analysis.naturalness.report import OUTPUT_FILES

log = logging.getLogger(__name__)

__all__ = ["COMMAND", "QUICK_TIMESTEPS", "QUICK_IMAGES", "NaturalnessConfig", "build_parser", "run", "main"]

COMMAND = "analysis.naturalness"
#: --quick's timesteps and images (spread over the 10 classes): with the demo's 21 sets (3 degraded, 2 x 3 restored
#: x 3 restorer seeds) they keep it within 3 minutes on 2 CPU cores (docs/prior.md).
QUICK_TIMESTEPS = (25, 100, 300, 700)
QUICK_IMAGES = 50
#: What a run writes in its folder besides config.json and done.json.
RUN_OUTPUTS = OUTPUT_FILES + ("manifest.json",)
COMPARE_SEP = " - "


@dataclass(kw_only=True)
class NaturalnessConfig(RunOptions, PriorOptions):
    """The options of ``python -m analysis.naturalness``."""

    quick: bool = option(False, result=True,
                         help="mini-CUB with the Table 2 demo's degraded and restored sets (built and cached on first "
                              "use), timesteps " + ",".join(map(str, QUICK_TIMESTEPS)))
    cub_root: str | None = option(None, result=True, help="the clean CUB root (its test split)")
    set: list[str] = option(repeat=True, result=True, metavar="LABEL=CUB_ROOT[,CUB_ROOT...]",
                            help="a degraded or restored copy of the clean test split (several roots: replicates, one "
                                 "per restorer seed); repeat")
    timesteps: str | None = option(None, result=True,
                                   help="comma-separated timesteps (default " + ",".join(map(str, DEFAULT_TIMESTEPS))
                                        + "; --quick's above)")
    images: int = option(0, check=nonnegative_int, result=True,
                         help=f"N test images, evenly spread over the image ids and so over the classes (0: all; "
                              f"{QUICK_IMAGES} with --quick)")
    batch_size: int = option(16, check=positive_int, help="images per UNet call")
    seed: int = option(0, check=nonnegative_int, result=True, help="seed of the noise and of the bootstrap")
    compare: list[str] = option(repeat=True, metavar="'A - B'",
                                help="a paired comparison of two sets' per-image terms (a - b), e.g. "
                                     "'w/ DiffLoss - w/o DiffLoss'; repeat (default: every pair of sets, the later "
                                     "minus the earlier; --quick: per corruption w/o DiffLoss - degraded and w/ - "
                                     "w/o DiffLoss)")
    n_boot: int = option(1000, check=positive_int, help="bootstrap resamples of each paired difference's CI")
    confidence: float = option(0.95, check=fraction(zero=False, one=False), help="confidence level of the CIs")
    p_adjust: str = option("holm", choices=P_ADJUST_METHODS,
                           help="correction of the paired tests' p-values over the whole family (all comparisons, "
                                "metrics and timesteps)")
    threads: int = option(0, check=nonnegative_int, help="torch CPU threads (0: 1 with --quick, where it is faster on "
                                                         "a shared CPU; else torch's choice)")
    out: str = option("runs/naturalness", help="output folder (a rerun with the same settings resumes)")

    def check(self) -> None:
        steps = self.timestep_list()
        if not steps or any(t < 0 for t in steps):
            raise ValueError(f"--timesteps must be comma-separated integers >= 0, got {self.timesteps!r}")
        if len(set(steps)) != len(steps):
            raise ValueError(f"--timesteps must not repeat, got {self.timesteps!r}")
        if self.quick and (self.cub_root or self.set):
            raise ValueError("--quick builds its own sets; leave out --cub-root and --set")
        if not self.quick and (not self.cub_root or not self.set):
            raise ValueError("give --cub-root CUB_ROOT and at least one --set LABEL=CUB_ROOT (or run --quick)")
        self.sets()
        self.comparisons()

    def timestep_list(self) -> list[int]:
        if self.timesteps is None:
            return list(QUICK_TIMESTEPS if self.quick else DEFAULT_TIMESTEPS)
        try:
            return [int(v) for v in self.timesteps.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--timesteps must be comma-separated integers, got {self.timesteps!r}") from None

    def image_count(self) -> int | None:
        """How many test images to score (None: all)."""
        return self.images or (QUICK_IMAGES if self.quick else None)

    def sets(self) -> dict[str, list[str]]:
        """``{label: [root, ...]}`` of the ``--set`` options."""
        pairs = [parse_set(t) for t in self.set]
        sets = {label: roots for label, roots in pairs}
        if len(sets) != len(pairs):
            raise ValueError("--set labels must be unique")
        if CLEAN in sets:
            raise ValueError(f"--set {CLEAN}: '{CLEAN}' names the --cub-root images; give the set another label")
        return sets

    def comparisons(self) -> list[tuple[str, str]] | None:
        """The ``--compare`` pairs ``(a, b)`` (None when none is given: the default pairs)."""
        if not self.compare:
            return None
        out = []
        for text in self.compare:
            a, sep, b = text.partition(COMPARE_SEP)
            if not sep or COMPARE_SEP in b or not a.strip() or not b.strip():
                raise ValueError(f"--compare {text!r}: expected 'A - B' (two set labels around ' - ')")
            out.append((a.strip(), b.strip()))
        if self.set:
            unknown = sorted({s for pair in out for s in pair} - set(self.sets()) - {CLEAN})
            if unknown:
                raise ValueError(f"--compare names unknown set(s) {unknown}; the sets are {sorted(self.sets())}")
        return out


def build_parser() -> argparse.ArgumentParser:
    from analysis import naturalness

    p = ArgumentParser(prog="python -m analysis.naturalness", description=naturalness.__doc__)
    return add_config_arguments(p, NaturalnessConfig)


def _check_prior(args: NaturalnessConfig) -> PriorSpec:
    """The resolved prior (a missing file or a bad config fails here, before anything is built), with the
    timesteps checked against its schedule."""
    from diffloss.prior import resolve_prior

    spec = resolve_prior(args.prior, args.prior_config)
    steps = int(spec.kwargs.get("diffusion_steps", 1000))
    bad = [t for t in args.timestep_list() if t >= steps]
    if bad:
        raise ValueError(f"--timesteps must be in 0..{steps - 1} for this prior ({spec.label}), got {bad}")
    return spec


def _quick_name(config: str, corruption: str) -> str:
    return f"{config}/{corruption}"  # Table 2's row/column names: "degraded/fog", "w/ DiffLoss/fog"


def _quick_plan() -> tuple[list[str], list[tuple[str, str]]]:
    """--quick's set labels (``ROW/CORRUPTION``: "degraded/fog", "w/o DiffLoss/fog", ...) and comparisons (per
    corruption, each demo row minus the one before it: w/o DiffLoss - degraded, w/ - w/o DiffLoss), known before
    anything is built."""
    from analysis.demo.table2 import DEMO_CORRUPTIONS, DEMO_ROWS

    names = [_quick_name(row, c) for row in DEMO_ROWS for c in DEMO_CORRUPTIONS]
    pairs = [(_quick_name(later, c), _quick_name(earlier, c)) for c in DEMO_CORRUPTIONS
             for earlier, later in zip(DEMO_ROWS, DEMO_ROWS[1:])]
    return names, pairs


def _quick_sets(progress: bool) -> tuple[Path, dict[str, list[str]]]:
    """The clean mini-CUB root and the demo's sets (built and cached on first use; `_quick_plan`'s labels)."""
    from analysis.demo.table2 import demo_spec

    spec, _ = demo_spec(progress=progress)
    return Path(spec.clean), {_quick_name(s.config, s.degradation): list(s.roots) for s in spec.sets}


def run(args: NaturalnessConfig) -> dict:
    """Everything the command does, in order: every check (options, output folder, prior, sets, every image
    decodable), then the first write (config.json), the measurement (resumed from out/manifest.json), the
    report. Returns the run's summary (also in out/done.json)."""
    import torch

    from classifiers.predict import resolve_device
    from diffloss.prior import load_prior

    from analysis.naturalness.measure import check_decodable, measure_naturalness, pair_sets
    from analysis.naturalness.provenance import prior_identity, training_notes
    from analysis.naturalness.report import write_outputs
    from analysis.naturalness.stats import default_comparisons, paired_comparisons

    start = time.perf_counter()
    args.validate()
    run_dir = RunDir(args.out, COMMAND, args, outputs=RUN_OUTPUTS).check()
    spec = _check_prior(args)
    sets, comparisons = args.sets(), args.comparisons()
    if args.quick:
        names, quick_pairs = _quick_plan()
        comparisons = comparisons or quick_pairs
        unknown = sorted({s for pair in comparisons for s in pair} - set(names) - {CLEAN})
        if unknown:
            raise ValueError(f"--compare names unknown set(s) {unknown}; --quick's sets are {names}")
    for name, roots in [("--cub-root", [args.cub_root])] + list(sets.items()):
        for root in roots:
            if root and not Path(root).exists():
                raise FileNotFoundError(f"{name}: {root} does not exist (expected a CUB root)")
    device = resolve_device(args.device)
    model, diffusion = load_prior(spec, device=str(device))
    if device.type == "cpu":  # about 20% faster convolutions on the CPU (measured with the built-in prior)
        model.to(memory_format=torch.channels_last)
    if args.quick:
        clean, sets = _quick_sets(args.progress)
    else:
        clean = Path(args.cub_root)
    comparisons = comparisons if comparisons is not None else default_comparisons(list(sets))
    pairs = pair_sets(clean, sets, args.image_count())
    check_decodable(pairs, args.progress)
    prior_id = prior_identity(spec)
    notes, same = training_notes(sets, spec, prior_id)
    run_dir.start(clear=RUN_OUTPUTS)
    rows = measure_naturalness(model, diffusion, clean, sets, args.timestep_list(), images=args.image_count(),
                               batch_size=args.batch_size, seed=args.seed, device=device, progress=args.progress,
                               manifest=run_dir.file("manifest.json"), check_images=False,
                               identity={"prior": prior_id, "device": str(device)})
    paired = paired_comparisons(rows, comparisons, n_boot=args.n_boot, confidence=args.confidence, seed=args.seed,
                                p_adjust=args.p_adjust)
    title = (f"prior {spec.label}, {len(pairs.ids)} test images of {clean.name}, timesteps "
             f"{','.join(map(str, args.timestep_list()))}, noise seed {args.seed}")
    paths = write_outputs(rows, paired, run_dir.path, title, notes, confidence=args.confidence,
                          p_adjust=args.p_adjust)
    summary = {"title": title, "images": len(pairs.ids), "sets": {n: list(map(str, r)) for n, r in sets.items()},
               "prior": spec.label, "prior_id": prior_id, "trained_against_this_prior": same, "notes": notes,
               "tests": len(paired), "significant": sum(r["p_adjusted"] < 0.05 for r in paired),
               "seconds": round(time.perf_counter() - start, 1), "load_average": [round(v, 2) for v in os.getloadavg()],
               "cpus": os.cpu_count(), "outputs": {k: str(p) for k, p in paths.items()}}
    run_dir.finish(summary)
    return {**summary, "rows": rows, "paired": paired}


def _print_report(result: dict) -> None:
    from analysis.naturalness.report import format_markdown, format_paired_markdown
    from analysis.naturalness.stats import summarize

    print(result["title"])
    for note in result["notes"]:
        print(f"NOTE: {note}")
    summary = summarize(result["rows"])
    print(format_markdown(summary, "nat"))
    print(format_markdown(summary, "sem_rel"))
    significant = [r for r in result["paired"] if r["p_adjusted"] < 0.05]
    print(f"{len(significant)} of {result['tests']} paired tests significant (adjusted p < 0.05)"
          + (":" if significant else ""))
    if significant:
        print(format_paired_markdown(significant))
    load = ", ".join(f"{v:.2f}" for v in result["load_average"])
    print(f"wrote {', '.join(result['outputs'].values())} ({result['seconds']:.0f} s on {result['cpus']} CPUs, load "
          f"average {load})")


def main(argv: Sequence[str] | None = None) -> int:
    args = config_from_args(NaturalnessConfig, build_parser().parse_args(argv))
    threads = args.threads or (1 if args.quick else 0)
    return run_cli(lambda: run(args), config=args, threads=threads, report=_print_report, out=args.out)
