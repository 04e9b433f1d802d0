"""Restoration networks: a registry of small image-to-image nets mapping ``[0, 1] NCHW float`` to the same.

``NETS``, a `runkit.registry.Registry` of name -> factory(**kw) -> nn.Module,
filled where each network is defined (``@NETS.register("name")``):

- ``small-unet``  a compact UNet (two stride-2 levels, skip connections, residual output); the default
  network of the training CLI and of the demo restorers.
- ``iat``         the Illumination Adaptive Transformer of Cui et al. (BMVC 2022, "You Only Need 90K
  Parameters to Adapt Light"), written by us from the paper: a full-resolution local branch predicting a
  per-pixel multiplicative and additive map, and a global branch whose learnable queries attend to a
  1/4-resolution embedding and predict a 3x3 colour matrix and a gamma. The network the paper's Table 2
  uses for low light.
- ``dncnn``       DnCNN (Zhang et al., TIP 2017): a plain conv/BN/ReLU stack predicting the residual.

Any other network plugs in as ``"pkg.module:factory"`` (see `build_net`), or registers itself with
``@NETS.register("my-net")``. Every module here has a
``pad_multiple`` attribute: the factor its input height and width must be divisible by; `restore_tensor`
pads (reflect) to it and crops back, so any image size works at inference.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from runkit.registry import Registry
from runkit.runtime import count_parameters

log = logging.getLogger(__name__)

__all__ = [
    "NETS",
    "DEFAULT_NET",
    "SmallUNet",
    "IAT",
    "DnCNN",
    "build_net",
    "parameter_counts",
    "pad_multiple_of",
    "restore_tensor",
    "clamp01_ste",
]

DEFAULT_NET = "small-unet"


def _plugin_factory(spec: str, factory):
    if not callable(factory):
        raise TypeError(f"restoration net {spec!r} is not callable")
    return factory


#: name -> factory(**kwargs) -> nn.Module; ``NETS["pkg.module:factory"]`` imports a plugin factory.
NETS: Registry = Registry("restoration net", plugin=_plugin_factory)


def clamp01_ste(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in the forward pass, identity in the backward pass (straight-through).

    A hard clamp gives zero gradient to every pixel that overshoots, so an under-exposed network output
    could never be pulled back by the loss; the straight-through version keeps the [0, 1] contract of the
    output while letting the loss see the overshoot.
    """
    return x + (x.clamp(0.0, 1.0) - x).detach()


def _check_image_batch(x: torch.Tensor, who: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who} expects a torch.Tensor [0, 1] NCHW float, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{who} expects a [0, 1] NCHW float tensor with 3 channels, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who} expects a float tensor in [0, 1], got dtype {x.dtype}")


# --------------------------------------------------------------------------------------------------
# small-unet
# --------------------------------------------------------------------------------------------------
class _ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        )


@NETS.register("small-unet")
class SmallUNet(nn.Module):
    """A compact UNet: ``depth`` stride-2 levels of conv blocks (``base * 2**level`` channels), bilinear
    upsampling with skip connections, and a residual output ``clamp01_ste(x + head(features))``.

    The head is zero-initialised so the untrained network is the identity: training starts from "do no
    harm", which matters for the short CPU runs of the demo. Input: ``[0, 1] NCHW float``, H and W
    divisible by ``2**depth`` (see ``pad_multiple``). Output: same shape, in [0, 1].
    """

    def __init__(self, base: int = 16, depth: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        if base < 1 or depth < 1:
            raise ValueError(f"SmallUNet needs base >= 1 and depth >= 1, got base={base}, depth={depth}")
        if in_channels != 3:
            raise ValueError(f"SmallUNet maps RGB to RGB; in_channels must be 3, got {in_channels}")
        self.depth = depth
        self.pad_multiple = 2**depth
        chans = [base * 2**i for i in range(depth + 1)]
        self.stem = _ConvBlock(in_channels, chans[0])
        self.downs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(depth))
        self.enc = nn.ModuleList(_ConvBlock(chans[i + 1], chans[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(nn.Conv2d(chans[i + 1], chans[i], 1) for i in range(depth))
        self.dec = nn.ModuleList(_ConvBlock(2 * chans[i], chans[i]) for i in range(depth))
        self.head = nn.Conv2d(chans[0], 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, "SmallUNet")
        if x.shape[-2] % self.pad_multiple or x.shape[-1] % self.pad_multiple:
            raise ValueError(
                f"SmallUNet(depth={self.depth}) needs H and W divisible by {self.pad_multiple}, got "
                f"{tuple(x.shape[-2:])}; pad the input (restoration.nets.restore_tensor does it)"
            )
        feats = [self.stem(x)]
        for down, enc in zip(self.downs, self.enc):
            feats.append(enc(F.leaky_relu(down(feats[-1]), 0.2)))
        y = feats[-1]
        for i in reversed(range(self.depth)):
            y = F.interpolate(y, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            y = self.dec[i](torch.cat([self.ups[i](y), feats[i]], dim=1))
        return clamp01_ste(x + self.head(y))


# --------------------------------------------------------------------------------------------------
# IAT (Cui et al., BMVC 2022)
# --------------------------------------------------------------------------------------------------
class _AffChannel(nn.Module):
    """IAT's normalisation replacement: a learnable channel mixing (initialised to identity) followed by
    a per-channel scale and shift, applied to NCHW features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.color = nn.Parameter(torch.eye(dim))
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,dc->bdhw", x, self.color) * self.alpha + self.beta


class _IATConvBlock(nn.Module):
    """The local branch's block (paper Fig. 3, "PEM + light normalisation + depth-wise conv attention +
    MLP"): conv positional encoding, then two pre-normalised residual units scaled by small learnable
    layer-scales (1e-4 at init). Stochastic depth is left out so training is deterministic."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, init_values: float = 1e-4) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = _AffChannel(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.gamma_1 = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))
        self.norm2 = _AffChannel(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.gamma_2 = nn.Parameter(init_values * torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.gamma_1 * self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class _IATLocal(nn.Module):
    """Local branch: per-pixel multiplicative map M (ReLU) and additive map A (tanh) at full resolution."""

    def __init__(self, dim: int = 16, blocks: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, dim, 3, padding=1)
        self.mul_blocks = nn.Sequential(*[_IATConvBlock(dim) for _ in range(blocks)], nn.Conv2d(dim, 3, 3, padding=1), nn.ReLU())
        self.add_blocks = nn.Sequential(*[_IATConvBlock(dim) for _ in range(blocks)], nn.Conv2d(dim, 3, 3, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.leaky_relu(self.conv1(x), 0.2)
        return self.mul_blocks(f), self.add_blocks(f)


class _QueryAttention(nn.Module):
    """Multi-head attention of ``n_queries`` learnable queries over the image tokens (the paper's
    "global prediction module"): query 0 drives gamma, queries 1..9 the 3x3 colour matrix."""

    def __init__(self, dim: int, heads: int, n_queries: int = 10) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"IAT global branch: dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Parameter(torch.ones(1, n_queries, dim))
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        k = self.k(x).reshape(b, n, h, d).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, d).transpose(1, 2)
        q = self.q.expand(b, -1, -1).reshape(b, -1, h, d).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, -1, c))


class _IATGlobal(nn.Module):
    """Global branch: two stride-2 convs (1/4 resolution), a query-attention block, and linear heads for
    gamma (around 1) and the colour correction matrix (around identity)."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(3, dim // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(dim // 2),
            nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
            nn.BatchNorm2d(dim),
        )
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _QueryAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma_linear = nn.Linear(dim, 1)
        self.color_linear = nn.Linear(dim, 1)
        self.register_buffer("gamma_base", torch.ones(1))
        self.color_base = nn.Parameter(torch.eye(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.embed(x)
        f = f + self.pos_embed(f)
        tokens = f.flatten(2).transpose(1, 2)
        q = self.attn(self.norm1(tokens))
        q = q + self.mlp(self.norm2(q))
        gamma = self.gamma_linear(q[:, 0]).squeeze(-1) + self.gamma_base  # [B]
        color = self.color_linear(q[:, 1:]).squeeze(-1).view(-1, 3, 3) + self.color_base  # [B, 3, 3]
        return gamma, color


@NETS.register("iat")
class IAT(nn.Module):
    """Illumination Adaptive Transformer (Cui et al., BMVC 2022), ~90k parameters.

    ``out = clamp(C @ (x * M + A), 1e-8, 1) ** gamma`` with M, A from the local branch and the colour matrix C
    and gamma from the global branch (``with_global=False`` keeps only ``x * M + A``). Input and output:
    ``[0, 1] NCHW float``, any size (the global branch pools over tokens; ``pad_multiple`` 4 keeps its
    stride-2 grid exact). gamma is kept >= ``min_gamma`` so the output stays in [0, 1].
    """

    def __init__(self, dim: int = 16, blocks: int = 3, global_dim: int = 64, heads: int = 4,
                 with_global: bool = True, min_gamma: float = 0.05) -> None:
        super().__init__()
        self.pad_multiple = 4
        self.local_net = _IATLocal(dim, blocks)
        self.with_global = with_global
        self.min_gamma = float(min_gamma)
        self.global_net = _IATGlobal(global_dim, heads) if with_global else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, "IAT")
        mul, add = self.local_net(x)
        y = x * mul + add
        if self.global_net is None:
            return clamp01_ste(y)
        gamma, color = self.global_net(x)
        y = torch.einsum("bchw,bdc->bdhw", y, color).clamp(1e-8, 1.0)
        return y ** gamma.clamp(min=self.min_gamma).view(-1, 1, 1, 1)


# --------------------------------------------------------------------------------------------------
# DnCNN (Zhang et al., TIP 2017)
# --------------------------------------------------------------------------------------------------
@NETS.register("dncnn")
class DnCNN(nn.Module):
    """DnCNN: conv+ReLU, ``depth - 2`` x (conv+BN+ReLU), conv; predicts the residual (the degradation) and
    returns ``clamp01_ste(x - residual)``. Paper defaults: depth 17, 64 features. ``[0, 1] NCHW float``."""

    def __init__(self, depth: int = 17, features: int = 64) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN needs depth >= 3, got {depth}")
        self.pad_multiple = 1
        layers: list[nn.Module] = [nn.Conv2d(3, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, 3, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, "DnCNN")
        return clamp01_ste(x - self.body(x))


def build_net(name_or_spec: str, **kwargs) -> nn.Module:
    """Build a restoration network from a registry name (`NETS`) or ``"pkg.module:factory"``.

    ``kwargs`` go to the factory. The result must be an ``nn.Module`` mapping ``[0, 1] NCHW`` to
    ``[0, 1] NCHW``; parameters are drawn from torch's global RNG, so seed around the call (the training
    harness does, inside ``torch.random.fork_rng``).
    """
    if not isinstance(name_or_spec, str) or not name_or_spec:
        raise TypeError(f"network must be a registry name or 'pkg.module:factory' string, got {name_or_spec!r}")
    net = NETS[name_or_spec](**kwargs)  # an unknown name: UnknownNameError listing the valid ones
    if not isinstance(net, nn.Module):
        raise TypeError(f"network factory {name_or_spec!r} returned {type(net).__name__}, expected an nn.Module")
    return net


def parameter_counts() -> dict[str, int]:
    """Trainable parameter count of every registry network at its default arguments."""
    with torch.random.fork_rng(devices=[]):
        return {name: count_parameters(build_net(name)) for name in NETS}


def pad_multiple_of(net: nn.Module) -> int:
    """The factor H and W must be divisible by for ``net`` (its ``pad_multiple`` attribute, default 1).
    Looks through DDP/DataParallel wrappers (``.module``)."""
    inner = getattr(net, "module", net)
    m = int(getattr(inner, "pad_multiple", 1) or 1)
    if m < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {m}")
    return m


def restore_tensor(net: nn.Module, x: torch.Tensor, multiple: int | None = None) -> torch.Tensor:
    """Apply ``net`` to ``x`` (``[0, 1] NCHW float``) of any size: pad bottom/right to a multiple of the
    net's ``pad_multiple`` (reflect, or replicate when the image is too small to reflect), run, crop back.
    Returns ``[0, 1] NCHW float`` of the input's shape. No gradient bookkeeping is changed."""
    _check_image_batch(x, "restore_tensor")
    m = pad_multiple_of(net) if multiple is None else int(multiple)
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    y = net(x)
    if y.shape[-2:] != x.shape[-2:] or y.shape[:2] != x.shape[:2]:
        raise ValueError(f"restoration network changed the image shape: {tuple(x.shape)} -> {tuple(y.shape)}")
    return y[..., :h, :w].clamp(0.0, 1.0)


def _demo_param_table() -> str:  # pragma: no cover - used to fill the README table
    rows = [f"| `{k}` | {v:,} |" for k, v in parameter_counts().items()]
    return "\n".join(["| network | parameters |", "|---|---|", *rows])


if __name__ == "__main__":  # pragma: no cover
    print(_demo_param_table())
