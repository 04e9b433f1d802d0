"""``python -m analysis.classify``: the command line of Table 2 (the package docstring is its help text).

Every argument and the output folder are checked before anything is loaded or scored; expected failures
end as one ``error: ...`` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from classifiers import parse_bbox_size
from classifiers.predict import resolve_device
from runkit.checks import positive_int
from runkit.cli import ArgumentParser
from runkit.distributed import distributed, on_rank0
from runkit.errors import run_cli
from runkit.options import LoaderOptions, RunOptions, add_config_arguments, config_from_args, option
from runkit.runtime import torch_threads

from analysis.classify.formats import load_predictions
from analysis.classify.spec import Table2Spec, load_spec, parse_classifier_arg, parse_set_arg
from analysis.classify.summary import DEFAULT_P_ADJUST, StatsConfig, finish_table2, run_table2

__all__ = ["ClassifyConfig", "DEFAULT_OUT", "DEMO_OUT", "build_parser", "check_out_writable", "main"]

DEFAULT_OUT = "runs/table2"
DEMO_OUT = "runs/demo-table2"
OUTPUT_FILES = "table.csv, table.md, table.tex, table.json, mcnemar.csv, predictions/"


@dataclass(kw_only=True)
class ClassifyConfig(RunOptions, LoaderOptions, StatsConfig):
    """The options of ``python -m analysis.classify`` (the package docstring says what they do together)."""

    classifier: list[str] = option(repeat=True, metavar="NAME=CKPT",
                                   help="a fine-tuned classifier (run folder or classifier.pt) and its column name "
                                        "(repeat); if NAME is an architecture the checkpoint must hold that one")
    cub_root: str | None = option(None, help="the clean CUB root (its test split is the reference)")
    set: list[str] = option(repeat=True, metavar="ROW/CORRUPTION=ROOT",
                            help="a CUB root to score as row ROW, column CORRUPTION (repeat)")
    spec: str | None = option(None, help="JSON/YAML file with cub_root, classifiers, sets (flags add to it)")
    out: str | None = option(None, help=f"output folder (default {DEFAULT_OUT}; demo: {DEMO_OUT}; "
                                        "--from-predictions: that folder)")
    bbox_crop: bool = option(False, help="score images cropped to their bounding boxes (URIE's CUB-C protocol)")
    bbox_size: str | None = option(None, metavar="RESIZE,CROP",
                                   help="with --bbox-crop: resize the box to RESIZE x RESIZE and centre-crop CROP; "
                                        "'classifier' uses each checkpoint's own sizes (default: URIE's 256,227, "
                                        "or the spec file's bbox_size)")
    allow_protocol_mismatch: bool = option(False, help="score classifiers even if they were trained on another "
                                           "protocol (whole images vs --bbox-crop, or other box sizes) than the one "
                                           "asked for: a logged warning, not an error")
    from_predictions: str | None = option(None, metavar="DIR",
                                          help="re-make every table from DIR/predictions without running any model")
    threads: int = option(0, help="torch CPU threads (0: torch's choice; the demo, whose nets are tiny, uses 1)")
    batch_size: int = option(64, check=positive_int, help="images per batch")
    seed: int = option(0, help="seed of the bootstrap resampling (numpy default_rng; every cell's CI draws from "
                               "it, in every mode, the demo included); the only randomness of the table")
    restore: bool = option(True, help="demo: score the restoration rows",
                           negative_help="demo only: skip the restoration rows")


def build_parser() -> argparse.ArgumentParser:
    description = sys.modules[__package__].__doc__  # the package's docstring: what Table 2 is, with examples
    p = ArgumentParser(prog="python -m analysis.classify", description=description)
    return add_config_arguments(p, ClassifyConfig, skip=("overwrite",))


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


def _spec_from_args(args: ClassifyConfig) -> tuple[Table2Spec, Path]:
    """The spec file (if any) with the flags added to it, and the output folder."""
    spec, extra = (load_spec(args.spec) if args.spec else (Table2Spec("", {}), {}))
    if args.cub_root:
        spec.clean = args.cub_root
    for text in args.classifier:
        name, ckpt = parse_classifier_arg(text)
        spec.classifiers[name] = ckpt
    spec.sets.extend(parse_set_arg(t) for t in args.set)
    spec.bbox_crop = spec.bbox_crop or args.bbox_crop
    if args.bbox_size is not None:
        spec.bbox_size = parse_bbox_size(args.bbox_size)
    spec.allow_protocol_mismatch = spec.allow_protocol_mismatch or args.allow_protocol_mismatch
    return spec, Path(args.out or extra.get("out") or DEFAULT_OUT)


def _remake(args: ClassifyConfig) -> int:
    """``--from-predictions``: every table again from an earlier run's predictions, no model."""
    out = Path(args.out or args.from_predictions)
    check_out_writable(out)
    preds, meta = load_predictions(args.from_predictions)
    same = out.resolve() == Path(args.from_predictions).resolve()
    result = finish_table2(preds, meta, out, args.n_boot, args.confidence, args.seed, args.p_adjust,
                           write_predictions=not same)
    print(result["markdown"])
    print(f"tables re-made from {args.from_predictions} -> {out}")
    return 0


def _demo(args: ClassifyConfig) -> int:
    """No classifier, spec or predictions: the embedded demo (`analysis.demo.table2`)."""
    if args.set or args.cub_root:
        raise ValueError("--set/--cub-root need at least one --classifier NAME=CKPT (or a --spec file)")
    if args.p_adjust != DEFAULT_P_ADJUST:
        raise ValueError(f"--p-adjust applies to your own tables; the demo always uses {DEFAULT_P_ADJUST}")
    check_out_writable(args.out or DEMO_OUT)
    from analysis.demo.table2 import main_demo

    return main_demo(args)


def _score(args: ClassifyConfig) -> int:
    spec, out = _spec_from_args(args)
    # under torchrun: one process group for the whole command; rank 0 alone checks --out (its check folder
    # and file would race with the other ranks'), every rank scores its shard
    with torch_threads(args.threads), distributed(str(resolve_device(args.device))) as (rank, world, _):
        on_rank0(lambda: check_out_writable(out), rank, world)
        result = run_table2(spec, out, device=args.device, batch_size=args.batch_size, workers=args.loader_workers,
                            n_boot=args.n_boot, confidence=args.confidence, seed=args.seed, progress=args.progress,
                            p_adjust=args.p_adjust)
    if rank == 0:  # rank 0 reports for all
        print(result["markdown"])
        print(f"written: {out}/{OUTPUT_FILES}")
    return 0


def _run(args: ClassifyConfig) -> int:
    args.validate()
    if args.from_predictions:
        return _remake(args)
    if not args.classifier and not args.spec:
        return _demo(args)
    return _score(args)


def main(argv: list[str] | None = None) -> int:
    args = config_from_args(ClassifyConfig, build_parser().parse_args(argv))
    return run_cli(lambda: _run(args))
