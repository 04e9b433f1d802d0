"""``python -m analysis.classify``: the command line of Table 2 (the package docstring is its help text).

Every argument and the output folder are checked before anything is loaded or scored; expected failures
end as one ``error: ...`` line on stderr and exit status 2. The output folder is a `runkit.rundir.RunDir`: a
folder holding files this command did not write, or its run of other classifiers / sets / protocol, is
refused unless --overwrite; its own earlier run with the same inputs is scored again and its files rewritten.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from classifiers import parse_bbox_size
from classifiers.predict import resolve_device
from runkit.checks import nonnegative_int, positive_int
from runkit.cli import ArgumentParser
from runkit.distributed import distributed, on_rank0
from runkit.errors import run_cli
from runkit.options import LoaderOptions, RunOptions, add_config_arguments, config_from_args, option
from runkit.rundir import RunDir
from runkit.runtime import torch_threads

from analysis.classify.formats import load_predictions
from analysis.classify.scoring import score_table2
from analysis.classify.spec import Table2Spec, load_spec, parse_classifier_arg, parse_set_arg
from analysis.classify.summary import DEFAULT_P_ADJUST, StatsConfig, finish_table2

__all__ = ["ClassifyConfig", "DEFAULT_OUT", "DEMO_OUT", "build_parser", "check_out_writable", "main"]

DEFAULT_OUT = "runs/table2"
DEMO_OUT = "runs/demo-table2"
OUTPUT_FILES = "table.csv, table.md, table.tex, table.json, mcnemar.csv (with replicates: comparisons.csv), predictions/"
COMMAND = "analysis.classify"
#: What a run writes into --out besides config.json and done.json (`runkit.rundir.RunDir`), and the figures drawn
#: from its table (notebooks/table2.ipynb: OUT/figures/): anything else there is foreign. A run that starts again
#: removes its own files (`_CLEAR`) first.
OUTPUTS = ("table.csv", "table.md", "table.tex", "table.json", "mcnemar.csv", "comparisons.csv", "predictions/*",
           "figures/*")
_CLEAR = ("table.csv", "table.md", "table.tex", "table.json", "mcnemar.csv", "comparisons.csv", "predictions")
#: Flags that choose what is scored: meaningless with --from-predictions (the predictions are already made).
_SCORING_FLAGS = ("cub_root", "classifier", "set", "spec", "bbox_crop", "bbox_size", "allow_protocol_mismatch")


@dataclass(kw_only=True)
class ClassifyConfig(RunOptions, LoaderOptions, StatsConfig):
    """The options of ``python -m analysis.classify`` (the package docstring says what they do together)."""

    classifier: list[str] = option(repeat=True, metavar="NAME=CKPT", result=True,
                                   help="a fine-tuned classifier (run folder or classifier.pt) and its column name "
                                        "(repeat); if NAME is an architecture the checkpoint must hold that one")
    cub_root: str | None = option(None, result=True, help="the clean CUB root (its test split is the reference)")
    set: list[str] = option(repeat=True, metavar="ROW/CORRUPTION=ROOT[,ROOT...]", result=True,
                            help="a CUB root to score as row ROW, column CORRUPTION (repeat); several roots "
                                 "separated by commas are replicates, one restoration per restorer seed (the cell "
                                 "is their mean with a two-level bootstrap CI)")
    spec: str | None = option(None, result=True,
                              help="JSON/YAML file with cub_root, classifiers, sets (flags add to it)")
    out: str | None = option(None, help=f"output folder (default {DEFAULT_OUT}; demo: {DEMO_OUT}; "
                                        "--from-predictions: that folder)")
    bbox_crop: bool = option(False, result=True,
                             help="score images cropped to their bounding boxes (URIE's CUB-C protocol)")
    bbox_size: str | None = option(None, metavar="RESIZE,CROP", result=True,
                                   help="with --bbox-crop: resize the box to RESIZE x RESIZE and centre-crop CROP; "
                                        "'classifier' uses each checkpoint's own sizes (default: URIE's 256,227, "
                                        "or the spec file's bbox_size)")
    allow_protocol_mismatch: bool = option(False, result=True, help="score classifiers even if they were trained on another "
                                           "protocol (whole images vs --bbox-crop, or other box sizes) than the one "
                                           "asked for: a logged warning, not an error")
    from_predictions: str | None = option(None, metavar="DIR", result=True,
                                          help="re-make every table from DIR/predictions without running any model "
                                               "(no --cub-root, --classifier, --set, --spec, --bbox-*)")
    threads: int = option(0, check=nonnegative_int, help="torch CPU threads (0: torch's choice; the demo, whose nets are tiny, uses 1)")
    batch_size: int = option(64, check=positive_int, help="images per batch")
    seed: int = option(0, help="seed of the bootstrap resampling (numpy default_rng; every cell's CI draws from "
                               "it, in every mode, the demo included); the only randomness of the table")
    restore: bool = option(True, result=True, help="demo: score the restoration rows",
                           negative_help="demo only: skip the restoration rows")
    retrain: bool = option(False, result=True, help="demo only: train its classifiers and restorers from scratch "
                                                    "(cached) instead of using the shipped weights")

    def check(self) -> None:
        if self.from_predictions:
            given = [self.flag(name) for name in _SCORING_FLAGS if getattr(self, name)]
            if not self.restore:
                given.append("--no-restore")
            if given:
                raise ValueError(f"--from-predictions re-makes the tables from {self.from_predictions}'s predictions "
                                 f"and scores nothing: drop {', '.join(given)} (or drop --from-predictions to score)")
        demo = not (self.classifier or self.spec or self.from_predictions)
        if not demo and (self.retrain or not self.restore):
            flag = "--retrain" if self.retrain else "--no-restore"
            raise ValueError(f"{flag} applies to the built-in demo only (no --classifier, --spec or "
                             "--from-predictions); drop it")


def build_parser() -> argparse.ArgumentParser:
    description = sys.modules[__package__].__doc__  # the package's docstring: what Table 2 is, with examples
    p = ArgumentParser(prog="python -m analysis.classify", description=description)
    return add_config_arguments(p, ClassifyConfig)


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


def _run_dir(out: Path, args: ClassifyConfig, in_place: bool = False) -> RunDir:
    """The run folder, checked (nothing written). ``in_place``: ``--from-predictions`` into the predictions'
    own folder, whose tables it re-makes whatever run wrote them."""
    check_out_writable(out)
    if not in_place:
        return RunDir(out, COMMAND, args, outputs=OUTPUTS).check()
    run_dir = RunDir(out, COMMAND, args.settings(), outputs=OUTPUTS, result=(), overwrite=args.overwrite)
    if run_dir.read_config() is None and not args.overwrite:
        # no run record: predictions/ is this command's input, and anything else there is someone else's
        others = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                        if p.is_file() and p.relative_to(out).parts[0] != "predictions")
        if others:
            raise ValueError(f"--out {out} holds files {COMMAND} did not write ({', '.join(others[:3])}"
                             f"{f' and {len(others) - 3} more' if len(others) > 3 else ''}); give another --out for "
                             "the tables, or pass --overwrite to write them there anyway")
        run_dir.overwrite = True  # only its own input is there
    return run_dir.check()


def _finish(run_dir: RunDir, preds, meta, args: ClassifyConfig, write_predictions: bool = True) -> dict:
    """The first write (config.json), the tables, done.json."""
    run_dir.start(clear=_CLEAR if write_predictions else ())
    result = finish_table2(preds, meta, run_dir.path, args.n_boot, args.confidence, args.seed, args.p_adjust,
                           write_predictions=write_predictions)
    run_dir.finish({"replicated": result["replicated"], "cells": len(result["rows"]), "tests": len(result["tests"])})
    return result


def _remake(args: ClassifyConfig) -> int:
    """``--from-predictions``: every table again from an earlier run's predictions, no model."""
    out = Path(args.out or args.from_predictions)
    same = out.resolve() == Path(args.from_predictions).resolve()
    run_dir = _run_dir(out, args, in_place=same)
    preds, meta = load_predictions(args.from_predictions)
    result = _finish(run_dir, preds, meta, args, write_predictions=not same)
    print(result["markdown"])
    print(f"tables re-made from {args.from_predictions} -> {out}")
    return 0


def _demo(args: ClassifyConfig) -> int:
    """No classifier, spec or predictions: the embedded demo (`analysis.demo.table2`)."""
    if args.set or args.cub_root:
        if args.cub_root:  # the first thing wrong first: a missing or broken root says so
            from cubdata import read_cub

            read_cub(args.cub_root)
        raise ValueError("--set/--cub-root need at least one --classifier NAME=CKPT (or a --spec file)")
    if args.p_adjust != DEFAULT_P_ADJUST:
        raise ValueError(f"--p-adjust applies to your own tables; the demo always uses {DEFAULT_P_ADJUST}")
    if args.bbox_crop or args.bbox_size or args.allow_protocol_mismatch:
        raise ValueError("--bbox-crop, --bbox-size and --allow-protocol-mismatch apply to real data; the demo scores "
                         "whole images")
    run_dir = _run_dir(Path(args.out or DEMO_OUT), args)
    from analysis.demo.table2 import main_demo

    run_dir.start(clear=_CLEAR)  # the demo checks nothing more before its first write (the cache, not --out)
    code = main_demo(args)
    run_dir.finish({"demo": True})
    return code


def _score(args: ClassifyConfig) -> int:
    spec, out = _spec_from_args(args)
    # under torchrun: one process group for the whole command; rank 0 alone checks --out (its check folder
    # and file would race with the other ranks'), every rank scores its shard
    with torch_threads(args.threads), distributed(str(resolve_device(args.device))) as (rank, world, _):
        run_dir = on_rank0(lambda: _run_dir(out, args), rank, world)
        preds, meta = score_table2(spec, device=args.device, batch_size=args.batch_size, workers=args.loader_workers,
                                   progress=args.progress)
        result = on_rank0(lambda: _finish(run_dir, preds, meta, args), rank, world)
    if rank == 0:  # rank 0 reports for all
        print(result["markdown"])
        tests = "comparisons.csv" if result["replicated"] else "mcnemar.csv"
        print(f"written: {out}/table.csv, table.md, table.tex, table.json, {tests}, predictions/")
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
