"""What the diffusion prior "sees": per-timestep DiffLoss terms of degraded and restored sets against clean,
and paired tests between sets.

    python -m analysis.naturalness --quick                        # mini-CUB, the built-in prior, demo sets
    python -m analysis.naturalness --cub-root data/CUB_200_2011 --prior ckpt/256x256_diffusion_uncond.pt \\
        --set fog=data/cub-degraded/fog/3 --set "w/o DiffLoss/fog=data/restored/fog-wo" \\
        --set "w/ DiffLoss/fog=data/restored/fog-w" --compare "w/ DiffLoss/fog - w/o DiffLoss/fog" \\
        --images 200 --out runs/naturalness

For each image of the clean CUB root's test split and each set (a degraded or restored copy of that split,
the same image ids), the image and its clean original are noised with the SAME t and noise, as DiffLoss
does, and the frozen prior is run on both. Per timestep t of ``--timesteps``:

    denoise  = mean (eps(z_t, t) - noise)^2       how well the prior denoises the set's own image
    nat      = mean (eps(z_t, t) - eps(x_t, t))^2  DiffLoss's L_nat against the clean image (0 for clean)
    sem      = mean (h(z_t, t) - h(x_t, t))^2      DiffLoss's L_sem: h-space (middle block) distance
    sem_rel  = |h(z_t, t) - h(x_t, t)|^2 / |h(x_t, t)|^2   L_sem relative to the clean image's h: the scale of h
                                                   changes with t, so compare sem across t with this one

``nat`` and ``sem`` are what DiffLoss minimises, so a set whose terms are near the clean floor at every t
is one DiffLoss cannot tell from clean. ``denoise`` is NOT a naturalness score: smooth (fog) and dark (low
light) images are easier to denoise than clean ones, so their ``denoise`` is lower than clean's.

Whether two sets differ (w/ against w/o DiffLoss, restored against degraded) is a paired question: the same
images meet the same noise. For each ``--compare 'A - B'`` (default: every pair of sets), metric (nat, sem,
sem_rel) and t, the report gives the mean per-image difference A - B with a bootstrap CI and a Wilcoxon
signed-rank test, Holm-adjusted over the whole family of tests. A set given several roots (replicates, one per
restorer seed) counts each image as its mean over them; its comparisons use a two-level bootstrap and t-test
that include the variance between seeds. A restored set whose network was trained with DiffLoss against the
same prior was trained to minimise these very terms: the report's notes say so; score it with an independent
prior too (``--prior`` of another prior, ``--prior random`` as a null).

Outputs in ``--out``: ``naturalness.csv`` (per set, metric and t: mean, std, n), ``paired.csv`` (the paired
tests), ``per_image.csv``, ``naturalness.md`` (notes, paired table, per-metric tables) and ``naturalness.png``
(per-set means against t on a log scale with 95% bands; below, the paired differences in % of B's mean). A
``manifest.json`` records every finished batch of images: rerunning the same command resumes an interrupted
run, and a rerun with other ``--compare`` / ``--n-boot`` only redoes the report. Images are resized and
centre-cropped to the prior's size. Works with any guided-diffusion prior (``--prior`` builtin, a
prior.safetensors or 256x256_diffusion_uncond.pt), on a GPU with ``--device cuda``.
"""
from __future__ import annotations

from analysis.naturalness.cli import QUICK_IMAGES, QUICK_TIMESTEPS, NaturalnessConfig, build_parser, main, run
from analysis.naturalness.measure import (CLEAN, DEFAULT_TIMESTEPS, METRICS, check_decodable, image_noise,
                                          measure_naturalness, naturalness_terms, pair_sets, prior_response, terms_of)
from analysis.naturalness.provenance import prior_identity, restorer_training, training_notes
from analysis.naturalness.report import (METRIC_LABELS, OUTPUT_FILES, draw_report, format_markdown,
                                         format_paired_markdown, plot_naturalness, plot_paired, set_styles,
                                         write_outputs)
from analysis.naturalness.stats import PAIRED_METRICS, default_comparisons, paired_comparisons, summarize

__all__ = ["METRICS", "PAIRED_METRICS", "CLEAN", "DEFAULT_TIMESTEPS", "QUICK_TIMESTEPS", "QUICK_IMAGES",
           "METRIC_LABELS", "OUTPUT_FILES", "prior_response", "terms_of", "naturalness_terms", "pair_sets",
           "check_decodable", "image_noise", "measure_naturalness", "summarize", "default_comparisons",
           "paired_comparisons", "prior_identity", "restorer_training", "training_notes", "format_markdown",
           "format_paired_markdown", "set_styles", "plot_naturalness", "plot_paired", "draw_report", "write_outputs",
           "NaturalnessConfig", "build_parser", "run", "main"]
