"""DDIM over guided-diffusion: timestep schedules, respaced processes and deterministic sampling loops.

Plain functions of ``(model, diffusion, x)``, as k-diffusion's samplers; the model is any guided-diffusion
UNet (``diffloss.load_prior``). Used by the prior trainer's sample grids, the h-space study and the
naturalness report.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["ddim_schedule", "spaced_diffusion", "keep_global_rng", "ddim_sample_loop", "ddim_reconstruct"]


def ddim_schedule(t0: int, steps: int, num_timesteps: int = 1000) -> list[int]:
    """``steps`` timesteps evenly spaced in [0, t0] (rounded, ascending, first 0, last t0)."""
    t0, steps = int(t0), int(steps)
    if not 0 < t0 < num_timesteps:
        raise ValueError(f"t0 must be in 1..{num_timesteps - 1}, got {t0}")
    if not 1 <= steps <= t0 + 1:
        raise ValueError(f"steps must be in 1..t0+1={t0 + 1}, got {steps}")
    if steps == 1:
        return [t0]
    ts = sorted({int(v) for v in np.round(np.linspace(0, t0, steps))})
    if len(ts) != steps:  # cannot happen with spacing >= 1, kept as a guard
        raise ValueError(f"cannot space {steps} distinct timesteps in [0, {t0}]")
    return ts


def spaced_diffusion(diffusion, timesteps: Sequence[int]):
    """A guided-diffusion ``SpacedDiffusion`` keeping ``timesteps`` of the full process ``diffusion``.

    ``diffusion`` must be un-respaced (``load_prior`` returns the full 1000-step process)."""
    from guided_diffusion.respace import SpacedDiffusion

    tmap = getattr(diffusion, "timestep_map", None)
    n = int(diffusion.num_timesteps)
    if tmap is not None and list(tmap) != list(range(len(tmap))):
        raise ValueError(
            f"the diffusion is already respaced ({len(tmap)} of {getattr(diffusion, 'original_num_steps', '?')} "
            "steps); pass the full process (load_prior's, with no timestep_respacing)"
        )
    return SpacedDiffusion(
        use_timesteps=list(timesteps),
        betas=np.asarray(diffusion.betas, dtype=np.float64)[:n],
        model_mean_type=diffusion.model_mean_type,
        model_var_type=diffusion.model_var_type,
        loss_type=diffusion.loss_type,
        rescale_timesteps=diffusion.rescale_timesteps,
    )


@contextlib.contextmanager
def keep_global_rng(device: torch.device):
    """guided-diffusion's ddim_sample draws ``randn_like`` even at eta 0 (multiplied by 0); keep the global
    RNG state untouched by it."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@torch.no_grad()
def ddim_sample_loop(model: nn.Module, spaced, x_t: torch.Tensor) -> torch.Tensor:
    """DDIM (eta 0, predicted x0 clipped to [-1, 1]) from the last timestep of ``spaced`` down to x_0.

    ``x_t``: ``[-1, 1]``-scaled latent ``[B, 3, S, S]`` at that timestep; one UNet evaluation per timestep.
    Returns ``[-1, 1] NCHW``. No randomness (the global RNG is left as it was)."""
    x = x_t
    B = x.shape[0]
    with keep_global_rng(x.device):
        for i in reversed(range(spaced.num_timesteps)):
            t = torch.full((B,), i, device=x.device, dtype=torch.long)
            x = spaced.ddim_sample(model, x, t, clip_denoised=True, eta=0.0)["sample"]
    return x


@torch.no_grad()
def ddim_reconstruct(model: nn.Module, diffusion, x0: torch.Tensor, t0: int = 500, steps: int = 50,
                     generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Noise ``x0`` (``[-1, 1] NCHW``) to ``t0`` with ``q_sample`` and generate back with ``steps`` DDIM steps:
    the h-space study's unperturbed generation. ``noise`` (same shape as ``x0``) or ``generator`` (CPU draws,
    the same numbers on every device) fixes the noise. Returns ``[-1, 1] NCHW``."""
    spaced = spaced_diffusion(diffusion, ddim_schedule(t0, steps, int(diffusion.num_timesteps)))
    if noise is None:
        if generator is None:
            raise ValueError("ddim_reconstruct needs noise= or a torch.Generator (explicit randomness)")
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    if tuple(noise.shape) != tuple(x0.shape):
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    t = torch.full((x0.shape[0],), spaced.num_timesteps - 1, device=x0.device, dtype=torch.long)
    x_t = spaced.q_sample(x0, t, noise=noise.to(x0.device, x0.dtype))
    return ddim_sample_loop(model, spaced, x_t)
