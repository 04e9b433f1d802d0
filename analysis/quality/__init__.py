"""Image-quality metrics of restored images against their ground truth (the paper's Tables 1, 3 and 4).

    python -m analysis.quality --set "w/o DiffLoss=restored/wo" --set "w/ DiffLoss=restored/w" \\
        --cub-root ~/.cache/diffloss-toolkit/mini-cub-v2 --metrics psnr,ssim --out out/quality

``--set`` and ``--cub-root`` are folders of images or CUB roots (then their ``images/`` folder is used). Images
pair by relative path without extension (a restored ``x.png`` pairs with the original ``x.jpg``); a
predicted image without a ground truth is an error, extra ground-truth images are ignored.

Metrics (PSNR and SSIM come from `restoration.metrics`, which training's validation reports too; SSIM is
torchmetrics' formula computed in float64 with its Gaussian window as two 1-D passes: faster on CPU than
torchmetrics in float32 and free of its ~1e-5 error, see benchmarks/quality_throughput.py):
    psnr   dB, data range 1, per image, averaged           (higher is better)
    ssim   Gaussian 11x11, sigma 1.5, per image, averaged    (higher is better)
    lpips  AlexNet (default) / VGG / SqueezeNet LPIPS, per image, averaged  (lower is better)
    fid    FID between the predicted and the ground-truth set, InceptionV3 pool features (lower is better;
           needs the torch-fidelity package)
PSNR/SSIM need no weights. LPIPS needs the ImageNet backbone (``--lpips-weights PATH`` or torchvision's
file in the torch hub cache, e.g. ``alexnet-owt-7be5be79.pth``; its linear heads ship with torchmetrics);
FID needs ``weights-inception-2015-12-05-6726825d.pth`` (``--fid-weights PATH`` or the hub cache). Nothing
is ever downloaded: a missing file raises FileNotFoundError naming it and where to get it.

Writes ``per_image.csv`` (method, image, metrics), ``summary.csv`` and ``summary.md`` (one row per method).

Seed replicates and paired comparisons: ``--set "w/ DiffLoss=R0,R1,R2"`` gives a method several restorations of
the same images, one per restorer seed (its values: means over the runs; per_image.csv gains a ``replicate``
column, summary.csv a ``seeds`` column). ``--compare A B`` (repeat) compares two methods on the same images:
per-image A - B of PSNR / SSIM / LPIPS, the mean difference with a bootstrap CI (--n-boot, --confidence, --seed)
and a two-sided test, Holm-corrected over all comparisons (--p-adjust); one run each: the Wilcoxon signed-rank
test, replicates: the two-level t-test and a two-level bootstrap CI (seeds, then images). Writes ``paired.csv``
and a section of ``summary.md``:

    python -m analysis.quality --cub-root data/CUB_200_2011 --set "w/o DiffLoss=restored/wo-s0,restored/wo-s1" \\
        --set "w/ DiffLoss=restored/w-s0,restored/w-s1" --compare "w/ DiffLoss" "w/o DiffLoss" --out out/quality
"""
from __future__ import annotations

from cubdata import IMAGE_SUFFIXES
from restoration.metrics import psnr, ssim

from analysis.quality.cli import build_parser, main
from analysis.quality.evaluate import HIGHER_IS_BETTER, METRICS, evaluate_quality, parse_metrics
from analysis.quality.files import check_decodable, find_images, match_images
from analysis.quality.pretrained import FID_WEIGHTS, FID_WEIGHTS_URL, LPIPS_NETS, fid_weights_file, load_fid, load_lpips, lpips_backbone_file
from analysis.quality.paired import PAIRED_COLUMNS, PAIRED_METRICS, compare_methods, paired_rows
from analysis.quality.report import format_markdown, format_paired_markdown, method_labels, summary_rows, write_report

__all__ = [
    "METRICS", "HIGHER_IS_BETTER", "psnr", "ssim", "find_images", "match_images", "check_decodable",
    "lpips_backbone_file", "load_lpips", "fid_weights_file", "load_fid", "evaluate_quality", "summary_rows",
    "format_markdown", "format_paired_markdown", "write_report", "method_labels", "parse_metrics", "build_parser",
    "main", "PAIRED_COLUMNS", "PAIRED_METRICS", "compare_methods", "paired_rows",
    "IMAGE_SUFFIXES", "LPIPS_NETS", "FID_WEIGHTS", "FID_WEIGHTS_URL",
]
