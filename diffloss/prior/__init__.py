"""The frozen diffusion prior: guided-diffusion's ADM UNet and its GaussianDiffusion.

We wrap guided-diffusion (the ``guided-diffusion-sdk`` package) and never fork it: models are built
with ``guided_diffusion.script_util.create_model_and_diffusion`` from a named config in
:data:`PRIOR_CONFIGS` (or a dict of its keyword arguments), weights come from a local file, and
the returned UNet is frozen (``eval()``, ``requires_grad_(False)``, ``train()`` keeps it in eval):

    spec = resolve_prior("builtin")            # or "random", a path; every default is decided here
    model, diffusion = load_prior(spec, device="cuda")

This module is the one place to import them from; the code lives by concern in
``diffloss.prior.configs`` (the config registry: ``adm256-uncond``, ``tiny``, ``tiny64``, ``adm64``,
``adm128``), ``diffloss.prior.spec`` (what ``--prior`` means: `resolve_prior`, `PriorSpec`, `PriorOptions`,
the built-in prior), ``diffloss.prior.loading`` (`load_prior`, `save_prior`: weights in and out) and
``diffloss.prior.runtime`` (freezing, precision, activation checkpointing, compilation, zero-init).
"""
from __future__ import annotations

from runkit.runtime import count_parameters
from diffloss.prior.configs import (ADM_BASE, PRIOR_CHECKPOINTS, PRIOR_CONFIGS, CheckpointInfo, count_prior_parameters,
                            prior_kwargs)
from diffloss.prior.loading import build_trainable_prior, load_prior, read_prior_weights, save_prior
from diffloss.prior.spec import (BUILTIN_PRIOR_FILE, BUILTIN_PRIOR_SHA256, PRIOR_FILE, PRIOR_FORMAT, PRIOR_WORDS,
                                 PriorCheckpointMismatch, PriorOptions, PriorSpec, resolve_prior, sidecar_path)
from diffloss.prior.runtime import (CHECKPOINT_IMPLS, activation_checkpointing_mode, clone_prior, compile_prior_,
                            convert_prior_dtype_, describe_valid_sizes, freeze_,
                            guided_diffusion_checkpoint_gives_input_grads, randomize_zero_init_,
                            set_activation_checkpointing, size_multiple, zero_initialised_layers)

__all__ = [
    "ADM_BASE", "PRIOR_CONFIGS", "PRIOR_CHECKPOINTS", "CheckpointInfo", "PriorCheckpointMismatch",
    "prior_kwargs", "randomize_zero_init_", "zero_initialised_layers", "freeze_",
    "convert_prior_dtype_", "set_activation_checkpointing", "activation_checkpointing_mode", "CHECKPOINT_IMPLS",
    "guided_diffusion_checkpoint_gives_input_grads", "compile_prior_", "count_parameters",
    "count_prior_parameters", "size_multiple", "describe_valid_sizes", "clone_prior", "PRIOR_FORMAT", "PRIOR_FILE",
    "build_trainable_prior", "BUILTIN_PRIOR_FILE", "BUILTIN_PRIOR_SHA256", "PRIOR_WORDS", "PriorSpec",
    "PriorOptions", "resolve_prior", "load_prior", "save_prior", "read_prior_weights", "sidecar_path",
]
