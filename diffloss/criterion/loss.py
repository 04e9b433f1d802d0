"""DiffLoss (Tan & Zhao 2024, Sec. 3.3): a frozen diffusion prior as a training criterion.

For a restored image z = g(y) and its clean target x, both mapped from [0, 1] to [-1, 1]:

    t ~ U{lo .. hi-1},  e ~ N(0, I)                (one t and one e per sample, shared by both branches)
    z_t = sqrt(abar_t) z + sqrt(1 - abar_t) e,   x_t likewise
    pixel = MSE(z, x)
    nat   = MSE(P(z_t, t), P(x_t, t))     P = predicted noise ("eps", default), predicted x_0 ("x0")
                                            or posterior mean of x_{t-1} ("xprev"): Table 4's ablation
    sem   = MSE(h(z_t, t), h(x_t, t))     h = output of the UNet's middle_block (h-space)
    total = pixel + gamma * (nat + lam * sem)

The x branch is a constant target (no gradient). The z branch is differentiated through the frozen
UNet down to ``restored``: gradients reach the restoration network, which the authors' public code
prevents by running both branches under ``torch.no_grad()``.

The math lives in plain functions (``diffloss.criterion.functional``: :func:`diffuse`,
:func:`prior_prediction`, :func:`diffloss_terms`, :func:`diffloss`; ``diffloss.criterion.timestep_weights``;
``diffloss.criterion.grad_scaling`` for float16 UNets); :class:`DiffLoss` holds the configuration and the random
generator, and validates its inputs (``diffloss.criterion.checks``).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from diffloss.criterion.checks import (AUTOCAST_DTYPES, check_images, check_noise, check_prior_pair, check_target,
                               check_timesteps, check_weights, class_label_kwargs, make_generator, parse_autocast,
                               parse_checkpointing, parse_t_range, range_message)
from diffloss.criterion.functional import (TARGETS, DiffLossOutput, diffloss, diffloss_terms, diffuse, model_timesteps,
                                  prior_prediction)
from diffloss.prior.runtime import activation_checkpointing_mode, compile_prior_, freeze_, set_activation_checkpointing
from diffloss.criterion.timestep_weights import T_WEIGHTINGS, timestep_weight_table

log = logging.getLogger(__name__)

__all__ = [
    "TARGETS", "T_WEIGHTINGS", "DiffLossOutput", "DiffLoss", "diffloss", "diffloss_terms", "diffuse",
    "prior_prediction", "model_timesteps", "timestep_weight_table", "check_images", "AUTOCAST_DTYPES",
]


class DiffLoss(nn.Module):
    """DiffLoss as an ``nn.Module`` criterion (the frozen prior is a submodule, so ``.to()`` moves it).

    Args:
        model, diffusion: any pair from guided-diffusion's ``create_model_and_diffusion`` /
            :func:`diffloss.load_prior`; the UNet is frozen here (eval, no parameter gradients).
        gamma: weight of the diffusion terms (paper: 1e-3; good range 5e-4 .. 5e-3, Fig. 7).
        lam: weight of ``sem`` inside them (paper: 1e-2).
        target: "eps" (default, paper variant c), "x0" (variant a) or "xprev" (variant b).
        t_range: ``(lo, hi)``: t ~ U{lo, ..., hi - 1} (half-open like ``range``); None: all steps.
        t_weighting: a :data:`T_WEIGHTINGS` name ("none" = paper; "alpha_bar"; "min_snr") or
            ``fn(diffusion) -> weights[T]``; weights are rescaled to mean 1 over ``t_range``.
        batch_branches: run both branches in one UNet call (faster for small images/batches on GPU);
            False: a no-grad call for the clean image then one for the restored image (less memory).
        generator: ``torch.Generator`` (or int seed) drawing t and noise; None: a generator seeded 0.
            The global RNG is never used. A CPU generator works with CUDA inputs.

    Speed/memory options (keyword-only; they change ``model`` in place, like the freezing does):
        autocast: "bf16" | "fp16" | a torch dtype | None ("fp32"): run the UNet calls under
            ``torch.autocast`` (the diffusion arithmetic and the MSEs stay float32). An autocast region
            around the whole criterion works too. Under fp16 the gradient through the UNet is scaled
            internally (a power of two, divided out again), so it does not underflow at the paper's weights.
            If it overflows instead (inf/NaN after unscaling), a warning is logged, ``grad_overflows`` counts
            it, and the non-finite gradient is passed on: skip that optimisation step, as torch's GradScaler
            does (``restoration.train`` checks every gradient and does).
        channels_last: convert the UNet's conv weights and the UNet inputs to ``torch.channels_last``.
        checkpointing: False (leave the model as it is), True or "torch" (``torch.utils.checkpoint``
            around every ResBlock/AttentionBlock, works with frozen weights under any autocast), or
            "guided-diffusion" (its own ``use_checkpoint``; float32 or CUDA autocast only). See
            :func:`diffloss.prior.set_activation_checkpointing`.
        compile: False, True, or a dict of ``torch.compile`` kwargs: compile the UNet's blocks
            (:func:`diffloss.prior.compile_prior_`; the middle block stays eager for the h-space hook).
        validate: check inputs each call (costs one device sync); see :func:`check_images`. Values far
            outside [0, 1] give one warning per DiffLoss instance; NaN/Inf raise ValueError.

    ``forward(restored, clean, t=None, noise=None, y=None)``: ``restored``, ``clean`` are [0, 1] NCHW
    float on the prior's device (mapped to [-1, 1] inside); ``t`` LongTensor [B] and ``noise``
    [B, 3, H, W] override the random draw; ``y`` are class labels for class-conditional priors.
    Returns :class:`DiffLossOutput`.
    """

    def __init__(
        self,
        model: nn.Module,
        diffusion: Any,
        gamma: float = 1e-3,
        lam: float = 1e-2,
        target: str = "eps",
        t_range: tuple[int, int] | None = None,
        t_weighting: str | Callable[[Any], Sequence[float]] = "none",
        batch_branches: bool = True,
        generator: torch.Generator | int | None = None,
        *,
        autocast: str | torch.dtype | None = None,
        channels_last: bool = False,
        checkpointing: bool | str = False,
        compile: bool | Mapping[str, Any] = False,
        validate: bool = True,
    ) -> None:
        super().__init__()
        check_prior_pair(model, diffusion)
        check_weights(gamma=gamma, lam=lam)
        self.target = check_target(target)
        self.t_range = parse_t_range(t_range, int(diffusion.num_timesteps))
        self.generator = make_generator(generator)
        self.autocast_dtype = parse_autocast(autocast)
        checkpointing = parse_checkpointing(checkpointing)
        if not isinstance(compile, (bool, Mapping)):
            raise TypeError(f"compile must be a bool or a dict of torch.compile kwargs, got {type(compile).__name__}")

        self.model = freeze_(model)
        self.diffusion = diffusion
        self.gamma = float(gamma)
        self.lam = float(lam)
        self.t_weighting = t_weighting
        self.batch_branches = bool(batch_branches)
        self.validate = bool(validate)
        self.channels_last = bool(channels_last)
        if checkpointing:
            set_activation_checkpointing(self.model, True, impl=checkpointing)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            compile_prior_(self.model, **(dict(compile) if isinstance(compile, Mapping) else {}))
        self._range_warned = False
        table = timestep_weight_table(diffusion, t_weighting, self.t_range)
        self._weight_table = None if np.all(table == 1.0) else table
        self._size_noted: set[tuple[int, int]] = set()
        #: backward passes whose float16-scaled gradient was not finite after unscaling (see ``autocast``)
        self.grad_overflows = 0

    def _count_grad_overflow(self) -> None:
        self.grad_overflows += 1

    def train(self, mode: bool = True) -> "DiffLoss":
        super().train(mode)
        self.model.eval()  # the prior stays frozen in eval mode
        return self

    def extra_repr(self) -> str:
        scheme = self.t_weighting if isinstance(self.t_weighting, str) else getattr(self.t_weighting, "__name__", "custom")
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]
        return (
            f"gamma={self.gamma:g}, lam={self.lam:g}, target={self.target!r}, t_range={self.t_range}, "
            f"t_weighting={scheme!r}, batch_branches={self.batch_branches}, autocast={amp!r}, "
            f"channels_last={self.channels_last}, checkpointing={activation_checkpointing_mode(self.model)!r}"
        )

    @property
    def num_timesteps(self) -> int:
        return int(self.diffusion.num_timesteps)

    def sample_timesteps(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """t ~ U{lo..hi-1}, LongTensor [batch_size] on ``device``, drawn from ``self.generator``."""
        lo, hi = self.t_range
        t = torch.randint(lo, hi, (batch_size,), generator=self.generator, device=self.generator.device)
        return t.to(device)

    def sample_noise(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        """Standard normal float32 noise of ``shape`` on ``device``, drawn from ``self.generator``."""
        e = torch.randn(tuple(shape), generator=self.generator, device=self.generator.device, dtype=torch.float32)
        return e.to(device)

    def _note_size(self, h: int, w: int) -> None:
        s = self.model.image_size
        if (h, w) != (s, s) and (h, w) not in self._size_noted:
            self._size_noted.add((h, w))
            log.warning(
                "DiffLoss on %dx%d images with a prior trained at %dx%d: it runs, but the prior's noise and "
                "h-space statistics are off-distribution; train on %dx%d crops for the paper's setting",
                h, w, s, s, s, s,
            )

    def forward(
        self,
        restored: torch.Tensor,
        clean: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> DiffLossOutput:
        if self.validate:
            bad = check_images(restored, clean, self.model, warn=False)
            if bad and not self._range_warned:
                self._range_warned = True
                warnings.warn(range_message(bad), UserWarning, stacklevel=4)  # 4: the caller of crit(...)
            self._note_size(*restored.shape[-2:])
        batch, device = restored.shape[0], restored.device
        if t is None:
            t = self.sample_timesteps(batch, device)
        else:
            t = check_timesteps(t, batch, self.num_timesteps, device)
        noise = self.sample_noise(restored.shape, device) if noise is None else check_noise(noise, restored.shape, device)
        if self.channels_last:
            restored, clean, noise = (v.contiguous(memory_format=torch.channels_last) for v in (restored, clean, noise))
        model_kwargs = class_label_kwargs(self.model, y, device)
        weights = None
        if self._weight_table is not None:
            weights = torch.from_numpy(self._weight_table).to(device)[t].float()
        return diffloss(
            self.model, self.diffusion, restored, clean, t, noise, gamma=self.gamma, lam=self.lam,
            target=self.target, weights=weights, batch_branches=self.batch_branches, model_kwargs=model_kwargs,
            autocast_dtype=self.autocast_dtype, on_grad_overflow=self._count_grad_overflow,
        )
