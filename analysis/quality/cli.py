"""``python -m analysis.quality``: score each ``--set`` folder against ``--cub-root`` and write the report."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from runkit.checks import positive_int
from runkit.cli import ArgumentParser, parse_set, resolve_device_name
from runkit.errors import EXPECTED_ERRORS, run_cli
from runkit.options import RunOptions, add_config_arguments, config_from_args, option

from analysis.quality.evaluate import METRICS, evaluate_quality, parse_metrics
from analysis.quality.files import check_decodable, match_images
from analysis.quality.pretrained import FID_WEIGHTS, LPIPS_NETS
from analysis.quality.report import format_markdown, method_labels, summary_rows, write_report

__all__ = ["QualityConfig", "build_parser", "main"]


@dataclass(kw_only=True)
class QualityConfig(RunOptions):
    """The options of ``python -m analysis.quality``."""

    set: list[str] = option(repeat=True, metavar="[LABEL=]ROOT", required=True,
                            help="a folder / CUB root of restored images, one per method (repeat); without LABEL the "
                                 "method is named by its shortest path suffix that tells it from the others (fog/3 "
                                 "and rain/3 for x/fog/3 and x/rain/3, else the folder name)")
    cub_root: str = option(required=True, help="folder / CUB root of the ground-truth (clean) images")
    metrics: str = option("psnr,ssim", help=f"comma-separated subset of {','.join(METRICS)}")
    out: str = option("out/quality", help="output folder for per_image.csv, summary.csv, summary.md")
    batch_size: int = option(8, check=positive_int, help="images of one size decoded and scored together by LPIPS "
                             "and FID (PSNR and SSIM take one image at a time)")
    lpips_net: str = option("alex", choices=sorted(LPIPS_NETS), help="LPIPS backbone")
    lpips_weights: str | None = option(None, help="torchvision backbone state dict for LPIPS (default: hub cache)")
    fid_weights: str | None = option(None, help=f"{FID_WEIGHTS} for FID (default: hub cache)")

    def check(self) -> None:
        parse_metrics(self.metrics)
        self.methods()

    def methods(self) -> list[tuple[str, str]]:
        """``(label, root)`` of each ``--set``; labels made unique."""
        labelled = [parse_set(t) if "=" in t else (None, [t]) for t in self.set]
        for label, roots in labelled:
            if len(roots) != 1:
                raise ValueError(f"--set {label}: give one root per method (seed replicates are compared by "
                                 "python -m analysis.classify)")
        roots = [r[0] for _, r in labelled]
        auto = method_labels(roots)
        names = [label or a for (label, _), a in zip(labelled, auto)]
        if len(set(names)) != len(names):
            names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
        return list(zip(names, roots))


def build_parser() -> argparse.ArgumentParser:
    from analysis.quality import __doc__ as description  # the package docstring: what --help shows

    p = ArgumentParser(prog="python -m analysis.quality", description=description)
    return add_config_arguments(p, QualityConfig, skip=("seed",))


def run(args: QualityConfig) -> tuple[dict, dict, tuple[str, ...]]:
    """Score every ``--set`` folder (all paired and readable before the first is scored) and write the
    report. Returns (results per method, written paths, metrics)."""
    args.validate()
    metrics = parse_metrics(args.metrics)
    methods = args.methods()
    for _, pred in methods:
        check_decodable(p for _, pr, gt in match_images(pred, args.cub_root) for p in (pr, gt))
    device = resolve_device_name(args.device)
    results = {name: evaluate_quality(pred, args.cub_root, metrics, device=device, lpips_net=args.lpips_net,
                                      lpips_weights=args.lpips_weights, fid_weights=args.fid_weights,
                                      progress=args.progress, batch_size=args.batch_size)
               for name, pred in methods}
    return results, write_report(results, args.out), metrics


def _print_report(outcome: tuple[dict, dict, tuple[str, ...]]) -> None:
    results, paths, metrics = outcome
    print(format_markdown(summary_rows(results), metrics), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


def main(argv=None) -> int:
    args = config_from_args(QualityConfig, build_parser().parse_args(argv))
    # check_decodable's message already says what to do with an unreadable image: no hint added
    return run_cli(lambda: run(args), threads=args.threads, errors=(*EXPECTED_ERRORS, ImportError), hints={},
                   report=_print_report, out=args.out)
