"""Loading a prior: checkpoint files (guided-diffusion state dicts and the self-describing ``prior.pt`` of
``python -m diffloss.prior.train``), the built-in trained prior, the ``--prior`` words, random priors, and a
strict key/shape check whose error names the flags that most likely differ.

Weights always come from a local file, read with ``torch.load(weights_only=True)``; nothing is downloaded.
Random weights (``checkpoint=None``) are drawn from ``init_seed`` and never touch the caller's global RNG.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from runkit.files import sha256_file, unwrap_state_dict

from runkit.runtime import count_parameters
from diffloss.prior.configs import PRIOR_CHECKPOINTS, build_unet, config_name, prior_kwargs
from diffloss.prior.runtime import PRIOR_DTYPES, convert_prior_dtype_, freeze_, randomize_zero_init_

log = logging.getLogger(__name__)

__all__ = ["BUILTIN_PRIOR_FILE", "BUILTIN_PRIOR_SHA256", "PRIOR_WORDS", "PRIOR_FORMAT", "PriorCheckpointMismatch",
           "resolve_prior_path", "read_prior_file", "build_trainable_prior", "builtin_prior_path",
           "resolve_prior_spec", "prior_spec_config", "load_prior", "load_adm"]

#: The built-in trained prior, shipped with the package (python -m diffloss.prior.train on mini-CUB's clean
#: train split; the command, seed and step count are in docs/prior.md). ``--prior builtin`` everywhere.
BUILTIN_PRIOR_FILE = Path(__file__).resolve().parent / "builtin" / "mini-cub-tiny64.pt"
BUILTIN_PRIOR_SHA256 = "fa853a98ce7502769b431057c15c944592d797b81e942e740c5dfd3bf860371f"
#: The ``--prior`` words every CLI understands besides a path.
PRIOR_WORDS = ("builtin", "random")

#: ``format`` of the self-describing prior files written by ``python -m diffloss.prior.train``
#: (``{"format", "config_name", "kwargs", "state_dict", "step", "meta"}``).
PRIOR_FORMAT = "diffloss-prior/1"


class PriorCheckpointMismatch(ValueError):
    """A checkpoint's keys or shapes do not match the UNet built from the chosen config."""


def _missing_checkpoint_message(path: Path, config: str | Mapping[str, Any]) -> str:
    info = PRIOR_CHECKPOINTS.get(config) if isinstance(config, str) else None
    if info is None:
        info = PRIOR_CHECKPOINTS["adm256-uncond"]
        which = (
            f"no released weights are registered for config {config_name(config)!r}; the paper's prior is"
        )
    else:
        which = f"config {config!r} expects"
    return (
        f"prior checkpoint not found: {str(path)!r}. {which} {info.filename!r} ({info.size}), "
        f"from the openai/guided-diffusion README (https://github.com/openai/guided-diffusion): "
        f"{info.url} . Download it yourself (this toolkit never downloads weights) and pass its path "
        f"with --prior PATH (python -m restoration.train ...) or load_adm(checkpoint=PATH); "
        f"checkpoint=None builds an untrained prior for tests."
    )



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


def _check_state_dict(
    sd: Mapping[str, torch.Tensor], model: nn.Module, path: Path, config: str | Mapping[str, Any]
) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(expected) & set(sd) if tuple(sd[k].shape) != tuple(expected[k]))
    if not (missing or unexpected or wrong):
        return

    def few(keys, n=5):
        return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")

    parts = [f"checkpoint {str(path)!r} does not match prior config {config_name(config)!r}:"]
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
        "Pass config= a PRIOR_CONFIGS name or a dict of create_model_and_diffusion kwargs with the flags the "
        "checkpoint was trained with (listed in the openai/guided-diffusion README)."
    )
    raise PriorCheckpointMismatch(" ".join(parts))


def _load_state_dict_file(path: Path) -> Any:
    """``torch.load(weights_only=True)``; any failure becomes one PriorCheckpointMismatch naming the file
    (torch's own message would suggest ``weights_only=False``, an unsafe load we never advise)."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, garbage or pickled-object files all land here
        kind = type(err).__name__
        raise PriorCheckpointMismatch(
            f"{str(path)!r} is not a prior checkpoint this toolkit can read ({kind}; truncated, not a torch file, "
            "or it holds pickled objects, which are never loaded): pass a guided-diffusion state dict such as "
            "256x256_diffusion_uncond.pt or a prior.pt written by python -m diffloss.prior.train"
        ) from None


def resolve_prior_path(checkpoint: str | Path, config: str | Mapping[str, Any] | None = None) -> Path:
    """The file behind ``checkpoint``: the path itself, or inside a folder its ``prior.pt`` (a
    ``diffloss.prior.train`` run) or the config's released file. Raises FileNotFoundError naming the file
    and where to get it."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        info = PRIOR_CHECKPOINTS.get(config) if isinstance(config, str) else None
        for candidate in ("prior.pt", info.filename if info else None):
            if candidate and (path / candidate).is_file():
                return path / candidate
    if not path.is_file():
        raise FileNotFoundError(_missing_checkpoint_message(path, config or "adm256-uncond"))
    return path


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    return unwrap_state_dict(obj, path, error=PriorCheckpointMismatch,
                             expected="a UNet state dict, the dict of tensors guided-diffusion saves "
                                      "(e.g. 256x256_diffusion_uncond.pt)")


def read_prior_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """``(state_dict, kwargs or None, info)`` of a prior file. ``kwargs``: the ``create_model_and_diffusion``
    arguments stored in a self-describing ``diffloss.prior.train`` file (None for a bare guided-diffusion
    state dict); ``info``: its ``config_name``, ``step`` and ``meta`` ({} for a bare one)."""
    path = Path(path)
    obj = _load_state_dict_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == PRIOR_FORMAT:
        kwargs = obj.get("kwargs")
        if not isinstance(kwargs, Mapping):
            raise PriorCheckpointMismatch(f"{str(path)!r} says {PRIOR_FORMAT} but holds no config (kwargs)")
        info = {k: obj.get(k) for k in ("config_name", "step", "meta")}
        return _unwrap(obj["state_dict"], path), dict(kwargs), info
    return _unwrap(obj, path), None, {}


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


def builtin_prior_path(check_digest: bool = False) -> Path:
    """Path of the built-in trained prior (`BUILTIN_PRIOR_FILE`); FileNotFoundError, naming the command that
    makes it, when the package was installed without it. ``check_digest``: also compare its SHA-256."""
    path = BUILTIN_PRIOR_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the built-in prior {str(path)!r} is missing from this installation; train one with "
            "python -m diffloss.prior.train --config tiny64 --out runs/prior-mini64 and pass --prior "
            "runs/prior-mini64/prior.pt, or --prior random for untrained weights (timing only)"
        )
    if check_digest and BUILTIN_PRIOR_SHA256:
        digest = sha256_file(path)
        if digest != BUILTIN_PRIOR_SHA256:
            raise ValueError(f"the built-in prior {str(path)!r} has SHA-256 {digest}, expected "
                             f"{BUILTIN_PRIOR_SHA256}: reinstall the package")
    return path


def resolve_prior_spec(prior: str | Path | None) -> Path | None:
    """A ``--prior`` value -> the checkpoint to load, or None for random weights.

    ``None`` or ``"builtin"``: the built-in trained prior; ``"random"``: untrained weights (for timing and
    tests; say so on purpose); anything else: a path (a file, or a train_prior run folder)."""
    if prior is None or str(prior) == "builtin":
        return builtin_prior_path()
    if str(prior) == "random":
        return None
    return resolve_prior_path(prior)


def prior_spec_config(prior: str | Path | None, config: str | Mapping[str, Any] | None
                      ) -> tuple[Path | None, str | Mapping[str, Any] | None, dict[str, Any]]:
    """What a ``--prior`` value and a fallback ``config`` amount to, without building the UNet:
    ``(checkpoint or None for random weights, the config to give load_adm, the full kwargs)``. The config is
    None for a self-describing ``prior.pt`` (it carries its own); ``config`` otherwise (None: load_adm's
    ``adm256-uncond``). Unlike `resolve_prior_spec`, ``None`` means random weights here (a benchmark's
    "no --prior given")."""
    path = None if prior is None else resolve_prior_spec(prior)
    stored = None if path is None else read_prior_file(path)[1]
    if stored is not None:
        return path, None, prior_kwargs(stored)
    return path, config, prior_kwargs(config if config is not None else "adm256-uncond")


def load_prior(prior: str | Path | None = "builtin", config: str | Mapping[str, Any] | None = None,
               device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               init_seed: int = 0) -> tuple[nn.Module, Any]:
    """`load_adm` for a ``--prior`` value (see `resolve_prior_spec`). ``"random"`` builds ``config`` (default
    ``tiny``) with random weights; files carry their own config."""
    checkpoint = resolve_prior_spec(prior)
    if checkpoint is None and config is None:
        config = "tiny"
    return load_adm(checkpoint, config=config, device=device, dtype=dtype, init_seed=init_seed)


def load_adm(
    checkpoint: str | Path | None = None,
    config: str | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    init_seed: int = 0,
) -> tuple[nn.Module, Any]:
    """Build the frozen guided-diffusion prior; returns ``(model, diffusion)``.

    Args:
        checkpoint: path to a guided-diffusion state dict (e.g. ``256x256_diffusion_uncond.pt``) or to a
            self-describing ``prior.pt`` of ``python -m diffloss.prior.train`` (or its run folder), loaded
            with ``torch.load(weights_only=True)`` and a strict key/shape check; a folder holding the
            config's released file also works. ``None``: random weights drawn from ``init_seed`` (the
            zero-initialised layers re-drawn too), with a logged "untrained prior" warning.
        config: a :data:`PRIOR_CONFIGS` name or a dict of ``create_model_and_diffusion`` kwargs. None (the
            default): the config stored in a self-describing file, else ``adm256-uncond``. A config that
            contradicts the one stored in the file is an error.
        device: where the model lives ("meta" builds a shape-only model without memory).
        dtype: float32 (default), float16 or bfloat16 for the UNet torso (see :func:`convert_prior_dtype_`).
        init_seed: seed of the random weights when ``checkpoint`` is None; the global RNG is not touched.

    Returns:
        ``model``: a ``guided_diffusion.unet.UNetModel`` in eval mode with ``requires_grad_(False)``
        (its ``train()`` keeps eval); input ``[-1, 1] NCHW`` at ``model.image_size``, called as
        ``model(x_t, t)``; output ``[B, 6, H, W]`` with ``learn_sigma`` (3 noise + 3 variance channels).
        ``diffusion``: the matching ``GaussianDiffusion`` (a ``SpacedDiffusion`` over all steps).
        The model carries ``model.prior_info``: path (None if random), config name, training step (of a
        train_prior file) and the full ``create_model_and_diffusion`` kwargs.

    Raises:
        FileNotFoundError: the checkpoint does not exist (the message names the file and its URL).
        PriorCheckpointMismatch (a ValueError): not a readable checkpoint, or keys/shapes differ (names them
        and the likely flags).
    """
    device = torch.device(device)
    if dtype not in PRIOR_DTYPES:
        raise ValueError(f"dtype must be one of {list(PRIOR_DTYPES.values())}, got {dtype}")
    if checkpoint is not None:
        model, diffusion = _load_checkpoint(checkpoint, config, device)
        info = model.prior_info
        log.info("loaded prior %s (%s, %d parameters) from %s", info["config"], PRIOR_DTYPES[dtype],
                 count_parameters(model), info["path"])
    else:
        model, diffusion = _random_prior(config if config is not None else "adm256-uncond", device, init_seed)
    if dtype != torch.float32:
        convert_prior_dtype_(model, dtype)
    freeze_(model)
    return model, diffusion


def _load_checkpoint(checkpoint: str | Path, config: str | Mapping[str, Any] | None,
                     device: torch.device) -> tuple[nn.Module, Any]:
    """`load_adm` from a file: the config stored in it (which ``config`` may only repeat), else ``config``."""
    path = resolve_prior_path(checkpoint, config)
    sd, stored, info = read_prior_file(path)
    if stored is not None:
        if config is not None and prior_kwargs(config) != prior_kwargs(stored):
            raise PriorCheckpointMismatch(
                f"{str(path)!r} is a {info.get('config_name')!r} prior (its config is stored in the file), "
                f"but config {config_name(config)!r} was asked for; leave the config out (--prior-config) "
                "to use the file's"
            )
        config = stored
        name = info.get("config_name") or "<custom config>"
    else:
        config = config if config is not None else "adm256-uncond"
        name = config_name(config)
    kwargs = prior_kwargs(config)
    model, diffusion = build_unet(kwargs, "meta")  # no 2.2 GB random init just to overwrite it
    _check_state_dict(sd, model, path, config)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    model.to(device)
    model.prior_info = {"path": str(path), "config": name, "step": info.get("step"), "kwargs": kwargs}
    return model, diffusion


def _random_prior(config: str | Mapping[str, Any], device: torch.device, init_seed: int) -> tuple[nn.Module, Any]:
    """`load_adm` without a file: guided-diffusion's init from ``init_seed``, its zero layers re-drawn."""
    kwargs = prior_kwargs(config)
    if device.type == "meta":
        model, diffusion = build_unet(kwargs, "meta")
    else:
        model, diffusion = _build_seeded(kwargs, init_seed)
        randomize_zero_init_(model, torch.Generator().manual_seed(int(init_seed) + 1))
        model.to(device)
        log.warning(
            "untrained prior: %s built with random weights (init_seed=%d). DiffLoss with it is only good "
            "for tests and timing; pass checkpoint=PATH (e.g. 256x256_diffusion_uncond.pt) for real use.",
            config_name(config), init_seed,
        )
    model.prior_info = {"path": None, "config": config_name(config), "step": None, "kwargs": kwargs}
    return model, diffusion
