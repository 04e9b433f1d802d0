"""Loading and saving a prior: `load_prior` builds the frozen UNet of a `PriorSpec` (reading its weights once),
`save_prior` writes the ``.safetensors`` + ``.json`` pair that ``python -m diffloss.prior.train`` exports, and a
strict key/shape check names the flags that most likely differ.

Weights always come from a local file: ``.safetensors`` through safetensors (no code is ever unpickled), a
guided-diffusion ``.pt`` state dict with ``torch.load(weights_only=True)``; nothing is downloaded. Random
weights are drawn from ``init_seed`` and never touch the caller's global RNG.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import safetensors
import safetensors.torch
import torch
from torch import nn

from runkit.files import atomic_write_bytes, atomic_write_text, sha256_file, unwrap_state_dict
from runkit.runtime import count_parameters
from diffloss.prior.configs import build_unet, prior_kwargs
from diffloss.prior.runtime import PRIOR_DTYPES, convert_prior_dtype_, freeze_, randomize_zero_init_
from diffloss.prior.spec import PRIOR_FORMAT, PriorCheckpointMismatch, PriorSpec, resolve_prior, sidecar_path

log = logging.getLogger(__name__)

__all__ = ["load_prior", "save_prior", "read_prior_weights", "build_trainable_prior"]


def _mismatch_hints(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor]) -> list[str]:
    """Guess which create_model_and_diffusion flags differ between the config and a checkpoint."""
    hints: list[str] = []

    def shape(d, k):
        v = d.get(k)
        return None if v is None else tuple(v.shape if isinstance(v, torch.Tensor) else v)

    if ("label_emb.weight" in found) != ("label_emb.weight" in expected):
        hints.append(f"class_cond={'label_emb.weight' in found}")
    se, sf = shape(expected, "out.2.weight"), shape(found, "out.2.weight")
    if se and sf and se[0] != sf[0]:
        hints.append(f"learn_sigma={sf[0] == 6} (checkpoint outputs {sf[0]} channels)")
    se, sf = shape(expected, "input_blocks.0.0.weight"), shape(found, "input_blocks.0.0.weight")
    if se and sf and se[0] != sf[0]:
        hints.append(f"num_channels={sf[0]}")

    def n_blocks(d, prefix):
        return len({k.split(".")[1] for k in d if k.startswith(prefix)})

    if n_blocks(expected, "input_blocks.") != n_blocks(found, "input_blocks."):
        hints.append(
            "num_res_blocks / channel_mult / image_size (checkpoint has "
            f"{n_blocks(found, 'input_blocks.')} input blocks, config {n_blocks(expected, 'input_blocks.')})"
        )
    for k, v in found.items():
        if k.endswith("emb_layers.1.weight") and k in expected:
            if v.shape[0] == 2 * expected[k][0]:
                hints.append("use_scale_shift_norm=True")
                break
            if 2 * v.shape[0] == expected[k][0]:
                hints.append("use_scale_shift_norm=False")
                break
    qkv_e = {k for k in expected if ".qkv." in k}
    qkv_f = {k for k in found if ".qkv." in k}
    if qkv_e != qkv_f:
        hints.append("attention_resolutions")
    op_e = any(k.endswith(".op.weight") for k in expected)
    op_f = any(k.endswith(".op.weight") for k in found)
    if op_e != op_f:
        hints.append(f"resblock_updown={not op_f}")
    return hints


def _check_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, spec: PriorSpec) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd) if tuple(sd[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or wrong):
        return

    def few(keys, n=5):
        return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")

    parts = [f"checkpoint {str(spec.path)!r} does not match prior config {spec.config_name!r}:"]
    if missing:
        parts.append(f"missing keys: {few(missing)};")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)};")
    if wrong:
        parts.append(
            "shape mismatches: "
            + few([f"{k} checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k])}" for k in wrong], 3)
            + ";"
        )
    hints = _mismatch_hints(expected, sd)
    parts.append(
        "flags that most likely differ: " + (", ".join(hints) if hints else "num_heads/num_head_channels or channel_mult")
        + "."
    )
    parts.append(
        "Pass --prior-config (resolve_prior's config=) a PRIOR_CONFIGS name or a dict of "
        "create_model_and_diffusion kwargs with the flags the checkpoint was trained with (listed in the "
        "openai/guided-diffusion README)."
    )
    raise PriorCheckpointMismatch(" ".join(parts))


def _torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``; any failure becomes one PriorCheckpointMismatch naming the file
    (torch's own message would suggest ``weights_only=False``, an unsafe load we never advise)."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, garbage or pickled-object files all land here
        raise PriorCheckpointMismatch(
            f"{str(path)!r} is not a prior checkpoint this toolkit can read ({type(err).__name__}; truncated, not "
            "a torch file, or it holds pickled objects, which are never loaded): pass a guided-diffusion state "
            "dict such as 256x256_diffusion_uncond.pt, or a prior.safetensors (with its prior.json) written by "
            "python -m diffloss.prior.train"
        ) from None
    return unwrap_state_dict(obj, path, error=PriorCheckpointMismatch,
                             expected="a UNet state dict, the dict of tensors guided-diffusion saves "
                                      "(e.g. 256x256_diffusion_uncond.pt)")


def _safetensors_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as err:  # a broken header, a truncated file
        reason = " ".join(str(err).split())[:120]
        raise PriorCheckpointMismatch(
            f"{str(path)!r} is not a readable safetensors file ({type(err).__name__}: {reason}): it is truncated or "
            "not a safetensors file; export the prior again (python -m diffloss.prior.train writes "
            "prior.safetensors) or pass a guided-diffusion state dict such as 256x256_diffusion_uncond.pt"
        ) from None


def read_prior_weights(spec: PriorSpec) -> dict[str, torch.Tensor]:
    """The state dict of a file-backed `PriorSpec` (CPU, in the file's dtype): a ``.safetensors`` (its SHA-256
    checked against the ``.json`` when that records one) or a torch state dict (``weights_only=True``,
    ``{"state_dict": ...}`` and DDP's ``module.`` unwrapped). One-line PriorCheckpointMismatch when unreadable."""
    if spec.path is None:
        raise ValueError(f"the prior {spec.label} has random weights, no file to read")
    path = spec.path
    if path.suffix != ".safetensors":
        return _torch_state_dict(path)
    if spec.sha256 is not None:
        digest = sha256_file(path)
        if digest != spec.sha256:
            raise PriorCheckpointMismatch(
                f"{str(path)!r} has SHA-256 {digest[:12]}..., but {sidecar_path(path).name} beside it records "
                f"{spec.sha256[:12]}...: the weights and their config come from different exports; export the "
                "prior again (or reinstall the package for the built-in prior)")
    return _safetensors_state_dict(path)


def save_prior(state_dict: Mapping[str, torch.Tensor], path: str | Path, kwargs: Mapping[str, Any], *,
               config_name: str, step: int | None = None, meta: Mapping[str, Any] | None = None,
               command: str | None = None) -> Path:
    """Write a self-describing prior: the tensors to ``path`` (``.safetensors``, as they are: cast them first)
    and its config to the ``.json`` beside it (`PRIOR_FORMAT`: ``config_name``, the full ``kwargs``, ``step``,
    ``meta``, ``command`` when given, and the weights file's SHA-256). Both atomic, the weights first, so a
    crash in between leaves a ``.json`` whose digest no longer matches (refused when loaded). Returns ``path``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a prior is saved as NAME.safetensors (its config in NAME.json), got {str(path)!r}")
    data = safetensors.torch.save({k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()})
    atomic_write_bytes(path, data)
    info = {"format": PRIOR_FORMAT, "config_name": config_name, "kwargs": prior_kwargs(kwargs),
            "step": None if step is None else int(step), "meta": dict(meta or {})}
    if command is not None:
        info["command"] = command
    info["sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_text(sidecar_path(path), json.dumps(info, indent=2) + "\n")
    return path


def _build_seeded(kwargs: Mapping[str, Any], seed: int) -> tuple[nn.Module, Any]:
    # guided-diffusion's init draws from the global CPU generator: fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        return build_unet(kwargs, "cpu")


def build_trainable_prior(config: str | Mapping[str, Any], seed: int = 0) -> tuple[nn.Module, Any]:
    """A freshly initialised, trainable UNet and its diffusion (guided-diffusion's own init, zero-initialised
    layers included), drawn from ``seed`` without touching the caller's global RNG; in train mode."""
    model, diffusion = _build_seeded(prior_kwargs(config), seed)
    return model.train(), diffusion


def load_prior(prior: PriorSpec | str | Path = "builtin", *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, init_seed: int = 0) -> tuple[nn.Module, Any]:
    """Build the frozen guided-diffusion prior of ``prior``; returns ``(model, diffusion)``.

    Args:
        prior: a `PriorSpec` from `resolve_prior`, or a ``--prior`` value resolved here with the defaults
            (``"builtin"``, ``"random"``: the ``tiny`` config, a path); to name a config, resolve first:
            ``load_prior(resolve_prior("random", "adm256-uncond"))``. Weights are read once, with a strict
            key/shape check.
        device: where the model lives ("meta" builds a shape-only model without memory).
        dtype: float32 (default), float16 or bfloat16 for the UNet torso (see :func:`convert_prior_dtype_`).
        init_seed: seed of random weights (the zero-initialised layers re-drawn too, so the UNet's output is
            not 0); the global RNG is not touched.

    Returns:
        ``model``: a ``guided_diffusion.unet.UNetModel`` in eval mode with ``requires_grad_(False)`` (its
        ``train()`` keeps eval); input ``[-1, 1] NCHW`` at ``model.image_size``, called as ``model(x_t, t)``;
        output ``[B, 6, H, W]`` with ``learn_sigma`` (3 noise + 3 variance channels). ``diffusion``: the
        matching ``GaussianDiffusion`` (a ``SpacedDiffusion`` over all steps). What the prior is (config name,
        file, training step) stays on the `PriorSpec`.

    Raises:
        FileNotFoundError: the file does not exist (the message names it and, for the paper's prior, its URL).
        PriorCheckpointMismatch (a ValueError): not a readable checkpoint, or keys/shapes differ (names them
        and the likely flags).
    """
    spec = resolve_prior(prior)
    device = torch.device(device)
    if dtype not in PRIOR_DTYPES:
        raise ValueError(f"dtype must be one of {list(PRIOR_DTYPES.values())}, got {dtype}")
    if spec.path is not None:
        sd = read_prior_weights(spec)
        model, diffusion = build_unet(spec.kwargs, "meta")  # no 2.2 GB random init just to overwrite it
        _check_state_dict(sd, model, spec)
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
        model.to(device)
        log.info("loaded prior %s (%s, %d parameters) from %s", spec.config_name, PRIOR_DTYPES[dtype],
                 count_parameters(model), spec.path)
    elif device.type == "meta":
        model, diffusion = build_unet(spec.kwargs, "meta")
    else:
        model, diffusion = _build_seeded(spec.kwargs, init_seed)
        randomize_zero_init_(model, torch.Generator().manual_seed(int(init_seed) + 1))
        model.to(device)
        log.warning("untrained prior: %s built with random weights (init_seed=%d). DiffLoss with it is only good "
                    "for tests and timing; pass a trained prior (--prior builtin, or a path such as "
                    "256x256_diffusion_uncond.pt) for real use.", spec.config_name, init_seed)
    if dtype != torch.float32:
        convert_prior_dtype_(model, dtype)
    return freeze_(model), diffusion
