"""The h-space probe: does the prior's h-space carry the class, and does it still after degradation and
restoration? (``python -m analysis.hprobe``; the direct test of "h-space carries semantics", beside the
perturbation study `analysis.hspace`.)

For a few timesteps t: h (the UNet middle block's output, spatially averaged by default) of x_t, the image noised
as DiffLoss noises it (x_t = sqrt(abar_t) x + sqrt(1 - abar_t) e, one seeded noise per image, the same in every
group), for the clean *train* images of a CUB root; a scikit-learn linear probe (StandardScaler +
LogisticRegression, C chosen by stratified cross-validation on the train images only) predicts the class; its
accuracy is reported on each group's test images: clean, degraded, restored without and with DiffLoss. A 2-D
PCA of the train images' h, applied to every group, is drawn coloured by class, one panel per group.

Outputs in ``--out``: probe.csv (per t and group: n, correct, accuracy with a 95% bootstrap interval, the
majority-class rate, chance, the chosen C and its cross-validated accuracy), probe.md (the table), pca.png /
pca.pdf, summary.json, features/ (h per batch, resumable: a re-run skips finished batches) and, with --quick,
data/ (its groups).

Several GPUs: ``torchrun --nproc_per_node N -m analysis.hprobe --cub-root ... --set ...`` deals the batches out
between N processes; rank 0 alone writes and fits.

    python -m analysis.hprobe --quick --out runs/hprobe-quick
    python -m analysis.hprobe --prior 256x256_diffusion_uncond.pt --cub-root CUB_200_2011 \\
        --set degraded=degraded/fog/3 --set "w/o DiffLoss=restored/fog3-l2" \\
        --set "w/ DiffLoss=restored/fog3-dl" --batch-size 32 --out runs/hprobe-fog3
"""
from __future__ import annotations

from analysis.hprobe.cli import HProbeConfig, build_parser, fit_and_score, main, probe_markdown, probe_tests, run_probe
from analysis.hprobe.extract import (POOLS, REPRESENTATIONS, LabelledImage, extract_group_features, hspace_features,
                                     labelled_images)
from analysis.hprobe.probe import PROBE_CS, compare_probes, fit_probe, pca_projection, score_probe

__all__ = ["HProbeConfig", "build_parser", "main", "run_probe", "fit_and_score", "probe_markdown", "probe_tests",
           "POOLS", "REPRESENTATIONS", "LabelledImage", "labelled_images", "hspace_features", "extract_group_features",
           "PROBE_CS", "fit_probe", "score_probe", "compare_probes", "pca_projection"]
