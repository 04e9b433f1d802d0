"""DDIM over guided-diffusion for the h-space study: reach x_t0 from an image (seeded ``q_sample`` or DDIM
inversion) and generate back with the h-space edit switched on at the steps with t >= t_edit.

The schedule and the spaced diffusion are `diffloss.prior.sampling`'s (re-exported here)."""
from __future__ import annotations

import torch
from torch import nn

from diffloss.prior.sampling import ddim_schedule, keep_global_rng, spaced_diffusion

from analysis.hspace.perturbation import PerturbationEdit, PullbackEdit, make_edit

__all__ = ["ddim_schedule", "spaced_diffusion", "ddim_invert", "start_latent", "ddim_generate", "START_MODES"]

START_MODES = ("noise", "ddim-inversion")


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
                  edit: PerturbationEdit | PullbackEdit | None = None, on_step=None) -> torch.Tensor:
    """DDIM (eta 0, predicted x0 clipped to [-1, 1]) from the last timestep of ``spaced`` to x_0.

    ``x_t`` [B, 3, S, S]; ``alpha`` [B] the per-sample h-space perturbation strengths (None or 0: none),
    applied at the steps whose original timestep is >= ``t_edit`` (``svd_mode`` "pullback": x_t is moved before
    those steps, `PullbackEdit`). ``hook`` is the h-space hook factory (default
    ``diffloss.prior.hspace.hspace_hook``). ``edit``: a `PerturbationEdit` or `PullbackEdit` to use instead of
    building one from ``alpha`` and ``svd_mode`` (read its ``dh_norm`` / ``dh_rel`` afterwards). ``on_step``:
    called with no argument after every step (progress). One UNet evaluation per timestep (pullback: plus a
    truncated forward and backward of the unperturbed samples per edited step); returns [-1, 1] NCHW."""
    if hook is None:
        from diffloss.prior.hspace import hspace_hook as hook
    B = x_t.shape[0]
    if edit is not None:
        if alpha is not None:
            raise ValueError("give alpha (and svd_mode) or a PerturbationEdit, not both")
        alpha = edit.alpha
    alpha = torch.zeros(B) if alpha is None else torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
    if alpha.shape != (B,):
        raise ValueError(f"alpha must have one value per sample ({B}), got shape {tuple(alpha.shape)}")
    edit = edit if edit is not None else make_edit(alpha, svd_mode)
    any_edit = bool((alpha != 0).any())
    x = x_t
    with hook(model, edit=edit):
        for i in reversed(range(spaced.num_timesteps)):
            edit.active = any_edit and spaced.timestep_map[i] >= t_edit
            if edit.active:
                x = edit.move(model, spaced, x, i)
            t = torch.full((B,), i, device=x.device, dtype=torch.long)
            with keep_global_rng(x.device):
                x = spaced.ddim_sample(model, x, t, clip_denoised=True, eta=0.0)["sample"]
            if on_step is not None:
                on_step()
    return x
