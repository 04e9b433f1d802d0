"""The h-space SVD perturbation study (DiffLoss Fig. 2): does the prior's h-space carry an image's semantics?

For every image of every group (clean, degraded, restored w/o and w/ DiffLoss, ...):
  1. resize (shorter side) and centre-crop to the prior's size, map to [-1, 1];
  2. go to x_t0: ``q_sample`` at t0 with a noise seeded by (seed, image id) -- the same noise for the same
     image in every group -- or, with ``--start ddim-inversion``, deterministic DDIM inversion 0 -> t0;
  3. generate back to x_0 with DDIM (eta 0, ``--steps`` timesteps evenly spaced in [0, t0], guided-diffusion's
     ``SpacedDiffusion.ddim_sample``), the unperturbed generation and K perturbed ones in one batch (same x_t0);
  4. at every step with t >= t_edit the middle block's output h (C x H x W) of the level-k sample is replaced
     by h + alpha_k * s1 * u1 v1^T, where h = U S V^T is the SVD of h as a C x HW matrix (per sample, default
     ``--svd-mode sample``): the top singular value s1 becomes (1 + alpha_k) s1, nothing else changes.
     ``--svd-mode batch-svd`` instead moves h along the first principal component of the flattened h of the
     current batch's unperturbed samples (2..``--batch-size`` images, recomputed at every edited step):
     h + alpha_k * sd1 * pc1. This is NOT Haas et al.'s direction (one global principal direction per timestep
     from a reference set of images): with a few images per batch it depends on which images share the batch.
     ``--svd-mode pullback`` edits x_t instead of h: it moves x_t along the gradient of h's top singular value
     by alpha_k times the noise's norm (for priors whose decoder ignores h; docs/hspace.md);
  5. the feature network's features of every generation (ResNet50 ImageNet penultimate 2048-d in paper mode;
     quick mode: the demo's trained ResNet-mini's penultimate features); distance of level k =
     L2(features(level k) - features(level 0)), beside it the cosine distance, the L2 relative to the norm of
     the unperturbed features, the mean absolute pixel change (0..255), the label flip (a classifier's predicted
     class of level k differs from level 0's: quick mode's ResNet-mini, ``--classifier CKPT`` in paper mode) and
     the size of the edit |dh| = ||h' - h||_F (mean over the edited steps, also relative to ||h||_F).

Outputs in ``--out``: distances.csv (one row per image, group, level: distance, cosine_distance,
relative_distance, dh_norm, dh_rel, pixel_change, label_flip), summary.csv (per group and level, with the flip
rate and its bootstrap interval), wilcoxon.csv (``--test wilcoxon``, the default: the groups hold the same images
with the same noise, so two-sided Wilcoxon signed-rank tests on the per-image differences between every pair of
groups, per level and metric, over the images present in both, and McNemar's exact test of the label flips) or
mannwhitney.csv (``--test mann-whitney``: unpaired; Fisher's exact test for the flips), every p-value of the
study corrected together (``--p-adjust holm``, the default, or bh), summary.json (protocol, seconds per image, the
tests, the paper's ordering at the top level), histograms / histogram_overlay / grid / flip_rates as PNG and PDF,
generations/ (grid images), a manifest.json that lets an interrupted run resume, and config.json / the run folder
record (`runkit.rundir.RunDir`: another study in the same folder is refused unless --overwrite).

Several GPUs: ``torchrun --nproc_per_node N -m analysis.hspace ...`` (paper mode, or --quick with --set) deals
the batches of --batch-size images out between N processes (each on its LOCAL_RANK GPU; gloo on the CPU works
too); rank 0 alone writes, and the outputs are those of a one-process run (timings aside).

    python -m analysis.hspace --quick --out runs/hspace-quick
    python -m analysis.hspace.calibrate --out runs/hspace-calibration   # how quick mode's edit was chosen
    python -m analysis.hspace --prior 256x256_diffusion_uncond.pt --weights resnet50-0676ba61.pth \\
        --set clean=CUB_200_2011 --set degraded=degraded/fog/3 --set "w/ DiffLoss=restored/fog3-dl" \\
        --out runs/hspace
"""
from __future__ import annotations

from analysis.hspace.cli import PRIOR_URL, build_parser, main, run
from analysis.hspace.config import QUICK_DEFAULTS, HSpaceConfig, make_config
from analysis.hspace.features import (RESNET50_FILE, RESNET50_URL, ClassifierFeatures, ResNetFeatures,
                                      build_feature_extractor, feature_distance_metrics, feature_distances,
                                      load_classifier_features, pixel_change)
from analysis.hspace.grid import load_grid
from analysis.hspace.groups import ImageItem, list_group_images, load_image_tensor, select_images
from analysis.hspace.perturbation import (SVD_MODES, PerturbationEdit, PullbackEdit, batch_principal_direction,
                                          check_svd_mode, make_alphas, make_edit, middle_block_output, perturb_along,
                                          perturb_principal, principal_component, pullback_direction)
from analysis.hspace.report import read_distances, write_csv, write_study_outputs
from analysis.hspace.sampling import START_MODES, ddim_generate, ddim_invert, ddim_schedule, spaced_diffusion, start_latent
from analysis.hspace.stats import (METRICS, P_ADJUST, PAPER_ORDERING, TESTS, adjust_study_p_values, flip_tests,
                                   group_tests, mann_whitney_tests, paper_ordering, summarize_distances,
                                   wilcoxon_tests)
from analysis.hspace.study import HSpaceResult, run_hspace_study

__all__ = [
    "perturb_principal", "principal_component", "batch_principal_direction", "perturb_along", "make_alphas",
    "ddim_schedule", "spaced_diffusion", "start_latent", "ddim_invert", "ddim_generate", "PerturbationEdit",
    "ResNetFeatures", "build_feature_extractor", "feature_distances", "feature_distance_metrics", "ImageItem",
    "list_group_images", "select_images", "load_image_tensor", "HSpaceConfig", "HSpaceResult", "run_hspace_study",
    "summarize_distances", "mann_whitney_tests", "wilcoxon_tests", "group_tests", "check_svd_mode", "TESTS",
    "METRICS", "write_csv", "read_distances", "load_grid", "QUICK_DEFAULTS", "run", "make_config",
    "write_study_outputs", "build_parser", "main", "SVD_MODES", "START_MODES", "PRIOR_URL", "RESNET50_FILE",
    "RESNET50_URL", "ClassifierFeatures", "load_classifier_features", "pixel_change", "PullbackEdit", "make_edit",
    "middle_block_output", "pullback_direction", "P_ADJUST", "PAPER_ORDERING", "adjust_study_p_values",
    "flip_tests", "paper_ordering",
]
