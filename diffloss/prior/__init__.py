"""The frozen diffusion prior: guided-diffusion's ADM UNet and its GaussianDiffusion.

We wrap guided-diffusion (the ``guided-diffusion-sdk`` package) and never fork it: models are built
with ``guided_diffusion.script_util.create_model_and_diffusion`` from a named config in
:data:`PRIOR_CONFIGS` (or a dict of its keyword arguments), weights come from a local checkpoint, and
the returned UNet is frozen (``eval()``, ``requires_grad_(False)``, ``train()`` keeps it in eval).

This module is the one place to import them from; the code lives by concern in
``diffloss.prior.configs`` (the config registry: ``adm256-uncond``, ``tiny``, ``tiny64``, ``adm64``,
``adm128``), ``diffloss.prior.loading`` (checkpoints, the built-in prior, ``--prior`` words, ``load_adm``)
and ``diffloss.prior.runtime`` (freezing, precision, activation checkpointing, compilation, zero-init).
"""
from __future__ import annotations

from runkit.runtime import count_parameters
from diffloss.prior.configs import (ADM_BASE, PRIOR_CHECKPOINTS, PRIOR_CONFIGS, CheckpointInfo, count_prior_parameters,
                            prior_kwargs)
from diffloss.prior.loading import (BUILTIN_PRIOR_FILE, BUILTIN_PRIOR_SHA256, PRIOR_FORMAT, PRIOR_WORDS,
                            PriorCheckpointMismatch, build_trainable_prior, builtin_prior_path, load_adm, load_prior,
                            prior_spec_config, read_prior_file, resolve_prior_path, resolve_prior_spec)
from diffloss.prior.runtime import (CHECKPOINT_IMPLS, activation_checkpointing_mode, clone_prior, compile_prior_,
                            convert_prior_dtype_, describe_valid_sizes, freeze_,
                            guided_diffusion_checkpoint_gives_input_grads, randomize_zero_init_,
                            set_activation_checkpointing, size_multiple, zero_initialised_layers)

__all__ = [
    "ADM_BASE", "PRIOR_CONFIGS", "PRIOR_CHECKPOINTS", "CheckpointInfo", "PriorCheckpointMismatch",
    "prior_kwargs", "load_adm", "randomize_zero_init_", "zero_initialised_layers", "freeze_",
    "convert_prior_dtype_", "set_activation_checkpointing", "activation_checkpointing_mode", "CHECKPOINT_IMPLS",
    "guided_diffusion_checkpoint_gives_input_grads", "compile_prior_", "count_parameters",
    "count_prior_parameters", "size_multiple", "describe_valid_sizes", "clone_prior", "PRIOR_FORMAT",
    "resolve_prior_path", "read_prior_file", "build_trainable_prior", "BUILTIN_PRIOR_FILE", "BUILTIN_PRIOR_SHA256",
    "PRIOR_WORDS", "builtin_prior_path", "resolve_prior_spec", "prior_spec_config", "load_prior",
]
