"""``python -m analysis.quality``: score each ``--set`` folder against ``--cub-root`` and write the report.

The output folder is a `runkit.rundir.RunDir`: a folder holding files this command did not write, or its run
of other sets / metrics, is refused before any work unless --overwrite; its own earlier run with the same
inputs is scored again and rewritten.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from runkit.checks import fraction, nonnegative_int, positive_int
from runkit.cli import ArgumentParser, parse_set, resolve_device_name
from runkit.errors import EXPECTED_ERRORS, run_cli
from runkit.options import RunOptions, add_config_arguments, config_from_args, option
from runkit.rundir import RunDir

from analysis.stats import P_ADJUST_METHODS
from analysis.quality.evaluate import METRICS, evaluate_quality, parse_metrics
from analysis.quality.files import check_decodable, match_images
from analysis.quality.paired import PAIRED_METRICS, paired_rows
from analysis.quality.pretrained import FID_WEIGHTS, LPIPS_NETS
from analysis.quality.report import method_labels, write_report

__all__ = ["QualityConfig", "COMMAND", "OUTPUTS", "build_parser", "run", "main"]

COMMAND = "analysis.quality"
#: What a run writes into --out besides config.json and done.json: anything else there is someone else's.
OUTPUTS = ("per_image.csv", "summary.csv", "summary.md", "paired.csv")


@dataclass(kw_only=True)
class QualityConfig(RunOptions):
    """The options of ``python -m analysis.quality``."""

    set: list[str] = option(repeat=True, metavar="[LABEL=]ROOT[,ROOT...]", required=True, result=True,
                            help="a folder / CUB root of restored images, one per method (repeat); without LABEL the "
                                 "method is named by its shortest path suffix that tells it from the others (fog/3 "
                                 "and rain/3 for x/fog/3 and x/rain/3, else the folder name); LABEL=ROOT1,ROOT2,... "
                                 "gives the method's replicates, one restoration per restorer seed")
    cub_root: str = option(required=True, result=True, help="folder / CUB root of the ground-truth (clean) images")
    metrics: str = option("psnr,ssim", result=True, help=f"comma-separated subset of {','.join(METRICS)}")
    compare: list[list[str]] = option(repeat=True, nargs=2, metavar=("A", "B"), parse=str,
                                      help="compare methods A and B (their labels) on the same images: per-image A - B "
                                           f"of every per-image metric ({', '.join(PAIRED_METRICS)}) with a bootstrap "
                                           "CI and a Wilcoxon signed-rank test (replicates: the two-level t-test); "
                                           "repeat for more pairs; writes paired.csv")
    out: str = option("out/quality", help="output folder for per_image.csv, summary.csv, summary.md (and paired.csv)")
    batch_size: int = option(8, check=positive_int, help="images of one size decoded and scored together by LPIPS "
                             "and FID (PSNR and SSIM take one image at a time)")
    lpips_net: str = option("alex", choices=sorted(LPIPS_NETS), result=True, help="LPIPS backbone")
    lpips_weights: str | None = option(None, result=True,
                                       help="torchvision backbone state dict for LPIPS (default: hub cache)")
    fid_weights: str | None = option(None, result=True, help=f"{FID_WEIGHTS} for FID (default: hub cache)")
    n_boot: int = option(1000, check=positive_int, help="bootstrap resamples of each paired comparison")
    confidence: float = option(0.95, check=fraction(zero=False, one=False),
                               help="confidence level of the paired comparisons' intervals, in (0, 1): 0.95, not 95")
    seed: int = option(0, check=nonnegative_int, help="seed of the paired comparisons' bootstrap (numpy default_rng)")
    p_adjust: str = option("holm", choices=P_ADJUST_METHODS,
                           help="multiple-comparison correction over all paired comparisons of the report "
                                "(paired.csv: p_adjusted beside the raw p_value)")

    def check(self) -> None:
        metrics = parse_metrics(self.metrics)
        names = [name for name, _ in self.methods()]
        for a, b in self.compare:
            unknown = [x for x in (a, b) if x not in names]
            if unknown:
                raise ValueError(f"--compare {a!r} {b!r}: no method named {unknown[0]!r}; the methods are "
                                 f"{', '.join(repr(n) for n in names)}")
            if a == b:
                raise ValueError(f"--compare {a!r} {b!r}: compare two different methods")
        if self.compare and not any(m in PAIRED_METRICS for m in metrics):
            raise ValueError(f"--compare needs a per-image metric ({', '.join(PAIRED_METRICS)}) in --metrics; FID is "
                             "one number per set")

    def methods(self) -> list[tuple[str, list[str]]]:
        """``(label, roots)`` of each ``--set`` (several roots: its replicates); labels made unique."""
        labelled = [parse_set(t) if "=" in t else (None, [t]) for t in self.set]
        for label, roots in labelled:
            twice = sorted({r for r in roots if roots.count(r) > 1})
            if twice:
                raise ValueError(f"--set {label}: lists {twice[0]} twice; each replicate must be another restoration")
        auto = method_labels([roots[0] for _, roots in labelled])
        names = [label or a for (label, _), a in zip(labelled, auto)]
        if len(set(names)) != len(names):
            names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
        return list(zip(names, [roots for _, roots in labelled]))


def build_parser() -> argparse.ArgumentParser:
    from analysis.quality import __doc__ as description  # the package docstring: what --help shows

    p = ArgumentParser(prog="python -m analysis.quality", description=description)
    return add_config_arguments(p, QualityConfig)


def _check_inputs(methods: list[tuple[str, list[str]]], cub_root: str, pairs) -> None:
    """Every root pairs with the ground truth and decodes (headers), the replicates of a method hold the same
    images, and so do the two methods of a comparison: all before the first image is scored."""
    keys = {}
    for name, roots in methods:
        for root in roots:
            matched = match_images(root, cub_root)
            check_decodable(p for _, pr, gt in matched for p in (pr, gt))
            found = {k for k, _, _ in matched}
            if name in keys and found != keys[name]:
                raise ValueError(f"--set {name}: its replicates hold different images ({root} has {len(found)}, the "
                                 f"first root {len(keys[name])}, {len(found & keys[name])} in common)")
            keys.setdefault(name, found)
    for a, b in pairs:
        if keys[a] != keys[b]:
            raise ValueError(f"--compare {a!r} {b!r}: a paired comparison needs the same images; {a} has "
                             f"{len(keys[a])}, {b} {len(keys[b])}, {len(keys[a] & keys[b])} in common")


def run(args: QualityConfig) -> tuple[dict, dict, tuple[str, ...], list[dict]]:
    """Score every ``--set`` folder (all paired and readable, --out ours, before the first is scored), compare
    the ``--compare`` pairs, and write the report. Returns (runs per method, written paths, metrics, paired
    rows)."""
    args.validate()
    metrics = parse_metrics(args.metrics)
    methods = args.methods()
    pairs = [tuple(p) for p in args.compare]
    run_dir = RunDir(args.out, COMMAND, args, outputs=OUTPUTS).check()
    _check_inputs(methods, args.cub_root, pairs)
    device = resolve_device_name(args.device)
    results = {name: [evaluate_quality(root, args.cub_root, metrics, device=device, lpips_net=args.lpips_net,
                                       lpips_weights=args.lpips_weights, fid_weights=args.fid_weights,
                                       progress=args.progress, batch_size=args.batch_size) for root in roots]
               for name, roots in methods}
    paired = paired_rows(results, pairs, metrics, n_boot=args.n_boot, confidence=args.confidence, seed=args.seed,
                         p_adjust=args.p_adjust)
    run_dir.start(clear=OUTPUTS)
    if not paired:  # a rerun of the same inputs without --compare: no stale comparisons
        run_dir.file("paired.csv").unlink(missing_ok=True)
    paths = write_report(results, run_dir.path, paired,
                         {"confidence": args.confidence, "n_boot": args.n_boot, "seed": args.seed})
    run_dir.finish({"methods": len(results), "comparisons": len(paired)})
    return results, paths, metrics, paired


def _print_report(outcome) -> None:
    _, paths, _, _ = outcome
    print(Path(paths["summary_md"]).read_text(encoding="utf-8"), end="")  # the tables and the comparisons
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


def main(argv=None) -> int:
    args = config_from_args(QualityConfig, build_parser().parse_args(argv))
    # check_decodable's message already says what to do with an unreadable image: no hint added
    return run_cli(lambda: run(args), threads=args.threads, errors=(*EXPECTED_ERRORS, ImportError), hints={},
                   report=_print_report, out=args.out)
