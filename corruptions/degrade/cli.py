"""``python -m corruptions.degrade``: the flags are the fields of `DegradeConfig`; prints one row per variant and
exits 1 when images failed, 2 (one line on stderr) on a bad root, a foreign --out, other settings or a broken
corruption, 130 on Ctrl-C (rerun to resume)."""
from __future__ import annotations

import argparse
import sys

from runkit.cli import ArgumentParser
from runkit.options import add_config_arguments, config_from_args
from runkit.errors import EXPECTED_ERRORS, run_cli

from corruptions.registry import get_corruption_names
from corruptions.degrade.builder import run_build
from corruptions.degrade.outdir import MANIFEST_NAME
from corruptions.degrade.settings import DegradeConfig
from corruptions.degrade.worker import CorruptionFailed

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from corruptions.degrade import __doc__ as description  # the package docstring: what --help shows

    p = ArgumentParser(prog="python -m corruptions.degrade", description=description)
    # the default is read from the registry when the parser is built: corruptions registered since count
    add_config_arguments(p, DegradeConfig, defaults={"corruptions": ",".join(get_corruption_names())},
                         skip=("device", "threads"))
    return p


def print_summary(summary: dict) -> int:
    """The table of variants on stdout and the failed images on stderr; 1 when any failed, else 0."""
    print(f"{'variant':<14} {'ok':>6} {'failed':>6} {'written':>8} {'skipped':>8}  root")
    for key, v in summary["variants"].items():
        print(f"{key:<14} {v['ok']:>6} {v['failed']:>6} {v['written']:>8} {v['skipped']:>8}  {v['root']}")
    print(
        f"{summary['written']} image(s) written, {summary['skipped']} verified and skipped, in "
        f"{summary['seconds']:.1f} s ({summary['images_per_second']:.1f} img/s); manifests: "
        f"{summary['out']}/<corruption>/<severity>/{MANIFEST_NAME}"
    )
    if not summary["failed"]:
        return 0
    bad = {}
    for f in summary["failures"]:
        bad.setdefault((f["image_id"], f["rel_path"]), f["error"])
    print(f"FAILED: {summary['failed']} degraded image(s) from {len(bad)} source image(s):", file=sys.stderr)
    for (image_id, rel), err in list(bad.items())[:20]:
        print(f"  image {image_id} {rel}: {err}", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more (see the manifests)", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(DegradeConfig, build_parser().parse_args(argv))
    return run_cli(lambda: print_summary(run_build(cfg)), config=cfg, errors=(*EXPECTED_ERRORS, CorruptionFailed),
                   out=cfg.out)
