"""DiffLoss: a frozen diffusion prior (guided-diffusion ADM) as a training criterion for restoration.

    from diffloss import load_prior, DiffLoss
    model, diffusion = load_prior("256x256_diffusion_uncond.pt", device="cuda")   # or load_prior("builtin")
    criterion = DiffLoss(model, diffusion, gamma=1e-3, lam=1e-2)
    out = criterion(restored, clean)        # [0, 1] NCHW float; out.total, out.pixel, out.nat, out.sem, out.t

Two sub-packages: ``diffloss.prior`` (the frozen prior: ``configs``, ``spec`` (the resolver behind every
``--prior``), ``loading``, ``runtime``, ``hspace``, ``sampling``, and ``diffloss.prior.train``, training a prior of
your own) and ``diffloss.criterion`` (the loss: ``loss``, its functional core ``functional``,
``timestep_weights``, ``grad_scaling``, ``checks``). Attributes are imported lazily, so ``import diffloss`` does
not import torch or guided-diffusion until you use them.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PRIOR_CONFIGS": "prior",
    "PRIOR_CHECKPOINTS": "prior",
    "PriorCheckpointMismatch": "prior",
    "load_prior": "prior",
    "resolve_prior": "prior",
    "PriorSpec": "prior",
    "BUILTIN_PRIOR_FILE": "prior",
    "randomize_zero_init_": "prior",
    "count_prior_parameters": "prior",
    "set_activation_checkpointing": "prior",
    "activation_checkpointing_mode": "prior",
    "guided_diffusion_checkpoint_gives_input_grads": "prior",
    "compile_prior_": "prior",
    "clone_prior": "prior",
    "hspace_hook": "prior.hspace",
    "HSpace": "prior.hspace",
    "DiffLoss": "criterion",
    "DiffLossOutput": "criterion",
    "TARGETS": "criterion",
    "T_WEIGHTINGS": "criterion",
    "AUTOCAST_DTYPES": "criterion",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffloss' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
