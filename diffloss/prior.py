"""The frozen diffusion prior: guided-diffusion's ADM UNet and its GaussianDiffusion.

We wrap guided-diffusion (the ``guided-diffusion-sdk`` package) and never fork it: models are built
with ``guided_diffusion.script_util.create_model_and_diffusion`` from a named config in
:data:`PRIOR_CONFIGS` (or a dict of its keyword arguments), weights come from a local checkpoint, and
the returned UNet is frozen (``eval()``, ``requires_grad_(False)``, ``train()`` keeps it in eval).

Names:
    ``adm256-uncond``  the paper's prior (ImageNet 256x256 unconditional ADM, 552,814,086 parameters);
                       weights: ``256x256_diffusion_uncond.pt`` (about 2.1 GB, see :data:`PRIOR_CHECKPOINTS`).
    ``tiny``           32x32, the same architecture family (learned sigma, residual up/down-sampling,
                       scale-shift norm, attention, middle block with attention) with 32-64 channels:
                       for tests and CPU demos, random weights only.
    ``tiny64``         the same at 64x64 (four resolution levels).

Random weights (``checkpoint=None``) are drawn from ``init_seed`` and never touch the caller's global
RNG. guided-diffusion zero-initialises the last convolution of every residual block, every attention
projection and the output convolution, so such a model predicts exactly zero noise and every DiffLoss
term and gradient is 0: :func:`randomize_zero_init_` re-draws those layers, and ``load_adm`` does it for
every random prior.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.utils.checkpoint
from torch import nn

from .nets import count_parameters

log = logging.getLogger(__name__)

with warnings.catch_warnings():
    # guided-diffusion decorates its checkpoint function with the deprecated torch.cuda.amp.custom_fwd.
    warnings.simplefilter("ignore", FutureWarning)
    from guided_diffusion import unet as _gd_unet
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

__all__ = [
    "PRIOR_CONFIGS", "PRIOR_CHECKPOINTS", "CheckpointInfo", "PriorCheckpointMismatch",
    "prior_kwargs", "load_adm", "randomize_zero_init_", "zero_initialised_layers", "freeze_",
    "convert_prior_dtype_", "set_activation_checkpointing", "activation_checkpointing_mode", "CHECKPOINT_IMPLS",
    "guided_diffusion_checkpoint_gives_input_grads", "compile_prior_", "count_parameters",
    "count_prior_parameters", "size_multiple", "describe_valid_sizes", "clone_prior", "PRIOR_FORMAT",
    "resolve_prior_path", "read_prior_file", "build_trainable_prior", "BUILTIN_PRIOR_FILE", "BUILTIN_PRIOR_SHA256",
    "PRIOR_WORDS", "builtin_prior_path", "resolve_prior_spec", "load_prior",
]

# ---------------------------------------------------------------------------------------------------
# Registry: name -> create_model_and_diffusion keyword arguments (on top of model_and_diffusion_defaults())
# ---------------------------------------------------------------------------------------------------
_ADM_FAMILY = dict(
    class_cond=False,
    learn_sigma=True,
    diffusion_steps=1000,
    noise_schedule="linear",
    resblock_updown=True,
    use_scale_shift_norm=True,
)

PRIOR_CONFIGS: dict[str, dict[str, Any]] = {
    # The paper's flags (PAPER.md; openai/guided-diffusion README, "256x256 model (unconditional)").
    "adm256-uncond": dict(
        _ADM_FAMILY,
        attention_resolutions="32,16,8",
        image_size=256,
        num_channels=256,
        num_head_channels=64,
        num_res_blocks=2,
    ),
    # 3 levels (32, 16, 8 px): inputs must be multiples of 4. 32 channels is the floor (GroupNorm(32)).
    "tiny": dict(
        _ADM_FAMILY,
        attention_resolutions="16,8",
        image_size=32,
        num_channels=32,
        channel_mult="1,1,2",
        num_head_channels=32,
        num_res_blocks=1,
    ),
    # 4 levels (64 .. 8 px): inputs must be multiples of 8.
    "tiny64": dict(
        _ADM_FAMILY,
        attention_resolutions="16,8",
        image_size=64,
        num_channels=32,
        channel_mult="1,1,2,2",
        num_head_channels=32,
        num_res_blocks=1,
    ),
    # Mid-size priors to train on a GPU (python -m diffloss.train_prior): the ADM recipe of the 256 px model
    # (2 res blocks, 64-channel heads, attention at 32/16/8 px) with fewer channels and levels.
    "adm64": dict(
        _ADM_FAMILY,
        attention_resolutions="32,16,8",
        image_size=64,
        num_channels=128,
        channel_mult="1,2,3,4",
        num_head_channels=64,
        num_res_blocks=2,
    ),
    "adm128": dict(
        _ADM_FAMILY,
        attention_resolutions="32,16,8",
        image_size=128,
        num_channels=128,
        channel_mult="1,1,2,3,4",
        num_head_channels=64,
        num_res_blocks=2,
    ),
}

#: The built-in trained prior, shipped with the package (python -m diffloss.train_prior on mini-CUB's clean
#: train split; the command, seed and step count are in docs/prior.md). ``--prior builtin`` everywhere.
BUILTIN_PRIOR_FILE = Path(__file__).resolve().parent / "priors" / "mini-cub-tiny64.pt"
BUILTIN_PRIOR_SHA256 = "fa853a98ce7502769b431057c15c944592d797b81e942e740c5dfd3bf860371f"
#: The ``--prior`` words every CLI understands besides a path.
PRIOR_WORDS = ("builtin", "random")

#: ``format`` of the self-describing prior files written by ``python -m diffloss.train_prior``
#: (``{"format", "config_name", "kwargs", "state_dict", "step", "meta"}``).
PRIOR_FORMAT = "diffloss-prior/1"


@dataclass(frozen=True)
class CheckpointInfo:
    """Where the released weights of a prior config come from (nothing is ever downloaded)."""

    filename: str
    url: str
    size: str
    num_parameters: int


PRIOR_CHECKPOINTS: dict[str, CheckpointInfo] = {
    "adm256-uncond": CheckpointInfo(
        filename="256x256_diffusion_uncond.pt",
        url="https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
        size="about 2.1 GB",
        num_parameters=552_814_086,
    ),
}

_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class PriorCheckpointMismatch(ValueError):
    """A checkpoint's keys or shapes do not match the UNet built from the chosen config."""


# ---------------------------------------------------------------------------------------------------
# Config handling
# ---------------------------------------------------------------------------------------------------
def _config_name(config: str | Mapping[str, Any]) -> str:
    return config if isinstance(config, str) else "<custom config>"


def prior_kwargs(config: str | Mapping[str, Any] = "adm256-uncond") -> dict[str, Any]:
    """Full ``create_model_and_diffusion`` kwargs for ``config``.

    ``config`` is a :data:`PRIOR_CONFIGS` name or a dict of overrides of guided-diffusion's
    ``model_and_diffusion_defaults()`` (so any released guided-diffusion checkpoint can be described).
    """
    if isinstance(config, str):
        if config not in PRIOR_CONFIGS:
            raise ValueError(
                f"unknown prior config {config!r}; valid names: {sorted(PRIOR_CONFIGS)} "
                "(or pass a dict of create_model_and_diffusion keyword arguments)"
            )
        overrides = PRIOR_CONFIGS[config]
    elif isinstance(config, Mapping):
        overrides = dict(config)
    else:
        raise TypeError(f"config must be a prior name or a dict of kwargs, got {type(config).__name__}")
    kwargs = model_and_diffusion_defaults()
    unknown = sorted(set(overrides) - set(kwargs))
    if unknown:
        raise ValueError(
            f"unknown create_model_and_diffusion argument(s) {unknown} in config {_config_name(config)}; "
            f"valid ones: {sorted(kwargs)}"
        )
    kwargs.update(overrides)
    return kwargs


def _build(kwargs: Mapping[str, Any], device: torch.device | str) -> tuple[nn.Module, Any]:
    kw = dict(kwargs)
    kw["use_fp16"] = False  # precision is load_adm's dtype argument (convert_prior_dtype_), not a flag
    with torch.device(device):
        return create_model_and_diffusion(**kw)


# ---------------------------------------------------------------------------------------------------
# Zero-initialised layers
# ---------------------------------------------------------------------------------------------------
def zero_initialised_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers guided-diffusion zero-initialises (``zero_module``): the last convolution of each
    ResBlock, each AttentionBlock's ``proj_out`` and the UNet's output convolution. (name, module)."""
    names = {id(m): n for n, m in model.named_modules()}
    found: list[tuple[str, nn.Module]] = []
    for module in model.modules():
        if isinstance(module, _gd_unet.ResBlock):
            layer = module.out_layers[-1]
        elif isinstance(module, _gd_unet.AttentionBlock):
            layer = module.proj_out
        elif isinstance(module, _gd_unet.UNetModel):
            layer = module.out[-1]
        else:
            continue
        found.append((names[id(layer)], layer))
    return found


@torch.no_grad()
def randomize_zero_init_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw guided-diffusion's zero-initialised layers in place (PyTorch's default conv init,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases) from ``generator``; returns ``model``.

    A freshly built UNet outputs exactly 0 and DiffLoss's ``nat`` term and gradient vanish; use this
    for random priors in tests and benchmarks. Values are drawn on the generator's device and copied,
    so the result does not depend on where the model lives.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    layers = zero_initialised_layers(model)
    if not layers:
        raise ValueError(
            f"found no guided-diffusion ResBlock/AttentionBlock/UNetModel in {type(model).__name__}; "
            "randomize_zero_init_ expects a guided_diffusion UNetModel"
        )
    for _, layer in layers:
        weight = torch.empty(layer.weight.shape, dtype=torch.float32, device=generator.device)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        layer.weight.copy_(weight)
        if layer.bias is not None:
            fan_in = weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            bias = torch.empty(layer.bias.shape, dtype=torch.float32, device=generator.device)
            bias.uniform_(-bound, bound, generator=generator)
            layer.bias.copy_(bias)
    return model


# ---------------------------------------------------------------------------------------------------
# Freezing, precision, checkpointing, compilation
# ---------------------------------------------------------------------------------------------------
def _train_keeps_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    # A frozen prior stays in eval mode whatever its parent asks (torchmetrics' _NoTrainLpips).
    return nn.Module.train(self, False)


_train_keeps_eval.__name__ = "train"  # pickle restores bound methods by name


def freeze_(model: nn.Module) -> nn.Module:
    """``eval()`` + ``requires_grad_(False)`` in place, and make ``model.train()`` keep eval mode.

    If the installed guided-diffusion cannot differentiate its checkpointed blocks with frozen
    parameters (openai's original code, see :func:`guided_diffusion_checkpoint_gives_input_grads`), the
    blocks are rerouted around its ``checkpoint()`` so that input gradients still flow.
    """
    model.requires_grad_(False)
    model.train = types.MethodType(_train_keeps_eval, model)  # instance-level override
    model.eval()
    if _gd_blocks(model) and not guided_diffusion_checkpoint_gives_input_grads():
        _reroute_blocks(model, checkpoint=activation_checkpointing_mode(model) != "off")
    return model


def convert_prior_dtype_(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Run the UNet's torso in ``dtype`` (float32, float16 or bfloat16), in place.

    Mirrors guided-diffusion's own ``convert_to_fp16`` / ``use_fp16``: the convolutions of
    input/middle/output blocks are cast and ``model.dtype`` (the type the input is cast to inside
    ``forward``) is set; GroupNorm, the timestep embedding and the output head stay float32, so the
    UNet's output is float32 whatever ``dtype`` is. For mixed precision on a GPU prefer float32
    weights under ``torch.autocast``.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES.values())}, got {dtype}")
    torso = [model.input_blocks, model.middle_block, model.output_blocks]
    for part in torso:
        for module in part.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                module.weight.data = module.weight.data.to(dtype)
                if module.bias is not None:
                    module.bias.data = module.bias.data.to(dtype)
    model.dtype = dtype
    return model


CHECKPOINT_IMPLS = ("torch", "guided-diffusion")


@functools.lru_cache(maxsize=None)
def guided_diffusion_checkpoint_gives_input_grads() -> bool:
    """Whether the installed guided-diffusion's ``checkpoint`` / ``CheckpointFunction`` returns the input
    gradient of a block whose parameters are frozen (probed once on a 2x2 linear layer, float32).

    guided-diffusion-sdk 1.0.0 (our pinned dependency) does: it differentiates only the saved tensors
    that require grad. openai/guided-diffusion's original ``CheckpointFunction`` calls
    ``torch.autograd.grad(outputs, inputs + params)`` on all parameters, which raises "One of the
    differentiated Tensors does not require grad" when they are frozen, and its ``AttentionBlock``
    checkpoints unconditionally (``checkpoint(..., True)``), so with that code a frozen prior gives no
    input gradient at all unless the blocks are rerouted (:func:`freeze_` does it).
    """
    from guided_diffusion import nn as gd_nn

    layer = nn.Linear(2, 2).requires_grad_(False)
    x = torch.ones(1, 2, requires_grad=True)
    try:
        with torch.enable_grad(), torch.autocast("cpu", enabled=False):
            gd_nn.checkpoint(layer, (x,), layer.parameters(), True).sum().backward()
    except RuntimeError:
        return False
    return x.grad is not None and torch.allclose(x.grad, layer.weight.detach().sum(0, keepdim=True))


def _block_forward(self: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    # Replaces guided-diffusion's `checkpoint(self._forward, ..., self.use_checkpoint)` dispatch, bound
    # per instance with types.MethodType (deepcopy/clone_prior rebinds it to the copy).
    if self._diffloss_checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(self._forward, *args, use_reentrant=False)
    return self._forward(*args)


_block_forward.__name__ = "forward"


def _gd_blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (_gd_unet.ResBlock, _gd_unet.AttentionBlock))]


def _reroute_blocks(model: nn.Module, checkpoint: bool) -> None:
    for block in _gd_blocks(model):
        block.use_checkpoint = False
        block._diffloss_checkpoint = bool(checkpoint)
        block.forward = types.MethodType(_block_forward, block)


def _restore_blocks(model: nn.Module, use_checkpoint: bool) -> None:
    for block in _gd_blocks(model):
        block.use_checkpoint = bool(use_checkpoint)
        block.__dict__.pop("forward", None)
        block.__dict__.pop("_diffloss_checkpoint", None)


def activation_checkpointing_mode(model: nn.Module) -> str:
    """``"off"``, ``"torch"`` or ``"guided-diffusion"``: how the UNet's blocks are checkpointed now."""
    blocks = _gd_blocks(model)
    if any(getattr(b, "_diffloss_checkpoint", False) for b in blocks):
        return "torch"
    if any(b.use_checkpoint for b in blocks):
        return "guided-diffusion"
    return "off"


def set_activation_checkpointing(model: nn.Module, enabled: bool = True, impl: str = "torch") -> nn.Module:
    """Recompute the activations of every ResBlock and AttentionBlock in the backward pass (in place).

    Memory for the restored branch's backward drops to the block inputs; the price is one more forward
    of each block during backward (about +1 UNet forward per step).

    ``impl="torch"`` (default): ``torch.utils.checkpoint`` (non-reentrant) around each block's
    ``_forward``. Gives the input gradient with frozen parameters under any autocast, CPU included.
    ``impl="guided-diffusion"``: the UNet's own ``use_checkpoint`` flag. Verified (tests): with
    guided-diffusion-sdk 1.0.0 it gives the same input gradient as no checkpointing in float32; it
    replays CUDA autocast in the backward pass (``custom_bwd``) but not CPU autocast, where the
    recomputation fails with a dtype error, and openai's original ``CheckpointFunction`` cannot
    differentiate through frozen parameters at all (see
    :func:`guided_diffusion_checkpoint_gives_input_grads`); then this raises ValueError.
    ``enabled=False`` turns both off.
    """
    if impl not in CHECKPOINT_IMPLS:
        raise ValueError(f"unknown checkpointing impl {impl!r}; valid: {list(CHECKPOINT_IMPLS)}")
    if not _gd_blocks(model):
        raise ValueError(f"{type(model).__name__} has no guided-diffusion ResBlock/AttentionBlock (not a UNetModel?)")
    gd_ok = guided_diffusion_checkpoint_gives_input_grads()
    if enabled and impl == "guided-diffusion" and not gd_ok:
        raise ValueError(
            "the installed guided_diffusion's CheckpointFunction gives no input gradient when the prior's "
            "parameters are frozen (openai's original code differentiates w.r.t. all parameters); use "
            "impl='torch' or install guided-diffusion-sdk==1.0.0"
        )
    if enabled and impl == "torch":
        _reroute_blocks(model, checkpoint=True)
    elif gd_ok:
        _restore_blocks(model, use_checkpoint=bool(enabled))
    else:
        _reroute_blocks(model, checkpoint=False)  # bypass the broken checkpoint() entirely
    return model


def compile_prior_(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile`` the UNet's blocks in place (``nn.Module.compile`` on each input/middle/output
    block, the time embedding and the head). ``middle_block`` itself stays eager so h-space forward
    hooks can come and go without recompilation. ``compile_kwargs`` go to ``torch.compile``.

    Dynamo caches compiled code per Python function, and all blocks share guided-diffusion's few
    ``forward`` functions (one guard-failing variant per block structure and input shape), so the
    default ``torch._dynamo.config.recompile_limit`` (8) would silently leave most blocks eager; it
    is raised (process-wide) to cover every block at four input shapes. Shapes are static by default
    (``dynamic=False``: a training run sees one or two shapes; inductor 2.14 fails on the symbolic shapes
    these blocks give, "cannot determine truth value of Relational"); pass ``dynamic=None`` to override.
    """
    import torch._dynamo

    compile_kwargs.setdefault("dynamic", False)
    parts: list[nn.Module] = [model.time_embed, model.out]
    parts += list(model.input_blocks) + list(model.middle_block) + list(model.output_blocks)
    needed = 4 * len(parts) + 8
    config = torch._dynamo.config
    if config.recompile_limit < needed:
        log.info("raising torch._dynamo.config.recompile_limit from %d to %d for the prior's %d compiled blocks",
                 config.recompile_limit, needed, len(parts))
        config.recompile_limit = needed
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, needed)
    for part in parts:
        part.compile(**compile_kwargs)
    return model


def count_prior_parameters(config: str | Mapping[str, Any] = "adm256-uncond") -> int:
    """Parameters of the UNet built from ``config``, counted on the meta device (no memory, ~0.2 s)."""
    model, _ = _build(prior_kwargs(config), "meta")
    return count_parameters(model)


def size_multiple(model: nn.Module) -> int:
    """Height and width given to the UNet must be multiples of this (2 ** number of downsamplings)."""
    return 2 ** (len(model.channel_mult) - 1)


def describe_valid_sizes(model: nn.Module) -> str:
    """One sentence on which input sizes the UNet takes and which one it was trained for."""
    m = size_multiple(model)
    s = model.image_size
    return (
        f"height and width must be positive multiples of {m} (the UNet halves the resolution "
        f"{len(model.channel_mult) - 1} times, e.g. {m}, {2 * m}, ..., {s}); the prior was trained at "
        f"{s}x{s}, the size to use (random {s}x{s} crops)"
    )


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------
def _missing_checkpoint_message(path: Path, config: str | Mapping[str, Any]) -> str:
    info = PRIOR_CHECKPOINTS.get(config) if isinstance(config, str) else None
    if info is None:
        info = PRIOR_CHECKPOINTS["adm256-uncond"]
        which = (
            f"no released weights are registered for config {_config_name(config)!r}; the paper's prior is"
        )
    else:
        which = f"config {config!r} expects"
    return (
        f"prior checkpoint not found: {str(path)!r}. {which} {info.filename!r} ({info.size}), "
        f"from the openai/guided-diffusion README (https://github.com/openai/guided-diffusion): "
        f"{info.url} . Download it yourself (this toolkit never downloads weights) and pass its path "
        f"with --prior PATH (python -m diffloss.train ...) or load_adm(checkpoint=PATH); "
        f"checkpoint=None builds an untrained prior for tests."
    )


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "ema"):  # common wrappers around the bare state dict
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PriorCheckpointMismatch(
            f"{str(path)!r} does not hold a UNet state dict (found {type(obj).__name__}); expected the "
            "dict of tensors guided-diffusion saves (e.g. 256x256_diffusion_uncond.pt)"
        )
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


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

    parts = [f"checkpoint {str(path)!r} does not match prior config {_config_name(config)!r}:"]
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
            "256x256_diffusion_uncond.pt or a prior.pt written by python -m diffloss.train_prior"
        ) from None


def resolve_prior_path(checkpoint: str | Path, config: str | Mapping[str, Any] | None = None) -> Path:
    """The file behind ``checkpoint``: the path itself, or inside a folder its ``prior.pt`` (a
    ``diffloss.train_prior`` run) or the config's released file. Raises FileNotFoundError naming the file
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


def read_prior_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """``(state_dict, kwargs or None, info)`` of a prior file. ``kwargs``: the ``create_model_and_diffusion``
    arguments stored in a self-describing ``diffloss.train_prior`` file (None for a bare guided-diffusion
    state dict); ``info``: its ``config_name``, ``step`` and ``meta`` ({} for a bare one)."""
    path = Path(path)
    obj = _load_state_dict_file(path)
    if isinstance(obj, Mapping) and obj.get("format") == PRIOR_FORMAT:
        kwargs = obj.get("kwargs")
        if not isinstance(kwargs, Mapping):
            raise PriorCheckpointMismatch(f"{str(path)!r} says {PRIOR_FORMAT} but holds no config (kwargs)")
        info = {k: obj.get(k) for k in ("config_name", "step", "meta")}
        return _unwrap_state_dict(obj["state_dict"], path), dict(kwargs), info
    return _unwrap_state_dict(obj, path), None, {}


def build_trainable_prior(config: str | Mapping[str, Any], seed: int = 0) -> tuple[nn.Module, Any]:
    """A freshly initialised, trainable UNet and its diffusion (guided-diffusion's own init, zero-initialised
    layers included), drawn from ``seed`` without touching the caller's global RNG; in train mode."""
    kwargs = prior_kwargs(config)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        model, diffusion = _build(kwargs, "cpu")
    return model.train(), diffusion


def builtin_prior_path(check_digest: bool = False) -> Path:
    """Path of the built-in trained prior (`BUILTIN_PRIOR_FILE`); FileNotFoundError, naming the command that
    makes it, when the package was installed without it. ``check_digest``: also compare its SHA-256."""
    path = BUILTIN_PRIOR_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the built-in prior {str(path)!r} is missing from this installation; train one with "
            "python -m diffloss.train_prior --config tiny64 --out runs/prior-mini64 and pass --prior "
            "runs/prior-mini64/prior.pt, or --prior random for untrained weights (timing only)"
        )
    if check_digest and BUILTIN_PRIOR_SHA256:
        import hashlib

        digest = hashlib.sha256(path.read_bytes()).hexdigest()
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
            self-describing ``prior.pt`` of ``python -m diffloss.train_prior`` (or its run folder), loaded
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
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES.values())}, got {dtype}")

    if checkpoint is not None:
        path = resolve_prior_path(checkpoint, config)
        sd, stored, info = read_prior_file(path)
        if stored is not None:
            if config is not None and prior_kwargs(config) != prior_kwargs(stored):
                raise PriorCheckpointMismatch(
                    f"{str(path)!r} is a {info.get('config_name')!r} prior (its config is stored in the file), "
                    f"but config {_config_name(config)!r} was asked for; leave the config out (--prior-config) "
                    "to use the file's"
                )
            config = stored
            name = info.get("config_name") or "<custom config>"
        else:
            config = config if config is not None else "adm256-uncond"
            name = _config_name(config)
        kwargs = prior_kwargs(config)
        model, diffusion = _build(kwargs, "meta")  # no 2.2 GB random init just to overwrite it
        _check_state_dict(sd, model, path, config)
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
        model.to(device)
        model.prior_info = {"path": str(path), "config": name, "step": info.get("step"), "kwargs": kwargs}
        log.info("loaded prior %s (%s, %d parameters) from %s", name, _DTYPES[dtype], count_parameters(model), path)
    else:
        config = config if config is not None else "adm256-uncond"
        kwargs = prior_kwargs(config)
        if device.type == "meta":
            model, diffusion = _build(kwargs, "meta")
        else:
            # Third-party init draws from the global CPU generator: fork it so the caller's state is untouched.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(init_seed))
                model, diffusion = _build(kwargs, "cpu")
            randomize_zero_init_(model, torch.Generator().manual_seed(int(init_seed) + 1))
            model.to(device)
            log.warning(
                "untrained prior: %s built with random weights (init_seed=%d). DiffLoss with it is only good "
                "for tests and timing; pass checkpoint=PATH (e.g. 256x256_diffusion_uncond.pt) for real use.",
                _config_name(config), init_seed,
            )
        model.prior_info = {"path": None, "config": _config_name(config), "step": None, "kwargs": kwargs}
    if dtype != torch.float32:
        convert_prior_dtype_(model, dtype)
    freeze_(model)
    return model, diffusion


def clone_prior(model: nn.Module) -> nn.Module:
    """A deep copy of a (frozen) prior, e.g. to give a benchmark variant its own checkpointing flags."""
    return freeze_(copy.deepcopy(model))
