"""``python -m analysis.classify``: the command line of Table 2 (the package docstring is its help text).

Every argument and the output folder are checked before anything is loaded or scored; expected failures
end as one ``error: ...`` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from classifiers import CLASSIFIERS, parse_bbox_size
from classifiers.predict import resolve_device
from runkit.cli import ArgumentParser, add_config_arguments, config_from_args, default_workers
from runkit.distributed import distributed, on_rank0
from runkit.runtime import torch_threads

from analysis.classify.formats import load_predictions
from analysis.classify.spec import Table2Spec, load_spec, parse_classifier_arg, parse_set_arg
from analysis.classify.summary import DEFAULT_P_ADJUST, StatsConfig, finish_table2, run_table2

__all__ = ["DEFAULT_OUT", "DEMO_OUT", "build_parser", "check_out_writable", "main"]

DEFAULT_OUT = "runs/table2"
DEMO_OUT = "runs/demo-table2"
OUTPUT_FILES = "table.csv, table.md, table.tex, table.json, mcnemar.csv, predictions/"


def build_parser() -> argparse.ArgumentParser:
    description = sys.modules[__package__].__doc__  # the package's docstring: what Table 2 is, with examples
    p = ArgumentParser(prog="python -m analysis.classify", description=description)
    p.add_argument("--classifier", action="append", default=[], metavar="NAME=CKPT",
                   help="a fine-tuned checkpoint and its column name (repeat); if NAME is an architecture "
                        f"({', '.join(CLASSIFIERS)}) the checkpoint must hold that architecture")
    p.add_argument("--clean", default=None, help="the clean CUB root (its test split is the reference)")
    p.add_argument("--set", action="append", default=[], metavar="CONFIG/DEGRADATION=ROOT",
                   help="a CUB root to score as row CONFIG, column DEGRADATION (repeat)")
    p.add_argument("--spec", default=None, help="JSON/YAML file with clean, classifiers, sets (CLI flags add to it)")
    p.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_OUT}; demo: {DEMO_OUT}; "
                                               "--from-predictions: that folder)")
    p.add_argument("--bbox-crop", action="store_true",
                   help="score images cropped to their bounding boxes (URIE's CUB-C protocol)")
    p.add_argument("--bbox-size", default=None, metavar="RESIZE,CROP",
                   help="with --bbox-crop: resize the box to RESIZE x RESIZE and centre-crop CROP; 'classifier' "
                        "uses each checkpoint's own sizes (default: URIE's 256,227, or the spec file's bbox_size)")
    p.add_argument("--allow-protocol-mismatch", action="store_true",
                   help="score classifiers even if they were trained on another protocol (whole images vs "
                        "--bbox-crop, or other box sizes) than the one asked for: a logged warning, not an error")
    p.add_argument("--from-predictions", default=None, metavar="DIR",
                   help="re-make every table from DIR/predictions without running any model")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, 0: torch's choice (default: 1 for the demo, whose nets are tiny; "
                        "else torch's choice)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="DataLoader worker processes (0: main process; the demo always uses 0)")
    add_config_arguments(p, StatsConfig)  # --n-boot, --confidence, --seed (alias --bootstrap-seed), --p-adjust
    p.add_argument("--no-restore", action="store_true", help="demo only: skip the restoration rows")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p


def check_out_writable(out: str | Path) -> None:
    """Refuse an output folder that cannot be written, before any work: creates ``out`` (with its missing
    parents) and a temporary file in it, then removes the file and the folders it created. Raises
    ``ValueError`` with a one-line message."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose another --out")
    created, p = [], out.absolute()
    while not p.exists() and p != p.parent:
        created.append(p)  # deepest first
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ValueError(f"--out {out} is not a writable folder ({err.strerror or err}); choose another --out") from None
    finally:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break


def _check_args(args: argparse.Namespace) -> None:
    """The numeric arguments, before anything is loaded (one-line ValueError)."""
    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be >= 1 (bootstrap resamples per cell), got {args.n_boot}")
    if not 0 < args.confidence < 1:
        hint = (f"; for {args.confidence:g}% pass --confidence {args.confidence / 100:g}"
                if 1 < args.confidence < 100 else "")
        raise ValueError(f"--confidence must be in (0, 1), got {args.confidence:g}{hint}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")


def _spec_from_args(args: argparse.Namespace) -> tuple[Table2Spec, Path]:
    """The spec file (if any) with the flags added to it, and the output folder."""
    spec, extra = (load_spec(args.spec) if args.spec else (Table2Spec("", {}), {}))
    if args.clean:
        spec.clean = args.clean
    for text in args.classifier:
        name, ckpt = parse_classifier_arg(text)
        spec.classifiers[name] = ckpt
    spec.sets.extend(parse_set_arg(t) for t in args.set)
    spec.bbox_crop = spec.bbox_crop or args.bbox_crop
    if args.bbox_size is not None:
        spec.bbox_size = parse_bbox_size(args.bbox_size)
    spec.allow_protocol_mismatch = spec.allow_protocol_mismatch or args.allow_protocol_mismatch
    return spec, Path(args.out or extra.get("out") or DEFAULT_OUT)


def _remake(args: argparse.Namespace, stats: StatsConfig) -> int:
    """``--from-predictions``: every table again from an earlier run's predictions, no model."""
    out = Path(args.out or args.from_predictions)
    check_out_writable(out)
    preds, meta = load_predictions(args.from_predictions)
    same = out.resolve() == Path(args.from_predictions).resolve()
    result = finish_table2(preds, meta, out, stats.n_boot, stats.confidence, stats.seed, stats.p_adjust,
                           write_predictions=not same)
    print(result["markdown"])
    print(f"tables re-made from {args.from_predictions} -> {out}")
    return 0


def _demo(args: argparse.Namespace, progress: bool) -> int:
    """No classifier, spec or predictions: the embedded demo (`analysis.demo.table2`)."""
    if args.set or args.clean:
        raise ValueError("--set/--clean need at least one --classifier NAME=CKPT (or a --spec file)")
    if args.p_adjust != DEFAULT_P_ADJUST:
        raise ValueError(f"--p-adjust applies to your own tables; the demo always uses {DEFAULT_P_ADJUST}")
    check_out_writable(args.out or DEMO_OUT)
    from analysis.demo.table2 import main_demo

    return main_demo(args, progress)


def _score(args: argparse.Namespace, stats: StatsConfig, progress: bool) -> int:
    spec, out = _spec_from_args(args)
    # under torchrun: one process group for the whole command; rank 0 alone checks --out (its check folder
    # and file would race with the other ranks'), every rank scores its shard
    with torch_threads(args.threads), distributed(str(resolve_device(args.device))) as (rank, world, _):
        on_rank0(lambda: check_out_writable(out), rank, world)
        result = run_table2(spec, out, device=args.device, batch_size=args.batch_size, workers=args.workers,
                            n_boot=stats.n_boot, confidence=stats.confidence, seed=stats.seed, progress=progress,
                            p_adjust=stats.p_adjust)
    if rank == 0:  # rank 0 reports for all
        print(result["markdown"])
        print(f"written: {out}/{OUTPUT_FILES}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    try:
        _check_args(args)
        stats = config_from_args(StatsConfig, args)
        if args.from_predictions:
            return _remake(args, stats)
        if not args.classifier and not args.spec:
            return _demo(args, progress)
        return _score(args, stats, progress)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
