"""``python -m analysis.quality``: score each ``--pred`` folder against ``--gt`` and write the report."""
from __future__ import annotations

import argparse

from runkit.cli import ArgumentParser, resolve_device_name
from runkit.errors import EXPECTED_ERRORS, run_cli

from analysis.quality.evaluate import METRICS, evaluate_quality, parse_metrics
from analysis.quality.files import check_decodable, match_images
from analysis.quality.pretrained import FID_WEIGHTS, LPIPS_NETS
from analysis.quality.report import format_markdown, method_labels, summary_rows, write_report

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from analysis.quality import __doc__ as description  # the package docstring: what --help shows

    p = ArgumentParser(prog="python -m analysis.quality", description=description)
    p.add_argument("--pred", nargs="+", required=True, help="folder(s) / CUB root(s) of restored images, one per method")
    p.add_argument("--names", default=None, help="comma-separated method names for --pred (default: each folder's "
                   "shortest path suffix that tells it from the others: fog/3 and rain/3 for x/fog/3 and x/rain/3, "
                   "else the folder name)")
    p.add_argument("--gt", required=True, help="folder / CUB root of the ground-truth (clean) images")
    p.add_argument("--metrics", default="psnr,ssim", help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--out", default="out/quality", help="output folder for per_image.csv, summary.csv, summary.md")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    p.add_argument("--batch-size", type=int, default=8, help="images of one size scored together (memory: about "
                   "0.2 GB per 500x375 image for SSIM)")
    p.add_argument("--lpips-net", choices=sorted(LPIPS_NETS), default="alex", help="LPIPS backbone")
    p.add_argument("--lpips-weights", default=None, help="torchvision backbone state dict for LPIPS (default: hub cache)")
    p.add_argument("--fid-weights", default=None, help=f"{FID_WEIGHTS} for FID (default: hub cache)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _method_names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.names.split(",")] if args.names else method_labels(args.pred)
    if len(names) != len(args.pred):
        raise ValueError(f"--names gives {len(names)} name(s) for {len(args.pred)} --pred folder(s)")
    if len(set(names)) != len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


def run(args: argparse.Namespace) -> tuple[dict, dict, tuple[str, ...]]:
    """Score every ``--pred`` folder (all paired and readable before the first is scored) and write the
    report. Returns (results per method, written paths, metrics)."""
    metrics = parse_metrics(args.metrics)
    names = _method_names(args)
    for pred in args.pred:
        check_decodable(p for _, pr, gt in match_images(pred, args.gt) for p in (pr, gt))
    device = resolve_device_name(args.device)
    results = {name: evaluate_quality(pred, args.gt, metrics, device=device, lpips_net=args.lpips_net,
                                      lpips_weights=args.lpips_weights, fid_weights=args.fid_weights,
                                      progress=not args.no_progress, batch_size=args.batch_size)
               for name, pred in zip(names, args.pred)}
    return results, write_report(results, args.out), metrics


def _print_report(outcome: tuple[dict, dict, tuple[str, ...]]) -> None:
    results, paths, metrics = outcome
    print(format_markdown(summary_rows(results), metrics), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # check_decodable's message already says what to do with an unreadable image: no hint added
    return run_cli(lambda: run(args), threads=args.threads, errors=(*EXPECTED_ERRORS, ImportError), hints={},
                   report=_print_report, out=args.out)
