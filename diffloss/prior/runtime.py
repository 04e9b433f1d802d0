"""The run-time state of a guided-diffusion UNet used as a frozen prior: freezing, precision, activation
checkpointing, compilation, the sizes it takes, and re-drawing its zero-initialised layers.

All functions change the model in place and return it (``freeze_(model)``), as guided-diffusion's own
``convert_to_fp16`` does. guided-diffusion zero-initialises the last convolution of every residual block,
every attention projection and the output convolution, so a freshly built UNet predicts exactly zero noise
and every DiffLoss term and gradient is 0: :func:`randomize_zero_init_` re-draws those layers, and
``diffloss.prior.load_prior`` does it for every random prior.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import types
import warnings
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

with warnings.catch_warnings():
    # guided-diffusion decorates its checkpoint function with the deprecated torch.cuda.amp.custom_fwd.
    warnings.simplefilter("ignore", FutureWarning)
    from guided_diffusion import unet as _gd_unet

log = logging.getLogger(__name__)

__all__ = ["PRIOR_DTYPES", "CHECKPOINT_IMPLS", "zero_initialised_layers", "randomize_zero_init_", "freeze_",
           "clone_prior", "convert_prior_dtype_", "guided_diffusion_checkpoint_gives_input_grads",
           "activation_checkpointing_mode", "set_activation_checkpointing", "compile_prior_", "size_multiple",
           "describe_valid_sizes"]

#: The UNet torso precisions `convert_prior_dtype_` (and ``load_prior``'s ``dtype``) take, with their names.
PRIOR_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


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
# Freezing and precision
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
    if dtype not in PRIOR_DTYPES:
        raise ValueError(f"dtype must be one of {list(PRIOR_DTYPES.values())}, got {dtype}")
    torso = [model.input_blocks, model.middle_block, model.output_blocks]
    for part in torso:
        for module in part.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                module.weight.data = module.weight.data.to(dtype)
                if module.bias is not None:
                    module.bias.data = module.bias.data.to(dtype)
    model.dtype = dtype
    return model


def clone_prior(model: nn.Module) -> nn.Module:
    """A deep copy of a (frozen) prior, e.g. to give a benchmark variant its own checkpointing flags."""
    return freeze_(copy.deepcopy(model))


# ---------------------------------------------------------------------------------------------------
# Activation checkpointing, compilation, sizes
# ---------------------------------------------------------------------------------------------------
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

