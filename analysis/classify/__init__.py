"""Table 2: top-1 accuracy of fine-tuned classifiers on clean, degraded and restored CUB test images.

Every set is a CUB root (from `corruptions.degrade`, from `restoration.restore`, or your own) whose test split
holds the same images as the clean root's; only the test split is scored, with each classifier's own
preprocessing (recorded in its checkpoint). Each cell gets a 95% percentile-bootstrap confidence interval
(resamples drawn from --seed), each pair of configurations on the same images (degraded
vs restored, w/o vs w/ DiffLoss) McNemar's exact test; the McNemar p-values of one table are one family and
get Holm's correction by default (--p-adjust holm; column p_adjusted beside the raw p_value). Writes
OUT/table.{csv,md,tex,json}, OUT/mcnemar.csv and OUT/predictions/ (per-image predictions, from which
--from-predictions re-makes every table without a model). Arguments and a writable --out are checked before
anything is scored.

    python -m analysis.classify --classifier resnet50=runs/resnet50 --classifier vgg16=runs/vgg16 \\
        --cub-root data/CUB_200_2011 --set "degraded/fog=data/cub-degraded/fog/3" \\
        --set "w/o DiffLoss/fog=data/restored/fog-l2" --set "w/ DiffLoss/fog=data/restored/fog-diffloss" --out runs/table2

--set takes CONFIG/DEGRADATION=ROOT (the label ends at the last '=', its last '/' separates row and column, so
'w/o DiffLoss/fog' works). CONFIG/DEGRADATION=ROOT1,ROOT2,ROOT3 gives a row replicates, one restoration per
restorer seed: each cell is then the mean over seeds with a two-level bootstrap CI (seeds, then images), and each
pair of rows gets Delta top-1 with that CI and the two-level t-test (per-image and between-seed variance;
McNemar's exact test where both rows hold one run), written to OUT/comparisons.csv instead of mcnemar.csv.
The same can be given as a JSON/YAML --spec file (a list of roots for replicates). OUT is a run folder: a folder
holding other files, or this command's table of other inputs, is refused unless --overwrite.

--bbox-crop scores box-cropped images instead (URIE's CUB-C
protocol: crop to the box, resize to 256x256, centre-crop 227; --bbox-size changes the two sizes). Each
classifier must have been trained on the protocol it is scored with (python -m classifiers.finetune --bbox-crop
records it in the checkpoint); a mismatch is an error unless
--allow-protocol-mismatch. Without --classifier, --spec or --from-predictions it runs the embedded demo: a
synthetic smoke benchmark on the built-in mini-CUB that needs no data.
"""
from __future__ import annotations

# One concern per module: spec.py (what to score, and the checks on it), scoring.py (the predictions, shared
# out under torchrun), summary.py (CIs, McNemar, the whole run), formats.py (the files and their readers),
# cli.py (the command line). This file gathers their public names: the package's API.

from classifiers import URIE_BBOX_SIZE, parse_bbox_size
from classifiers.scoring_data import ScoringDataset

from analysis.stats import P_ADJUST_METHODS
from analysis.classify.cli import DEFAULT_OUT, DEMO_OUT, build_parser, check_out_writable, main
from analysis.classify.formats import (
    COMPARISON_COLUMNS,
    MCNEMAR_COLUMNS,
    PREDICTION_COLUMNS,
    PREDICTIONS_FORMAT,
    REPLICATE_TABLE_COLUMNS,
    TABLE_COLUMNS,
    format_latex,
    format_markdown,
    load_comparisons,
    load_mcnemar,
    load_predictions,
    load_table,
    slug,
    write_outputs,
)
from analysis.classify.scoring import Predictions, score_table2
from analysis.classify.spec import (
    CLEAN,
    DEGRADED,
    SetSpec,
    Table2Spec,
    check_classes,
    check_protocol,
    check_same_test_split,
    load_spec,
    parse_classifier_arg,
    parse_set_arg,
)
from analysis.classify.summary import DEFAULT_P_ADJUST, StatsConfig, finish_table2, replicated, run_table2, summarize

__all__ = [
    # what to score (spec.py)
    "CLEAN", "DEGRADED", "SetSpec", "Table2Spec", "parse_set_arg", "parse_classifier_arg", "parse_bbox_size",
    "URIE_BBOX_SIZE", "load_spec", "check_same_test_split", "check_classes", "check_protocol",
    # scoring (scoring.py; the dataset lives with the classifiers)
    "Predictions", "ScoringDataset", "score_table2",
    # the table (summary.py)
    "P_ADJUST_METHODS", "DEFAULT_P_ADJUST", "StatsConfig", "replicated", "summarize", "finish_table2", "run_table2",
    # files (formats.py)
    "TABLE_COLUMNS", "MCNEMAR_COLUMNS", "REPLICATE_TABLE_COLUMNS", "COMPARISON_COLUMNS", "PREDICTION_COLUMNS",
    "PREDICTIONS_FORMAT", "format_markdown", "format_latex", "write_outputs", "load_table", "load_mcnemar",
    "load_comparisons", "load_predictions", "slug",
    # the command line (cli.py)
    "DEFAULT_OUT", "DEMO_OUT", "build_parser", "main", "check_out_writable",
]
