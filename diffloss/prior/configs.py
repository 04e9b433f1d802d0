"""The prior configs: one registry of guided-diffusion ``create_model_and_diffusion`` arguments, keyed by name.

Every entry is the ADM recipe of the paper's 256 px model (:data:`ADM_BASE`) plus the few flags in which
it differs, so the table below says at a glance what makes ``tiny`` tiny. Names:

    ``adm256-uncond``  the paper's prior (ImageNet 256x256 unconditional ADM, 552,814,086 parameters);
                       weights: ``256x256_diffusion_uncond.pt`` (about 2.1 GB, see :data:`PRIOR_CHECKPOINTS`).
    ``tiny``           32x32, the same architecture family with 32-64 channels: tests and CPU demos.
    ``tiny64``         the same at 64x64 (four resolution levels); the built-in trained prior.
    ``adm64``, ``adm128``  mid-size priors to train on a GPU (``python -m diffloss.prior.train``).

Add your own with ``PRIOR_CONFIGS.add("name", dict(ADM_BASE, ...))``, or name a dict (or a function
returning one) as ``"pkg.module:attr"`` wherever a config name is taken.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from runkit.registry import Registry

from runkit.runtime import count_parameters

with warnings.catch_warnings():
    # guided-diffusion decorates its checkpoint function with the deprecated torch.cuda.amp.custom_fwd.
    warnings.simplefilter("ignore", FutureWarning)
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

__all__ = ["PRIOR_CONFIGS", "ADM_BASE", "PRIOR_CHECKPOINTS", "CheckpointInfo", "PriorConfigs", "prior_kwargs",
           "config_name", "build_unet", "count_prior_parameters"]


class PriorConfigs(Registry[dict]):
    """The prior-config registry: ``PRIOR_CONFIGS["tiny"]`` is a dict of ``create_model_and_diffusion`` arguments."""


def _plugin_config(spec: str, obj: Any) -> dict:
    value = obj() if callable(obj) else obj
    if not isinstance(value, Mapping):
        raise ValueError(f"prior config {spec!r} is a {type(value).__name__}; expected a dict of "
                         "create_model_and_diffusion keyword arguments (or a function returning one)")
    return dict(value)


#: name -> ``create_model_and_diffusion`` keyword arguments (on top of ``model_and_diffusion_defaults()``).
PRIOR_CONFIGS: PriorConfigs = PriorConfigs("prior config", plugin=_plugin_config)

#: The paper's flags (PAPER.md; openai/guided-diffusion README, "256x256 model (unconditional)"), less the size.
ADM_BASE: dict[str, Any] = dict(
    class_cond=False, learn_sigma=True, diffusion_steps=1000, noise_schedule="linear", resblock_updown=True,
    use_scale_shift_norm=True, attention_resolutions="32,16,8", num_head_channels=64, num_res_blocks=2,
)
# The tiny priors: 32 channels is the floor (GroupNorm(32)), one res block, attention at 16 and 8 px.
_TINY = dict(attention_resolutions="16,8", num_channels=32, num_head_channels=32, num_res_blocks=1)

for _name, _differences in {
    "adm256-uncond": dict(image_size=256, num_channels=256),
    "tiny": dict(_TINY, image_size=32, channel_mult="1,1,2"),        # 3 levels: sizes multiples of 4
    "tiny64": dict(_TINY, image_size=64, channel_mult="1,1,2,2"),    # 4 levels: sizes multiples of 8
    "adm64": dict(image_size=64, num_channels=128, channel_mult="1,2,3,4"),
    "adm128": dict(image_size=128, num_channels=128, channel_mult="1,1,2,3,4"),
}.items():
    PRIOR_CONFIGS.add(_name, {**ADM_BASE, **_differences})
del _name, _differences


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


def config_name(config: str | Mapping[str, Any]) -> str:
    """The name to print for ``config``: itself for a name, ``<custom config>`` for a dict."""
    return config if isinstance(config, str) else "<custom config>"


def prior_kwargs(config: str | Mapping[str, Any] = "adm256-uncond") -> dict[str, Any]:
    """Full ``create_model_and_diffusion`` kwargs for ``config``.

    ``config`` is a :data:`PRIOR_CONFIGS` name, a ``"pkg.module:attr"`` naming such a dict, or a dict of
    overrides of guided-diffusion's ``model_and_diffusion_defaults()`` (so any released guided-diffusion
    checkpoint can be described).
    """
    if isinstance(config, str):
        overrides = PRIOR_CONFIGS[config]  # unknown: UnknownNameError listing the valid names
    elif isinstance(config, Mapping):
        overrides = dict(config)
    else:
        raise TypeError(f"config must be a prior name or a dict of kwargs, got {type(config).__name__}")
    kwargs = model_and_diffusion_defaults()
    unknown = sorted(set(overrides) - set(kwargs))
    if unknown:
        raise ValueError(
            f"unknown create_model_and_diffusion argument(s) {unknown} in config {config_name(config)}; "
            f"valid ones: {sorted(kwargs)}"
        )
    kwargs.update(overrides)
    return kwargs


def build_unet(kwargs: Mapping[str, Any], device: torch.device | str) -> tuple[nn.Module, Any]:
    """``create_model_and_diffusion(**kwargs)`` with its tensors made on ``device`` ("meta": no memory).
    ``use_fp16`` is ignored: precision is `diffloss.prior.convert_prior_dtype_`'s business."""
    kw = dict(kwargs)
    kw["use_fp16"] = False
    with torch.device(device):
        return create_model_and_diffusion(**kw)


def count_prior_parameters(config: str | Mapping[str, Any] = "adm256-uncond") -> int:
    """Parameters of the UNet built from ``config``, counted on the meta device (no memory, ~0.2 s)."""
    model, _ = build_unet(prior_kwargs(config), "meta")
    return count_parameters(model)
