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
     current batch's unperturbed samples (2..``--batch-images`` images, recomputed at every edited step):
     h + alpha_k * sd1 * pc1. This is NOT Haas et al.'s direction (one global principal direction per timestep
     from a reference set of images): with a few images per batch it depends on which images share the batch
     (``batch-pca``, its old name, is a deprecated alias);
  5. ResNet50 (ImageNet) penultimate 2048-d features of every generation; distance of level k =
     L2(features(level k) - features(level 0)), beside it the cosine distance and the L2 relative to the norm of
     the unperturbed features; and the size of the edit |dh| = ||h' - h||_F (mean over the edited steps, also
     relative to ||h||_F).

Outputs in ``--out``: distances.csv (one row per image, group, level: distance, cosine_distance,
relative_distance, dh_norm, dh_rel), summary.csv (per group and level), wilcoxon.csv (``--test wilcoxon``, the
default: the groups hold the same images with the same noise, so two-sided Wilcoxon signed-rank tests on the
per-image differences between every pair of groups, per level and metric, over the images present in both) or
mannwhitney.csv (``--test mann-whitney``: unpaired), summary.json (protocol, seconds per image, the tests),
histograms / histogram_overlay / grid as PNG and PDF, generations/ (grid images) and a manifest.json that lets an
interrupted run resume.

Several GPUs: ``torchrun --nproc_per_node N -m analysis.hspace ...`` (paper mode, or --quick with --group) deals
the batches of --batch-images images out between N processes (each on its LOCAL_RANK GPU; gloo on the CPU works
too); rank 0 alone writes, and the outputs are those of a one-process run (timings aside).

    python -m analysis.hspace --quick --out runs/hspace-quick
    python -m analysis.hspace --prior 256x256_diffusion_uncond.pt --weights resnet50-0676ba61.pth \\
        --group clean=CUB_200_2011 --group degraded=degraded/fog/3 --group "w/ DiffLoss=restored/fog3-dl" \\
        --out runs/hspace
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import math
import re
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cubdata import (ImageDecodeError, atomic_write_bytes, atomic_write_text, encode_image, load_pil_rgb, read_cub,
                     sha256_file, write_cub_metadata)

from cubdata import load_square_tensor as load_image_tensor
from cubdata.distributed import distributed, env_rank, env_world, gather_checked, on_rank0, shard
from diffloss.sampling import ddim_schedule, keep_global_rng, spaced_diffusion

log = logging.getLogger(__name__)

__all__ = [
    "perturb_principal",
    "principal_component",
    "batch_principal_direction",
    "perturb_along",
    "make_alphas",
    "ddim_schedule",
    "spaced_diffusion",
    "start_latent",
    "ddim_invert",
    "ddim_generate",
    "PerturbationEdit",
    "ResNetFeatures",
    "build_feature_extractor",
    "feature_distances",
    "feature_distance_metrics",
    "ImageItem",
    "list_group_images",
    "select_images",
    "load_image_tensor",
    "HSpaceConfig",
    "HSpaceResult",
    "run_hspace_study",
    "summarize_distances",
    "mann_whitney_tests",
    "wilcoxon_tests",
    "group_tests",
    "resolve_svd_mode",
    "TESTS",
    "METRICS",
    "write_csv",
    "read_distances",
    "load_grid",
    "QUICK_DEFAULTS",
    "run",
    "make_config",
    "write_study_outputs",
    "build_parser",
    "main",
    "SVD_MODES",
    "START_MODES",
    "PRIOR_URL",
    "RESNET50_FILE",
    "RESNET50_URL",
]

SVD_MODES = ("sample", "batch-svd")
#: Old names still accepted (with a warning) -> the mode they now are.
SVD_MODE_ALIASES = {"batch-pca": "batch-svd"}
#: Tests between groups: paired Wilcoxon signed-rank (default) or unpaired Mann-Whitney U.
TESTS = ("wilcoxon", "mann-whitney")
#: Per-image feature distances of a level to level 0 (columns of distances.csv).
METRICS = ("distance", "cosine_distance", "relative_distance")
START_MODES = ("noise", "ddim-inversion")
PRIOR_FILE = "256x256_diffusion_uncond.pt"
PRIOR_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
RESNET50_FILE = "resnet50-0676ba61.pth"
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------------
# The perturbation (functional core)
# ----------------------------------------------------------------------------------------------------------
def _alpha_vector(alpha, batch: int, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(alpha, dtype=torch.float32, device=like.device)
    if a.ndim == 0:
        a = a.expand(batch)
    if a.shape != (batch,):
        raise ValueError(f"alpha must be a scalar or a [B] vector with B={batch}, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all():
        raise ValueError(f"alpha must be finite, got {a.tolist()}")
    return a


def _check_h(h) -> torch.Tensor:
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor [B, C, H, W], got {type(h).__name__}")
    if h.ndim != 4 or not h.is_floating_point():
        raise ValueError(f"h must be a float tensor [B, C, H, W], got {h.dtype} with shape {tuple(h.shape)}")
    return h


def principal_component(h: torch.Tensor) -> torch.Tensor:
    """The rank-1 top singular component s1 * u1 v1^T of every sample of ``h`` [B, C, H, W] (float), each seen
    as a C x HW matrix; returned with ``h``'s shape, computed in float32 (float64 if ``h`` is float64).

    Sign-free: s1 u1 v1^T does not depend on the sign convention of the SVD.

    Computed without a full SVD: with v1 the top eigenvector of the (smaller) Gram matrix M^T M (float64
    ``eigh``), s1 u1 v1^T = M v1 v1^T (or u1 u1^T M with M M^T when C < HW); several times faster than
    ``torch.linalg.svd`` for ADM's 1024 x 64 and equal to it to float precision (tested)."""
    _check_h(h)
    B, C, H, W = h.shape
    M = h.reshape(B, C, H * W).double()
    if C >= H * W:
        _, V = torch.linalg.eigh(M.transpose(1, 2) @ M)        # ascending eigenvalues
        v1 = V[:, :, -1:]                                       # [B, HW, 1]
        comp = (M @ v1) @ v1.transpose(1, 2)
    else:
        _, U = torch.linalg.eigh(M @ M.transpose(1, 2))
        u1 = U[:, :, -1:]                                       # [B, C, 1]
        comp = u1 @ (u1.transpose(1, 2) @ M)
    work_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    return comp.to(work_dtype).reshape(B, C, H, W)


def perturb_principal(h: torch.Tensor, alpha) -> torch.Tensor:
    """Perturb the principal component of h-space, per sample: ``h' = h + alpha * s1 * u1 v1^T``.

    ``h``: middle-block output [B, C, H, W] float; each sample is a C x HW matrix with SVD U S V^T.
    ``alpha``: a number or a [B] vector (one value per sample). The top singular value s1 becomes
    (1 + alpha) s1; every other singular pair is untouched, so ``h' - h`` lies along u1 v1^T only and
    ``||h' - h||_F = |alpha| * s1``. Samples with alpha == 0 are returned bit-identical (``h`` itself when
    every alpha is 0)."""
    _check_h(h)
    B = h.shape[0]
    a = _alpha_vector(alpha, B, h)
    if not bool((a != 0).any()):
        return h
    comp = principal_component(h)
    shifted = h + (a.view(B, 1, 1, 1) * comp).to(h.dtype)
    return torch.where((a != 0).view(B, 1, 1, 1), shifted, h)


def resolve_svd_mode(name: str) -> str:
    """The canonical name of an svd mode (`SVD_MODES`); the deprecated alias ``batch-pca`` gives ``batch-svd``
    (with a warning: the old name claimed Haas et al.'s global direction, which this mode does not compute)."""
    if name in SVD_MODE_ALIASES:
        new = SVD_MODE_ALIASES[name]
        log.warning("svd mode %r is a deprecated alias of %r (the direction comes from the current batch's images, "
                    "not from Haas et al.'s reference set); use %r", name, new, new)
        return new
    if name not in SVD_MODES:
        raise ValueError(f"unknown svd mode {name!r}; valid: {', '.join(SVD_MODES)} "
                         f"(deprecated aliases: {', '.join(SVD_MODE_ALIASES)})")
    return name


def batch_principal_direction(h_ref: torch.Tensor) -> tuple[torch.Tensor, float]:
    """First principal component of the flattened h of ``h_ref`` [N, C, H, W] (N >= 2 samples, centred):
    returns (unit direction [C, H, W], standard deviation of the samples along it). The sign is fixed so the
    direction's largest-magnitude entry is positive (deterministic, as sklearn's svd_flip).

    ``--svd-mode batch-svd`` calls it on the unperturbed samples of the current batch (2..batch_images images)
    at every edited step. That is not Haas et al.'s direction, which is one global principal direction per
    timestep from a reference set of many images: a handful of images gives a direction that depends on which
    images share the batch. The cheaper honest option was taken (the mode renamed from ``batch-pca``), not the
    extra reference pass a global direction needs."""
    _check_h(h_ref)
    n = h_ref.shape[0]
    if n < 2:
        raise ValueError(
            f"--svd-mode batch-svd needs at least 2 unperturbed samples per batch, got {n}; "
            "use --batch-images >= 2 or --svd-mode sample"
        )
    X = h_ref.reshape(n, -1).double()
    X = X - X.mean(dim=0, keepdim=True)
    _, S, Vh = torch.linalg.svd(X, full_matrices=False)
    v = Vh[0]
    if v[v.abs().argmax()] < 0:
        v = -v
    sd = float(S[0]) / math.sqrt(n - 1)
    return v.reshape(h_ref.shape[1:]).to(h_ref.dtype), sd


def perturb_along(h: torch.Tensor, alpha, direction: torch.Tensor, scale: float) -> torch.Tensor:
    """``h + alpha * scale * direction`` per sample (``direction`` [C, H, W]); alpha == 0 samples bit-identical."""
    _check_h(h)
    B = h.shape[0]
    a = _alpha_vector(alpha, B, h)
    if direction.shape != h.shape[1:]:
        raise ValueError(f"direction must have shape {tuple(h.shape[1:])}, got {tuple(direction.shape)}")
    if not bool((a != 0).any()):
        return h
    shifted = h + (a.view(B, 1, 1, 1) * float(scale)).to(h.dtype) * direction.to(h.dtype)
    return torch.where((a != 0).view(B, 1, 1, 1), shifted, h)


def make_alphas(levels: int = 4, scale: float = 0.5, alphas: Sequence[float] | None = None) -> tuple[float, ...]:
    """The perturbation strengths of levels 1..K: ``alphas`` if given, else ``scale * k`` for k = 1..levels."""
    if alphas is not None:
        out = tuple(float(a) for a in alphas)
        if not out:
            raise ValueError("--alphas must list at least one value")
    else:
        if int(levels) < 1:
            raise ValueError(f"--levels must be >= 1, got {levels}")
        out = tuple(float(scale) * k for k in range(1, int(levels) + 1))
    if any(a == 0 or not math.isfinite(a) for a in out):
        raise ValueError(f"perturbation strengths must be finite and non-zero (level 0 is the unperturbed one), got {out}")
    return out


class PerturbationEdit:
    """The h-space edit used during generation: a callable h -> h' for ``diffloss.hooks.hspace_hook``.

    ``alpha`` [B] holds each sample's strength (0 for the unperturbed ones); ``active`` is switched on by the
    sampler at the steps with t >= t_edit. In ``batch-svd`` mode the direction is recomputed at every edited
    step from the samples with alpha == 0 of this batch (see `batch_principal_direction`).

    Every edited step records each sample's edit size; `dh_norm` / `dh_rel` are their means over the edited
    steps (zeros before any edit)."""

    def __init__(self, alpha: torch.Tensor, svd_mode: str = "sample") -> None:
        self.alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
        self.svd_mode = resolve_svd_mode(svd_mode)
        self.active = False
        self.calls = 0
        self._dh_sum = torch.zeros(self.alpha.shape[0], dtype=torch.float64)
        self._rel_sum = torch.zeros(self.alpha.shape[0], dtype=torch.float64)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return h
        self.calls += 1
        alpha = self.alpha.to(h.device)
        if self.svd_mode == "sample":
            out = perturb_principal(h, alpha)
        else:
            direction, sd = batch_principal_direction(h[alpha == 0])
            out = perturb_along(h, alpha, direction, sd)
        with torch.no_grad():
            dh = torch.linalg.vector_norm((out - h).flatten(1).double(), dim=1)
            hn = torch.linalg.vector_norm(h.flatten(1).double(), dim=1)
            self._dh_sum += dh.cpu()
            self._rel_sum += torch.where(hn > 0, dh / hn, torch.zeros_like(dh)).cpu()
        return out

    @property
    def dh_norm(self) -> torch.Tensor:
        """[B] float64: mean over the edited steps of ||h' - h||_F per sample (|alpha| s1 in sample mode,
        |alpha| sd1 in batch-svd mode); zeros if no step was edited."""
        return self._dh_sum / max(self.calls, 1)

    @property
    def dh_rel(self) -> torch.Tensor:
        """[B] float64: mean over the edited steps of ||h' - h||_F / ||h||_F per sample."""
        return self._rel_sum / max(self.calls, 1)


# ----------------------------------------------------------------------------------------------------------
# DDIM over guided-diffusion
# ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def ddim_invert(model: nn.Module, spaced, x0: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM inversion (eta 0, predicted x0 not clipped) of ``x0`` ([-1, 1] NCHW) from the
    first to the last timestep of ``spaced``: ``len(timesteps) - 1`` UNet evaluations."""
    x = x0
    B = x.shape[0]
    for i in range(spaced.num_timesteps - 1):
        t = torch.full((B,), i, device=x.device, dtype=torch.long)
        x = spaced.ddim_reverse_sample(model, x, t, clip_denoised=False, eta=0.0)["sample"]
    return x


def start_latent(model: nn.Module, spaced, x0: torch.Tensor, start: str = "noise",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x at the last timestep t0 of ``spaced`` from the clean ``x0`` ([-1, 1] NCHW).

    ``start="noise"``: ``q_sample`` with noise drawn from ``generator`` on the CPU (same numbers on every
    device); ``"ddim-inversion"``: `ddim_invert` (no randomness)."""
    if start not in START_MODES:
        raise ValueError(f"unknown start {start!r}; valid: {', '.join(START_MODES)}")
    if start == "ddim-inversion":
        return ddim_invert(model, spaced, x0)
    if generator is None:
        raise ValueError("start='noise' needs a torch.Generator (explicit randomness)")
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
    t = torch.full((x0.shape[0],), spaced.num_timesteps - 1, device=x0.device, dtype=torch.long)
    return spaced.q_sample(x0, t, noise=noise)


@torch.no_grad()
def ddim_generate(model: nn.Module, spaced, x_t: torch.Tensor, alpha: torch.Tensor | None = None,
                  t_edit: int = 0, svd_mode: str = "sample", hook=None,
                  edit: PerturbationEdit | None = None) -> torch.Tensor:
    """DDIM (eta 0, predicted x0 clipped to [-1, 1]) from the last timestep of ``spaced`` to x_0.

    ``x_t`` [B, 3, S, S]; ``alpha`` [B] the per-sample h-space perturbation strengths (None or 0: none),
    applied at the steps whose original timestep is >= ``t_edit``. ``hook`` is the h-space hook factory
    (default ``diffloss.hooks.hspace_hook``). ``edit``: a `PerturbationEdit` to use instead of building one from
    ``alpha`` and ``svd_mode`` (read its ``dh_norm`` / ``dh_rel`` afterwards). One UNet evaluation per timestep;
    returns [-1, 1] NCHW."""
    if hook is None:
        from diffloss.hooks import hspace_hook as hook
    B = x_t.shape[0]
    if edit is not None:
        if alpha is not None:
            raise ValueError("give alpha (and svd_mode) or a PerturbationEdit, not both")
        alpha = edit.alpha
    alpha = torch.zeros(B) if alpha is None else torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
    if alpha.shape != (B,):
        raise ValueError(f"alpha must have one value per sample ({B}), got shape {tuple(alpha.shape)}")
    edit = edit if edit is not None else PerturbationEdit(alpha, svd_mode)
    any_edit = bool((alpha != 0).any())
    x = x_t
    with hook(model, edit=edit):
        for i in reversed(range(spaced.num_timesteps)):
            edit.active = any_edit and spaced.timestep_map[i] >= t_edit
            t = torch.full((B,), i, device=x.device, dtype=torch.long)
            with keep_global_rng(x.device):
                x = spaced.ddim_sample(model, x, t, clip_denoised=True, eta=0.0)["sample"]
    return x


# ----------------------------------------------------------------------------------------------------------
# Features and distances
# ----------------------------------------------------------------------------------------------------------
class ResNetFeatures(nn.Module):
    """Frozen ResNet50 penultimate features: ``[0, 1] NCHW float`` -> ``[N, 2048]``.

    Inputs are resized to ``size`` x ``size`` (bilinear, antialiased) and ImageNet-normalised."""

    def __init__(self, backbone: nn.Module, size: int = 224) -> None:
        super().__init__()
        if hasattr(backbone, "fc"):
            backbone.fc = nn.Identity()
        self.backbone = backbone
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [0, 1] NCHW images with 3 channels, got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)
        return self.backbone((x - self.mean) / self.std).flatten(1)


def build_feature_extractor(weights: str = "imagenet", size: int = 224, device="cpu",
                            init_seed: int = 0) -> ResNetFeatures:
    """ResNet50 feature extractor via ``classifiers.build_backbone("resnet50", weights)``, fc -> Identity.

    ``weights``: "imagenet" (torchvision enum; offline it must be in the torch hub cache), a path to a state
    dict (e.g. resnet50-0676ba61.pth), or "none" (random init drawn from ``init_seed``: quick mode only --
    distances then say nothing about semantics)."""
    from classifiers import build_backbone

    w = str(weights)
    if w not in ("imagenet", "none") and not Path(w).is_file():
        raise FileNotFoundError(
            f"ResNet50 weights file not found: {w}. Expected an ImageNet state dict such as {RESNET50_FILE} "
            f"(download it on a connected machine from {RESNET50_URL}) and pass --weights PATH."
        )
    with torch.random.fork_rng(devices=[]):  # torchvision's init draws from the global RNG
        torch.manual_seed(int(init_seed))
        net = build_backbone("resnet50", weights=w)
    if w == "none":
        log.warning("!!! ResNet50 with RANDOM weights (--weights none): the feature distances measure a random "
                    "network, not ImageNet semantics. Use --weights PATH for the real study. !!!")
    return ResNetFeatures(net, size=size).to(device)


def _check_features(features) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 3 or features.shape[1] < 2:
        raise ValueError(f"features must be [N, 1+K, D] with K >= 1, got {getattr(features, 'shape', features)}")
    return features.double()


def feature_distances(features: torch.Tensor) -> torch.Tensor:
    """L2 distances of levels 1..K to level 0: ``features`` [N, 1+K, D] -> [N, K] (float64)."""
    f = _check_features(features)
    return torch.linalg.vector_norm(f[:, 1:] - f[:, :1], dim=-1)


def feature_distance_metrics(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """Distances of levels 1..K to level 0, each [N, K] float64, keyed as the columns of distances.csv:

    ``distance``: L2 ||f_k - f_0|| (`feature_distances`); ``cosine_distance``: 1 - cos(f_k, f_0), in [0, 2];
    ``relative_distance``: ||f_k - f_0|| / ||f_0||, the L2 in units of the unperturbed feature norm (a group
    whose features are smaller overall cannot look "more stable" by that alone). Where ||f_0|| (or ||f_k|| for
    the cosine) is 0 the ratio is undefined: NaN."""
    f = _check_features(features)
    ref, lev = f[:, :1], f[:, 1:]
    l2 = torch.linalg.vector_norm(lev - ref, dim=-1)
    n_ref = torch.linalg.vector_norm(ref, dim=-1)                 # [N, 1]
    n_lev = torch.linalg.vector_norm(lev, dim=-1)                 # [N, K]
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    denom = n_ref * n_lev
    cos = torch.where(denom > 0, (lev * ref).sum(-1) / torch.where(denom > 0, denom, 1.0), nan)
    rel = torch.where(n_ref > 0, l2 / torch.where(n_ref > 0, n_ref, 1.0), nan)
    return {"distance": l2, "cosine_distance": (1.0 - cos).clamp(0.0, 2.0), "relative_distance": rel}


# ----------------------------------------------------------------------------------------------------------
# Image groups
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageItem:
    """One image of a group: ``key`` identifies the same image across groups (the CUB image id, or the path
    relative to an image folder without suffix)."""

    key: str
    path: Path


def list_group_images(source: str | Path, split: str = "test") -> list[ImageItem]:
    """The images of a group: a CUB root (``images.txt`` present; ``split`` of it) or a folder of images
    (recursive, sorted)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"image group not found: {source} (expected a CUB root or a folder of images)")
    if (source / "images.txt").is_file():
        idx = read_cub(source)
        return [ImageItem(str(r.image_id), idx.image_path(r)) for r in idx.split(split)]
    if source.is_file():
        raise ValueError(f"image group must be a folder (CUB root or image folder), got the file {source}")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {source}")
    return [ImageItem(p.relative_to(source).with_suffix("").as_posix(), p) for p in files]


#: Paired groups must match at least this fraction of the images asked for (all: of the largest group).
MIN_MATCHED_FRACTION = 0.5


def _matched_keys(groups: Mapping[str, Sequence[ImageItem]]) -> tuple[list[str], dict[str, list[str]]]:
    """(keys present in every group, in the first group's order; {group: its keys missing from another group})."""
    names = list(groups)
    common = set.intersection(*({it.key for it in groups[g]} for g in names))
    shared = [it.key for it in groups[names[0]] if it.key in common]
    dropped = {g: [it.key for it in groups[g] if it.key not in common] for g in names}
    return shared, {g: keys for g, keys in dropped.items() if keys}


def select_images(groups: Mapping[str, Sequence[ImageItem]], n: int | None, seed: int = 0, *,
                  paired: bool = True) -> dict[str, list[ImageItem]]:
    """Pick ``n`` images per group (all if ``n`` is None or <= 0).

    ``paired`` (the default; the Wilcoxon tests compare the same image across groups): the same keys in every
    group, a seeded random subset of the keys present in all groups (in the first group's order). Images that
    some group lacks are dropped with a warning that names them; fewer matched images than
    `MIN_MATCHED_FRACTION` of the number asked for (all: of the largest group), or none, is a ValueError.
    ``paired=False`` (unpaired tests): the shared keys when there are at least ``n``, otherwise a seeded subset
    of each group on its own."""
    rng = np.random.default_rng(int(seed))
    names = list(groups)
    if not names:
        raise ValueError("no image groups given")
    want = None if n is None or n <= 0 else int(n)
    shared, dropped = _matched_keys(groups)
    if paired and len(names) > 1:
        _check_matched(groups, shared, dropped, want)
    if shared and (want is None or len(shared) >= want or paired):
        keep = set(shared) if want is None or len(shared) < want else \
            set(rng.choice(shared, size=want, replace=False).tolist())
        return {g: [it for it in groups[g] if it.key in keep] for g in names}
    log.info("groups share %d image keys (< %s): picking images per group independently", len(shared), want)
    out = {}
    for g in names:
        items = list(groups[g])
        if want is None or len(items) <= want:
            out[g] = items
        else:
            pick = set(rng.choice(len(items), size=want, replace=False).tolist())
            out[g] = [it for i, it in enumerate(items) if i in pick]
    return out


def _check_matched(groups: Mapping[str, Sequence[ImageItem]], shared: Sequence[str],
                   dropped: Mapping[str, Sequence[str]], want: int | None) -> None:
    """Say how many images matched across the groups and which were dropped; refuse too few (see select_images)."""
    largest = max(len(items) for items in groups.values())
    reference = largest if want is None else min(want, largest)
    sizes = ", ".join(f"{g!r} {len(items)}" for g, items in groups.items())
    if not shared:
        raise ValueError(
            f"the image groups share no image ({sizes} images): the paired study needs the same images in every "
            "group (CUB roots: the same image ids; folders: the same relative paths); use --test mann-whitney "
            "for unpaired groups"
        )
    examples = "; ".join(f"{g!r}: {len(keys)} not in every group, e.g. {keys[:5]}" for g, keys in dropped.items())
    if len(shared) < MIN_MATCHED_FRACTION * reference:
        asked = "available" if want is None or want > largest else "requested"
        raise ValueError(
            f"only {len(shared)} of {reference} {asked} images are present in every group ({sizes} images; "
            f"{examples}): give the groups the same images (same CUB image ids or relative paths)"
        )
    if dropped:
        log.warning("h-space groups: %d of %d images matched across %d groups; dropped the images not in every "
                    "group: %s", len(shared), largest, len(groups), examples)


def _to_uint8(img01: torch.Tensor) -> np.ndarray:
    """[0, 1] CHW -> uint8 HxWx3."""
    return (img01.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()).copy()


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")
    return s or "x"


def _image_seed(seed: int, key: str) -> int:
    """Seed of the q_sample noise of one image: depends on (seed, image key) only, so the same image gets the
    same noise in every group and every run."""
    return (int(seed) * 1_000_003 + zlib.crc32(str(key).encode("utf-8"))) % (2**63 - 1)


# ----------------------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------------------
@dataclass
class HSpaceConfig:
    """The protocol. Defaults are the paper-mode defaults (README: "h-space study")."""

    t0: int = 500                 # start timestep (of 1000)
    steps: int = 50               # DDIM timesteps in [0, t0]
    t_edit: int = 200             # h is edited at steps with t >= t_edit
    alphas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)  # levels 1..K: s1 -> (1 + alpha_k) s1
    svd_mode: str = "sample"      # "sample" (per-sample SVD) | "batch-svd" (batch PCA; alias "batch-pca")
    start: str = "noise"          # "noise" (seeded q_sample) | "ddim-inversion"
    seed: int = 0
    images_per_group: int = 32    # <= 0: every image
    split: str = "test"           # split of CUB-root groups
    batch_images: int = 1         # images per UNet batch (each brings 1 + K samples)
    grid_images: int = 3          # images per group kept for the level grid

    def __post_init__(self) -> None:
        self.alphas = make_alphas(alphas=self.alphas)
        self.svd_mode = resolve_svd_mode(self.svd_mode)
        if self.start not in START_MODES:
            raise ValueError(f"unknown start {self.start!r}; valid: {', '.join(START_MODES)}")
        if not 0 <= int(self.t_edit) <= int(self.t0):
            raise ValueError(f"t_edit must be in 0..t0={self.t0}, got {self.t_edit}")
        if int(self.batch_images) < 1:
            raise ValueError(f"batch_images must be >= 1, got {self.batch_images}")
        if self.svd_mode == "batch-svd" and int(self.batch_images) < 2:
            raise ValueError("--svd-mode batch-svd needs --batch-images >= 2 (the PCA runs over a batch's images)")

    @property
    def levels(self) -> int:
        return len(self.alphas)

    def protocol(self) -> dict:
        """What determines the numbers (used to decide whether a manifest can be resumed)."""
        d = asdict(self)
        for k in ("batch_images", "grid_images"):
            d.pop(k)
        d["alphas"] = list(self.alphas)
        return d


@dataclass
class HSpaceResult:
    """``rows``: one dict per (group, image, level >= 1): group, image_id, level, alpha, distance, path,
    cosine_distance, relative_distance (`feature_distance_metrics`), dh_norm, dh_rel (`PerturbationEdit`).
    ``grid``: group -> list of (image_id, uint8 HxWx3 input, [uint8 HxWx3 generation of level 0..K]).
    ``seconds_per_image``: mean wall time per image (start latent + generation + features)."""

    rows: list[dict]
    grid: dict[str, list[tuple[str, np.ndarray, list[np.ndarray]]]]
    seconds_per_image: float
    config: HSpaceConfig
    groups: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    unet_evals_per_image: int = 0


def _manifest_load(path: Path, fingerprint: dict) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable manifest %s: %s", path, err)
        return {}
    if data.get("fingerprint") != fingerprint:
        log.warning("manifest %s was written with another protocol/prior/groups: recomputing everything", path)
        return {}
    return data.get("done", {})


def _grid_dir(out: Path, group: str, key: str) -> Path:
    return out / "generations" / _slug(group) / _slug(key)


def _read_grid_item(folder: Path, levels: int):
    from cubdata import load_rgb

    files = [folder / "input.png"] + [folder / f"level{k}.png" for k in range(levels + 1)]
    if not all(f.is_file() for f in files):
        return None
    imgs = [load_rgb(f) for f in files]
    return imgs[0], imgs[1:]


def _plan_study(groups: Mapping[str, str | Path], config: HSpaceConfig, size: int, provenance: Mapping | None,
                paired: bool, out: Path | None, cached: dict) -> tuple[dict, dict, dict, dict]:
    """What a run has to do, decided once (rank 0 under torchrun) before anything is generated: pick the images
    (`select_images`), decode every one, read what an earlier run finished (out/manifest.json, when its
    fingerprint matches). Returns ``(chosen, fingerprint, done, todo)``: ``done`` the manifest's records,
    ``todo`` group -> [(selection index, ImageItem)] still to compute (finished images whose grid PNGs are
    missing are redone). The grid images read back are added to ``cached`` (group -> [grid entries])."""
    items = {g: list_group_images(src, config.split) for g, src in groups.items()}
    chosen = select_images(items, config.images_per_group, config.seed, paired=paired)
    for it in dict.fromkeys(it for picked in chosen.values() for it in picked):
        load_pil_rgb(it.path)  # ImageDecodeError names the file, before hours of generation
    fingerprint = {"protocol": config.protocol(), "image_size": size, "record": list(_RECORD_FIELDS),
                   "groups": {g: [str(Path(src))] + [it.key for it in chosen[g]] for g, src in groups.items()},
                   "provenance": dict(provenance or {})}
    done: dict = _manifest_load(out / "manifest.json", fingerprint) if out is not None else {}
    todo: dict[str, list[tuple[int, ImageItem]]] = {}
    for g in groups:
        todo[g] = []
        for i, it in enumerate(chosen[g]):
            rec = done.get(g, {}).get(it.key)
            need_grid = i < config.grid_images
            cached_grid = _read_grid_item(_grid_dir(out, g, it.key), config.levels) if (rec and need_grid and out) else None
            if rec and (not need_grid or cached_grid is not None):
                if cached_grid is not None:
                    cached.setdefault(g, []).append((it.key, cached_grid[0], cached_grid[1]))
            else:
                todo[g].append((i, it))
    return chosen, fingerprint, done, todo


def _study_batch(model: nn.Module, spaced, extractor: nn.Module, batch: Sequence[tuple[int, ImageItem]],
                 config: HSpaceConfig, size: int, hook=None) -> list[tuple[str, dict, tuple | None]]:
    """Steps 1-5 of the study for one batch of images of one group (each with 1 + K samples in one UNet batch).
    Returns per image ``(key, manifest record, grid entry or None)``; the grid entry ``(key, uint8 HxWx3 input,
    [uint8 HxWx3 generation of level 0..K])`` only for selection indices < ``config.grid_images``."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    K = config.levels
    alphas = torch.tensor((0.0,) + config.alphas, dtype=torch.float32)
    t_start = time.perf_counter()
    x0 = torch.stack([load_image_tensor(it.path, size) for _, it in batch]).to(device, dtype)
    x0 = x0 * 2 - 1
    if config.start == "noise":  # each image's own noise: the same whatever batch or process it lands in
        lat = []
        for j, (_, it) in enumerate(batch):
            gen = torch.Generator().manual_seed(_image_seed(config.seed, it.key))
            lat.append(start_latent(model, spaced, x0[j:j + 1], "noise", gen))
        x_t = torch.cat(lat)
    else:
        x_t = start_latent(model, spaced, x0, "ddim-inversion")
    n = len(batch)
    x_rep = x_t.repeat_interleave(K + 1, dim=0)            # [n*(1+K)], image-major, level-minor
    edit = PerturbationEdit(alphas.repeat(n), config.svd_mode)
    gen_x = ddim_generate(model, spaced, x_rep, t_edit=config.t_edit, hook=hook, edit=edit)
    gen01 = ((gen_x.float() + 1) / 2).clamp(0, 1)
    with torch.no_grad():
        feats = extractor(gen01.to(next(extractor.parameters()).device)).reshape(n, K + 1, -1)
    per_level = {k: v.cpu() for k, v in feature_distance_metrics(feats).items()}
    per_level.update(dh_norm=edit.dh_norm.reshape(n, K + 1)[:, 1:], dh_rel=edit.dh_rel.reshape(n, K + 1)[:, 1:])
    per_image = (time.perf_counter() - t_start) / n
    results = []
    for j, (i, it) in enumerate(batch):
        rec = {"distances": [float(v) for v in per_level["distance"][j]], "seconds": per_image}
        rec.update({name: [float(v) for v in per_level[name][j]] for name in _RECORD_FIELDS})
        entry = None
        if i < config.grid_images:
            entry = (it.key, _to_uint8((x0[j].float() + 1) / 2),
                     [_to_uint8(gen01[j * (K + 1) + k]) for k in range(K + 1)])
        results.append((it.key, rec, entry))
    return results


def run_hspace_study(groups: Mapping[str, str | Path], model: nn.Module, diffusion, extractor: nn.Module,
                     config: HSpaceConfig | None = None, out: str | Path | None = None,
                     provenance: Mapping | None = None, progress: bool = True, hook=None,
                     paired: bool = True) -> HSpaceResult:
    """Run the perturbation study over ``groups`` (name -> CUB root or image folder).

    ``paired`` (for the paired Wilcoxon tests): every group must hold the same images (see `select_images`,
    which warns about images some group lacks and refuses too few matches); False for unpaired groups. Every
    selected image is decoded once before anything is generated, so an unreadable file fails at once.

    ``model``/``diffusion``: the prior (``diffloss.load_adm``); images are sized to ``model.image_size``.
    ``extractor``: [0, 1] NCHW -> [N, D] features (`build_feature_extractor`). With ``out`` a manifest
    (out/manifest.json) records finished images and the grid images are saved under out/generations, so a
    re-run with the same protocol skips finished work. Returns an `HSpaceResult`.

    Under ``torchrun --nproc_per_node N`` (every rank holding the prior and the extractor on its own device):
    rank 0 plans the run (`_plan_study`); the batches of ``config.batch_images`` images (within a group, in
    selection order: the batches of one process) are dealt out round-robin, batch b to rank b mod N, so every
    image is computed in the same batch as on one process. After each round of N batches the records are
    gathered; rank 0 alone writes the grid PNGs and the manifest, so an interrupted run resumes (with any number
    of processes) from the last round. Every rank returns the same rows; ``grid`` is filled on rank 0 only."""
    from tqdm.auto import tqdm

    config = config or HSpaceConfig()
    size = int(getattr(model, "image_size", 0) or 0)
    if size <= 0:
        raise ValueError("the prior model has no image_size attribute; build it with diffloss.load_adm")
    timesteps = ddim_schedule(config.t0, config.steps, int(diffusion.num_timesteps))
    spaced = spaced_diffusion(diffusion, timesteps)
    K = config.levels
    out = Path(out) if out is not None else None
    with distributed(str(next(model.parameters()).device)) as (rank, world, _):
        cached: dict = {}  # rank 0: the grid images of finished images, read back
        chosen, fingerprint, done, todo = on_rank0(
            lambda: _plan_study(groups, config, size, provenance, paired, out, cached), rank, world)
        pending = {(g, it.key) for g, batch in todo.items() for _, it in batch}
        seconds = [float(done[g][it.key]["seconds"]) for g in groups for it in chosen[g] if (g, it.key) not in pending]
        grid: dict[str, list] = {g: list(cached.get(g, [])) for g in groups}
        batches = [(g, todo[g][s:s + config.batch_images]) for g in groups
                   for s in range(0, len(todo[g]), config.batch_images)]
        mine = shard(batches, rank, world)
        n_total = sum(len(v) for v in chosen.values())
        bar = tqdm(total=n_total, initial=n_total - len(pending), desc="h-space study", unit="img",
                   disable=not progress or rank != 0)
        try:
            for r in range(-(-len(batches) // world)):
                def my_batch(r=r) -> tuple[str, list] | None:  # None: this rank has no batch in the last round
                    if r >= len(mine):
                        return None
                    g, batch = mine[r]
                    return g, _study_batch(model, spaced, extractor, batch, config, size, hook)

                # round r holds batches r*N .. r*N + N-1, gathered in rank order: the order of one process
                new = [part for part in gather_checked(my_batch, rank, world) if part is not None]
                for g, results in new:
                    for key, rec, entry in results:
                        done.setdefault(g, {})[key] = rec
                        seconds.append(float(rec["seconds"]))
                        if entry is not None and rank == 0:
                            grid[g].append(entry)
                if out is not None:
                    on_rank0(lambda new=new: _save_round(out, new, fingerprint, done), rank, world)  # rank 0 writes
                bar.update(sum(len(results) for _, results in new))
        finally:
            bar.close()
    rows: list[dict] = []
    for g in groups:  # rows in selection order (stable whatever was resumed, and on any number of processes)
        for it in chosen[g]:
            rec = done[g][it.key]
            for k, d in enumerate(rec["distances"], start=1):
                rows.append({"group": g, "image_id": it.key, "level": k, "alpha": config.alphas[k - 1],
                             "distance": float(d), "path": str(it.path),
                             **{name: float(rec[name][k - 1]) for name in _RECORD_FIELDS}})
        order = {it.key: i for i, it in enumerate(chosen[g])}
        grid[g].sort(key=lambda e: order[e[0]])
    evals = len(timesteps) * (K + 1) + (len(timesteps) - 1 if config.start == "ddim-inversion" else 0)
    return HSpaceResult(rows=rows, grid=grid, seconds_per_image=float(np.mean(seconds)) if seconds else float("nan"),
                        config=config, groups={g: str(s) for g, s in groups.items()},
                        provenance=dict(provenance or {}), unet_evals_per_image=evals)


def _save_round(out: Path, new: Sequence[tuple[str, list]], fingerprint: dict, done: dict) -> None:
    """Write the grid PNGs of a round's new images, then the manifest with everything done so far."""
    for g, results in new:
        for key, _, entry in results:
            if entry is not None:
                folder = _grid_dir(out, g, key)
                atomic_write_bytes(folder / "input.png", encode_image(entry[1], "png"))
                for k, im in enumerate(entry[2]):
                    atomic_write_bytes(folder / f"level{k}.png", encode_image(im, "png"))
    atomic_write_text(out / "manifest.json", json.dumps({"fingerprint": fingerprint, "done": done}, indent=1))



# ----------------------------------------------------------------------------------------------------------
# Statistics and files
# ----------------------------------------------------------------------------------------------------------
def _group_order(rows: Sequence[Mapping]) -> list[str]:
    return list(dict.fromkeys(r["group"] for r in rows))


#: Extra per-(group, level) columns of `summarize_distances`: (summary column, row key, statistic).
_SUMMARY_EXTRAS = (("cosine_mean", "cosine_distance", np.nanmean), ("cosine_median", "cosine_distance", np.nanmedian),
                   ("relative_mean", "relative_distance", np.nanmean),
                   ("relative_median", "relative_distance", np.nanmedian),
                   ("dh_norm_mean", "dh_norm", np.mean), ("dh_rel_mean", "dh_rel", np.mean))


def summarize_distances(rows: Sequence[Mapping]) -> list[dict]:
    """Per (group, level): n, mean, std (ddof 1), median, q25, q75, min, max of the L2 distances; where the
    rows carry them, also cosine_mean/median, relative_mean/median (NaNs ignored) and dh_norm_mean,
    dh_rel_mean (the mean size of the h-space edit, absolute and relative to ||h||)."""
    out = []
    for g in _group_order(rows):
        for level in sorted({int(r["level"]) for r in rows if r["group"] == g}):
            sel = [r for r in rows if r["group"] == g and int(r["level"]) == level]
            d = np.array([float(r["distance"]) for r in sel])
            row = {"group": g, "level": level, "alpha": float(sel[0]["alpha"]), "n": int(d.size),
                   "mean": float(d.mean()), "std": float(d.std(ddof=1)) if d.size > 1 else float("nan"),
                   "median": float(np.median(d)), "q25": float(np.quantile(d, 0.25)),
                   "q75": float(np.quantile(d, 0.75)), "min": float(d.min()), "max": float(d.max())}
            for col, key, stat in _SUMMARY_EXTRAS:
                if all(key in r for r in sel):
                    v = np.array([float(r[key]) for r in sel])
                    row[col] = float(stat(v)) if not np.isnan(v).all() else float("nan")
            out.append(row)
    return out


def _metrics_in(rows: Sequence[Mapping]) -> tuple[str, ...]:
    return tuple(m for m in METRICS if rows and all(m in r for r in rows))


def _per_level(rows: Sequence[Mapping], metric: str) -> dict[int, dict[str, dict[str, float]]]:
    """level -> group -> image_id -> value of ``metric`` (an image listed twice in a group is an error)."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    for r in rows:
        if metric not in r:
            raise ValueError(f"the rows have no {metric!r} column; metrics present: {_metrics_in(rows)}")
        per = out.setdefault(int(r["level"]), {}).setdefault(r["group"], {})
        key = str(r["image_id"])
        if key in per:
            raise ValueError(f"image {key!r} appears twice in group {r['group']!r} at level {r['level']}")
        per[key] = float(r[metric])
    return out


def mann_whitney_tests(rows: Sequence[Mapping], alternative: str = "two-sided", metric: str = "distance") -> list[dict]:
    """Mann-Whitney U (``scipy.stats.mannwhitneyu``, unpaired) of ``metric`` between every pair of groups at
    every level, over all images of each group.

    ``u_statistic`` is U of group_a; ``p_value`` for ``alternative`` ("two-sided", "less", "greater": the
    distances of group_a tend to be smaller / larger). The study's groups are paired (same images, same
    noise): `wilcoxon_tests` is the test that uses it."""
    from scipy.stats import mannwhitneyu

    out = []
    groups = _group_order(rows)
    for level, per_group in sorted(_per_level(rows, metric).items()):
        per = {g: np.array(list(per_group.get(g, {}).values()), dtype=np.float64) for g in groups}
        for a, b in itertools.combinations(groups, 2):
            da, db = per[a], per[b]
            if da.size == 0 or db.size == 0:
                continue
            res = mannwhitneyu(da, db, alternative=alternative)
            out.append({"level": level, "group_a": a, "group_b": b, "n_a": int(da.size), "n_b": int(db.size),
                        "u_statistic": float(res.statistic), "p_value": float(res.pvalue),
                        "median_a": float(np.median(da)), "median_b": float(np.median(db)),
                        "alternative": alternative, "metric": metric, "test": "mann-whitney"})
    return out


def wilcoxon_tests(rows: Sequence[Mapping], alternative: str = "two-sided", metric: str = "distance") -> list[dict]:
    """Wilcoxon signed-rank tests (``scipy.stats.wilcoxon``, its default method and zero handling) of ``metric``
    between every pair of groups at every level, paired by image: only images present in both groups count
    (``n_pairs``); the differences are group_a - group_b.

    ``statistic`` is scipy's (two-sided: min(W+, W-); one-sided: W+); ``p_value`` for ``alternative``
    ("greater": group_a's values tend to be larger on the same image). Identical values on every image give
    p = 1; no shared image gives n_pairs 0 and NaN (logged). ``median_a`` / ``median_b`` are over the pairs,
    ``median_diff`` the median of the differences."""
    from scipy.stats import wilcoxon

    out = []
    groups = _group_order(rows)
    for level, per_group in sorted(_per_level(rows, metric).items()):
        for a, b in itertools.combinations(groups, 2):
            va, vb = per_group.get(a, {}), per_group.get(b, {})
            if not va or not vb:
                continue
            keys = [k for k in va if k in vb]
            da = np.array([va[k] for k in keys], dtype=np.float64)
            db = np.array([vb[k] for k in keys], dtype=np.float64)
            row = {"level": level, "metric": metric, "group_a": a, "group_b": b, "n_pairs": len(keys),
                   "statistic": float("nan"), "p_value": float("nan"), "median_a": float("nan"),
                   "median_b": float("nan"), "median_diff": float("nan"), "alternative": alternative,
                   "test": "wilcoxon"}
            if not keys:
                log.warning("groups %r and %r share no image at level %d: no paired test (give the groups the same "
                            "images, or use --test mann-whitney)", a, b, level)
            else:
                diff = da - db
                if np.all(diff == 0):
                    stat, p = 0.0, 1.0
                else:
                    res = wilcoxon(da, db, alternative=alternative)
                    stat, p = float(res.statistic), float(res.pvalue)
                row.update(statistic=stat, p_value=p, median_a=float(np.median(da)), median_b=float(np.median(db)),
                           median_diff=float(np.median(diff)))
            out.append(row)
    return out


def group_tests(rows: Sequence[Mapping], test: str = "wilcoxon", metrics: Sequence[str] | None = None,
                alternative: str = "two-sided") -> list[dict]:
    """The tests between groups written by the study: ``test`` one of `TESTS` ("wilcoxon": paired by image,
    the default; "mann-whitney": unpaired), for each of ``metrics`` (default: those of `METRICS` the rows carry);
    rows ordered by level, then metric, then pair of groups."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; valid: {', '.join(TESTS)}")
    metrics = tuple(metrics) if metrics is not None else _metrics_in(rows)
    fn = wilcoxon_tests if test == "wilcoxon" else mann_whitney_tests
    order = {m: i for i, m in enumerate(metrics)}
    tests = [t for m in metrics for t in fn(rows, alternative=alternative, metric=m)]
    return sorted(tests, key=lambda t: (t["level"], order[t["metric"]]))  # stable: pairs keep their order


def write_csv(path: str | Path, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` (dicts) as CSV atomically; ``columns`` default to the first row's keys."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    return atomic_write_text(path, buf.getvalue())


#: Recorded per image and level beside the L2 ``distance`` (manifest and distances.csv).
_RECORD_FIELDS = ("cosine_distance", "relative_distance", "dh_norm", "dh_rel")
DISTANCE_COLUMNS = ("group", "image_id", "level", "alpha", "distance", "path") + _RECORD_FIELDS
WILCOXON_COLUMNS = ("level", "metric", "group_a", "group_b", "n_pairs", "statistic", "p_value", "median_a",
                    "median_b", "median_diff", "alternative", "test")
MANN_WHITNEY_COLUMNS = ("level", "group_a", "group_b", "n_a", "n_b", "u_statistic", "p_value", "median_a",
                        "median_b", "alternative", "metric", "test")


def read_distances(out_dir: str | Path) -> list[dict]:
    """Read ``distances.csv`` of a study folder back (level int; alpha, distance and the extra metrics float;
    extra metrics missing from older files, or empty, are left out of the row)."""
    path = Path(out_dir) / "distances.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python -m analysis.hspace --out {out_dir}` first")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["level"] = int(r["level"])
        r["alpha"] = float(r["alpha"])
        r["distance"] = float(r["distance"])
        for name in _RECORD_FIELDS:
            if r.get(name) in (None, ""):
                r.pop(name, None)
            else:
                r[name] = float(r[name])
    return rows


def load_grid(out_dir: str | Path) -> dict[str, list[tuple[str, np.ndarray, list[np.ndarray]]]]:
    """Read the grid images of a study folder back (the layout of `HSpaceResult.grid`)."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    levels = len(summary["protocol"]["alphas"])
    grid = {}
    for g, keys in summary["grid_images"].items():
        grid[g] = []
        for key in keys:
            item = _read_grid_item(_grid_dir(out_dir, g, key), levels)
            if item is not None:
                grid[g].append((key, item[0], item[1]))
    return grid


def write_study_outputs(result: HSpaceResult, out: str | Path, test: str = "wilcoxon",
                        figures: bool = True) -> dict[str, Path]:
    """Write distances.csv, summary.csv, the tests between groups (`group_tests` with ``test``: wilcoxon.csv or
    mannwhitney.csv, its path under key ``"tests"``), summary.json and, with ``figures``, the figures (PNG + PDF)."""
    import matplotlib.pyplot as plt  # headless: matplotlib falls back to Agg by itself

    from analysis.hspace_plots import plot_distance_histograms, plot_histogram_overlay, plot_level_grid, save_figure

    out = Path(out)
    paths = {"distances": write_csv(out / "distances.csv", result.rows, DISTANCE_COLUMNS)}
    summary = summarize_distances(result.rows)
    paths["summary_csv"] = write_csv(out / "summary.csv", summary)
    tests = group_tests(result.rows, test=test)
    name, columns = (("wilcoxon.csv", WILCOXON_COLUMNS) if test == "wilcoxon"
                     else ("mannwhitney.csv", MANN_WHITNEY_COLUMNS))
    paths["tests"] = write_csv(out / name, tests, columns)
    info = {"protocol": result.config.protocol(), "groups": result.groups, "provenance": result.provenance,
            "seconds_per_image": result.seconds_per_image, "unet_evals_per_image": result.unet_evals_per_image,
            "grid_images": {g: [e[0] for e in items] for g, items in result.grid.items()},
            "summary": summary, "test": test, "group_tests": tests}
    paths["summary_json"] = atomic_write_text(out / "summary.json", json.dumps(info, indent=1))
    if not figures:
        return paths
    alphas = result.config.alphas
    fig = plot_distance_histograms(result.rows, alphas=alphas)
    paths["histograms"] = save_figure(fig, out / "histograms")[0]
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    plot_histogram_overlay(result.rows, ax=ax, level=result.config.levels)
    paths["histogram_overlay"] = save_figure(fig, out / "histogram_overlay")[0]
    plt.close(fig)
    if any(result.grid.values()):
        fig = plot_level_grid(result.grid, alphas=alphas)
        paths["grid"] = save_figure(fig, out / "grid")[0]
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------------------
# Quick mode and the entry points
# ----------------------------------------------------------------------------------------------------------
#: quick mode's defaults (the built-in prior on mini-CUB, `analysis.demo.hspace_quick`)
QUICK_DEFAULTS = dict(steps=25, images_per_group=4, grid_images=2, batch_images=4, feature_size=64)


def run(out: str | Path, *, quick: bool = False, groups: Mapping[str, str | Path] | None = None,
        prior: str | Path | None = None, prior_config: str | None = None, weights: str | None = None,
        feature_size: int | None = None, device: str = "auto", config: HSpaceConfig | None = None,
        quick_corruption: str = "lowlight", quick_severity: int = 3, quick_restored: bool = True,
        threads: int | None = None, progress: bool = True, test: str = "wilcoxon") -> HSpaceResult:
    """The whole study as the CLI runs it: load the prior and ResNet50, build the quick-mode groups if asked,
    run, write every output into ``out``. Returns the `HSpaceResult`.

    Paper mode (``quick=False``) needs ``prior`` (the ADM-256 checkpoint), ``groups`` and ResNet50 ImageNet
    weights (``weights`` "imagenet" from the torch cache or a path); quick mode uses the built-in trained prior,
    a random ResNet50 unless ``weights`` is given, and mini-CUB groups. ``threads``: torch CPU threads for the
    run (restored afterwards); None: 1 in quick mode (small models on a shared CPU run several times faster
    single-threaded, measured), torch's default otherwise. ``test``: the tests between groups (`group_tests`)."""
    if threads is None and quick:
        threads = 1
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run(out, quick=quick, groups=groups, prior=prior, prior_config=prior_config, weights=weights,
                    feature_size=feature_size, device=device, config=config, quick_corruption=quick_corruption,
                    quick_severity=quick_severity, quick_restored=quick_restored, progress=progress, test=test)
    finally:
        torch.set_num_threads(old_threads)


def _run(out, *, quick, groups, prior, prior_config, weights, feature_size, device, config, quick_corruption,
         quick_severity, quick_restored, progress, test="wilcoxon") -> HSpaceResult:
    from classifiers.predict import resolve_device

    out = Path(out)
    config = config or HSpaceConfig()
    dev = resolve_device(device)
    if quick:
        weights = "none" if weights is None else weights
        prior = "builtin" if prior is None else prior
        feature_size = feature_size or QUICK_DEFAULTS["feature_size"]
    else:
        weights = "imagenet" if weights is None else weights
        feature_size = feature_size or 224
        if prior is None:
            raise ValueError(
                f"paper mode needs --prior PATH to the ADM-256 unconditional checkpoint {PRIOR_FILE} "
                f"(from openai/guided-diffusion: {PRIOR_URL}), or a prior.pt of diffloss.train_prior; or run --quick"
            )
        if not groups:
            raise ValueError("paper mode needs at least one --group NAME=CUB_ROOT_OR_FOLDER (or run --quick)")
    from diffloss.prior import load_prior, resolve_prior_spec

    resolve_prior_spec(prior)  # a missing file fails here, before anything is built
    if groups:
        for g, src in groups.items():
            if not Path(src).exists():
                raise FileNotFoundError(f"group {g!r}: {src} does not exist (expected a CUB root or an image folder)")

    if quick and not groups and env_world() > 1:
        raise ValueError(
            "--quick builds its groups (degraded copies, demo restorers) in one process and does not run under "
            "torchrun: run it once without torchrun, then pass the groups it made under OUT/data with --group "
            "NAME=PATH to the torchrun run"
        )
    # under torchrun every rank loads the prior and the extractor on its own device (its LOCAL_RANK GPU)
    with distributed(str(dev)) as (rank, world, rank_dev):
        extractor = build_feature_extractor(weights, size=feature_size, device=rank_dev, init_seed=config.seed)
        model, diffusion = load_prior(prior, config=prior_config, device=str(rank_dev))
        prior_config = model.prior_info["config"]
        if quick and not groups:
            from .demo.hspace_quick import quick_groups

            groups = quick_groups(out / "data", quick_corruption, quick_severity, restored=quick_restored,
                                  n_images=config.images_per_group, seed=config.seed, split=config.split)
        # the device asked for, not the rank's: the manifest resumes whatever the number of processes
        provenance = {"prior": str(prior) if prior else None, "prior_config": prior_config, "weights": str(weights),
                      "feature_size": int(feature_size), "quick": bool(quick), "device": str(dev)}
        result = run_hspace_study(groups, model, diffusion, extractor, config, out=out, provenance=provenance,
                                  progress=progress, paired=test == "wilcoxon")
        on_rank0(lambda: write_study_outputs(result, out, test=test), rank, world)  # rank 0 alone writes
    return result


def _parse_group(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"--group expects NAME=PATH (e.g. clean=data/CUB_200_2011), got {text!r}")
    return name.strip(), path.strip()


def _svd_mode_arg(text: str) -> str:
    """argparse type of --svd-mode: a deprecated alias becomes its new name (choices then check the rest)."""
    return resolve_svd_mode(text) if text in SVD_MODE_ALIASES else text


def _parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    try:
        from diffloss.prior import PRIOR_CONFIGS

        prior_choices = sorted(PRIOR_CONFIGS)
    except ImportError:  # keep --help working while diffloss is incomplete
        prior_choices = None
    try:
        from corruptions import get_corruption_names

        corruption_choices = list(get_corruption_names())
    except ImportError:
        corruption_choices = None
    from cubdata.cli import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m analysis.hspace", description=__doc__, formatter_class=HelpFormatter)
    d = HSpaceConfig()
    p.add_argument("--out", default="runs/hspace", help="output folder (resumable)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the built-in trained 64 px prior, random ResNet50, mini-CUB clean/degraded/restored groups")
    p.add_argument("--prior", default=None,
                   help=f"the prior: a checkpoint ({PRIOR_FILE}, or a prior.pt of diffloss.train_prior), 'builtin' "
                        "(the trained mini-CUB prior; the --quick default) or 'random'; required in paper mode")
    p.add_argument("--prior-config", default=None, choices=prior_choices,
                   help="architecture of a bare guided-diffusion state dict (default adm256-uncond; a prior.pt "
                        "carries its own)")
    p.add_argument("--weights", default=None,
                   help=f"ResNet50 weights: 'imagenet' (torchvision, from the torch cache offline), a path "
                        f"({RESNET50_FILE}) or 'none' (random; quick mode default)")
    p.add_argument("--group", action="append", type=_parse_group, default=None, metavar="NAME=PATH",
                   help="an image group: a CUB root or an image folder; repeat (quick mode: built-in groups)")
    p.add_argument("--split", default=d.split, choices=("train", "test", "all"), help="split of CUB-root groups")
    p.add_argument("--images-per-group", type=int, default=None,
                   help=f"images per group, <= 0 for all (default {d.images_per_group}; "
                        f"{QUICK_DEFAULTS['images_per_group']} with --quick)")
    p.add_argument("--t0", type=int, default=d.t0, help="start timestep (of 1000): x_t0 from the image")
    p.add_argument("--steps", type=int, default=None,
                   help=f"DDIM timesteps in [0, t0] (default {d.steps}; {QUICK_DEFAULTS['steps']} with --quick)")
    p.add_argument("--t-edit", type=int, default=d.t_edit, help="edit h at the steps with t >= t_edit")
    p.add_argument("--levels", type=int, default=len(d.alphas), help="number of perturbation levels K")
    p.add_argument("--scale", type=float, default=d.alphas[0],
                   help="alpha_k = scale * k: the top singular value s1 becomes (1 + alpha_k) s1")
    p.add_argument("--alphas", type=_parse_floats, default=None,
                   help="explicit comma-separated alpha_1..alpha_K (overrides --levels/--scale)")
    p.add_argument("--svd-mode", default=d.svd_mode, choices=SVD_MODES, type=_svd_mode_arg,
                   help="sample: per-sample SVD of h (C x HW), the paper's edit; batch-svd: h moved along the first "
                        "principal component of the flattened h of the current batch's 2..--batch-size unperturbed "
                        "samples, recomputed at each edited step -- not Haas et al.'s global per-timestep direction "
                        "from a reference set, so results depend on how images are batched ('batch-pca' is a "
                        "deprecated alias)")
    p.add_argument("--test", default="wilcoxon", choices=TESTS,
                   help="test between groups per level and metric: wilcoxon (signed-rank, paired by image: the groups "
                        "hold the same images with the same noise) or mann-whitney (unpaired U)")
    p.add_argument("--start", default=d.start, choices=START_MODES,
                   help="how to reach x_t0: seeded q_sample noise or DDIM inversion")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the image selection and the q_sample noise")
    p.add_argument("--batch-size", dest="batch_images", type=int, default=None, metavar="BATCH_SIZE",
                   help=f"images per UNet batch, each with 1+K samples (default {d.batch_images}; "
                        f"{QUICK_DEFAULTS['batch_images']} with --quick)")
    p.add_argument("--batch-images", dest="batch_images", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the old spelling of --batch-size
    p.add_argument("--grid-images", type=int, default=None,
                   help=f"images per group in the level grid (default {d.grid_images}; "
                        f"{QUICK_DEFAULTS['grid_images']} with --quick)")
    p.add_argument("--feature-size", type=int, default=None,
                   help=f"ResNet50 input size (default 224; {QUICK_DEFAULTS['feature_size']} with --quick)")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads, 0: torch's choice (default: 1 with --quick, where it is faster on a "
                        "shared CPU; else torch's choice)")
    p.add_argument("--quick-corruption", default="lowlight", choices=corruption_choices, help="quick mode: the corruption of the degraded group")
    p.add_argument("--quick-severity", type=int, default=3, choices=range(1, 6), help="quick mode: its severity")
    p.add_argument("--no-restored", action="store_true",
                   help="quick mode: skip the restored groups (no demo restorer training)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def make_config(quick: bool = False, *, levels: int = 4, scale: float = 0.5,
                alphas: Sequence[float] | None = None, **overrides) -> HSpaceConfig:
    """An `HSpaceConfig` with the paper-mode defaults, or the quick-mode ones (`QUICK_DEFAULTS`) for
    ``quick``; ``overrides`` (HSpaceConfig fields) that are None keep the default. The alphas are
    ``make_alphas(levels, scale, alphas)``."""
    fields = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(fields) - set(HSpaceConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown protocol setting(s) {unknown}; valid: {sorted(HSpaceConfig.__dataclass_fields__)}")
    if quick:
        for k, v in QUICK_DEFAULTS.items():
            if k in HSpaceConfig.__dataclass_fields__:
                fields.setdefault(k, v)
    return HSpaceConfig(alphas=make_alphas(levels, scale, alphas), **fields)


def config_from_args(args: argparse.Namespace) -> HSpaceConfig:
    """The `HSpaceConfig` of parsed CLI arguments (quick-mode defaults where a flag was not given)."""
    return make_config(
        args.quick, levels=args.levels, scale=args.scale, alphas=args.alphas, t0=args.t0, steps=args.steps,
        t_edit=args.t_edit, svd_mode=args.svd_mode, start=args.start, seed=args.seed,
        images_per_group=args.images_per_group, split=args.split, batch_images=args.batch_images,
        grid_images=args.grid_images,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    groups = dict(args.group) if args.group else None
    if groups is not None and len(groups) != len(args.group):
        print("error: --group names must be unique", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
        result = run(args.out, quick=args.quick, groups=groups, prior=args.prior, prior_config=args.prior_config,
                     weights=args.weights, feature_size=args.feature_size, device=args.device, config=config,
                     quick_corruption=args.quick_corruption, quick_severity=args.quick_severity,
                     quick_restored=not args.no_restored, threads=args.threads, progress=not args.no_progress,
                     test=args.test)
    except (FileNotFoundError, ValueError, ImageDecodeError) as err:  # PriorCheckpointMismatch is a ValueError
        text = " ".join(str(err).split())  # one line, whatever the message holds
        if isinstance(err, ImageDecodeError):
            text += "; replace it with a readable image (or, in an image folder, remove it)"
        print(f"error: {text}", file=sys.stderr)
        return 2
    if env_rank() != 0:  # under torchrun rank 0 reports for all
        return 0
    print(f"h-space study: {len(result.rows)} distances, {len(result.groups)} groups, "
          f"{result.seconds_per_image:.2f} s/image ({result.unet_evals_per_image} UNet evaluations/image)")
    nan = float("nan")
    for s in summarize_distances(result.rows):
        print(f"  {s['group']:>14s} level {s['level']} (alpha {s['alpha']:g}): median {s['median']:.4g} "
              f"mean {s['mean']:.4g} (n={s['n']}); median cosine {s.get('cosine_median', nan):.3g}, relative "
              f"{s.get('relative_median', nan):.3g}; mean |dh| {s.get('dh_norm_mean', nan):.3g} "
              f"({s.get('dh_rel_mean', nan):.1%} of |h|)")
    print(f"tests between groups: {args.test} ({'wilcoxon' if args.test == 'wilcoxon' else 'mannwhitney'}.csv)")
    print(f"outputs in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
