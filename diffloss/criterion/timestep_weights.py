"""Timestep weightings of DiffLoss's ``nat`` and ``sem`` terms: one registry of ``fn(diffusion) -> weights[T]``.

``none`` is the paper's (uniform over t); ``alpha_bar`` trusts the comparison where the image dominates the
noise; ``min_snr`` is Min-SNR-5 (Hang et al. 2023). Add your own with ``@T_WEIGHTINGS.register("name")``, or
pass ``"pkg.module:fn"`` (or the function itself) as ``DiffLoss(t_weighting=...)``. Weights are rescaled to
mean 1 over the sampled ``t_range`` (:func:`timestep_weight_table`), so ``gamma`` keeps its meaning.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from runkit.registry import Registry

__all__ = ["T_WEIGHTINGS", "timestep_weight_table"]

#: name -> ``fn(diffusion) -> np.ndarray[T]`` (normalised later over ``t_range``).
T_WEIGHTINGS: Registry[Callable[[Any], np.ndarray]] = Registry("t_weighting", plugin=lambda spec, fn: fn)


@T_WEIGHTINGS.register("none")
def weights_none(diffusion: Any) -> np.ndarray:
    return np.ones(diffusion.num_timesteps, dtype=np.float64)


@T_WEIGHTINGS.register("alpha_bar")
def weights_alpha_bar(diffusion: Any) -> np.ndarray:
    # signal fraction abar_t: trust the comparison more where the image dominates the noise
    return np.asarray(diffusion.alphas_cumprod, dtype=np.float64)


@T_WEIGHTINGS.register("min_snr")
def weights_min_snr(diffusion: Any, cap: float = 5.0) -> np.ndarray:
    # Min-SNR-5 (Hang et al. 2023) for noise prediction: min(SNR, 5) / SNR, i.e. 1 at high noise,
    # down-weighting the nearly clean steps where small input changes dominate eps differences.
    abar = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
    snr = abar / (1.0 - abar)
    return np.minimum(snr, cap) / snr


def timestep_weight_table(
    diffusion: Any, scheme: str | Callable[[Any], Sequence[float]], t_range: tuple[int, int]
) -> np.ndarray:
    """Per-timestep weights [T] of ``nat`` and ``sem``, scaled so their mean over ``t_range`` is 1
    (so ``gamma`` keeps its meaning). ``scheme``: a :data:`T_WEIGHTINGS` name, ``"pkg.module:fn"`` or ``fn(diffusion)``."""
    if isinstance(scheme, str):
        table = T_WEIGHTINGS[scheme](diffusion)  # unknown: UnknownNameError listing the valid names
    elif callable(scheme):
        table = np.asarray(scheme(diffusion), dtype=np.float64)
    else:
        raise TypeError(f"t_weighting must be a name or a callable, got {type(scheme).__name__}")
    table = np.asarray(table, dtype=np.float64)
    if table.shape != (diffusion.num_timesteps,) or not np.all(np.isfinite(table)) or np.any(table < 0):
        raise ValueError(
            f"t_weighting must give {diffusion.num_timesteps} finite non-negative weights, got shape "
            f"{table.shape} with min {np.nanmin(table) if table.size else 'n/a'}"
        )
    lo, hi = t_range
    mean = table[lo:hi].mean()
    if mean <= 0:
        raise ValueError(f"t_weighting is zero on the whole t_range {t_range}")
    return table / mean
