"""The pretrained parts of LPIPS and FID, from local files only (never downloaded)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from runkit.files import load_torch_file, unwrap_state_dict

__all__ = ["LPIPS_NETS", "FID_WEIGHTS", "FID_WEIGHTS_URL", "lpips_backbone_file", "load_lpips", "fid_weights_file",
           "load_fid"]

LPIPS_NETS = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
              "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}
FID_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + FID_WEIGHTS


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def lpips_backbone_file(net: str = "alex") -> Path:
    """Where torchvision keeps the ImageNet backbone of LPIPS ``net`` in the torch hub cache."""
    import torchvision

    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; valid: {sorted(LPIPS_NETS)}")
    enum = getattr(torchvision.models, LPIPS_NETS[net][1]).IMAGENET1K_V1
    return _hub_checkpoints() / os.path.basename(enum.url)


def _read_weights(path: Path, what: str) -> dict:
    """The state dict in ``path`` (``weights_only`` load): one ValueError naming the file for a truncated,
    garbage or pickled-object file (never torch's advice to load with ``weights_only=False``)."""
    return unwrap_state_dict(load_torch_file(path, what), path, wrappers=("state_dict",), expected=what)


def _backbone_state(model, state: dict, path: Path, net: str) -> dict:
    """torchvision's ``features.<i>.*`` keys renamed to the slices of torchmetrics' LPIPS backbone."""
    slice_of = {idx: sname for sname, sl in model.net.named_children() for idx in sl._modules}
    mapped = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "features" and len(parts) >= 3 and parts[1] in slice_of:
            mapped[f"{slice_of[parts[1]]}.{parts[1]}.{'.'.join(parts[2:])}"] = v
    missing = sorted(set(model.net.state_dict()) - set(mapped))
    if missing:
        raise ValueError(f"{path} is not a torchvision {LPIPS_NETS[net][0]} state dict: no weights for {missing[:4]}")
    return mapped


def load_lpips(net: str = "alex", weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """torchmetrics' LPIPS module (frozen, eval) with its backbone loaded from ``weights`` (a torchvision
    state dict such as ``alexnet-owt-7be5be79.pth``) or from the torch hub cache; never downloads."""
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; valid: {sorted(LPIPS_NETS)}")
    what = f"torchvision ImageNet state dict for {LPIPS_NETS[net][0]} (pass one with --lpips-weights PATH)"
    # a given file is checked first: a garbage one fails before torchvision and torchmetrics are imported
    state = _read_weights(Path(weights), what) if weights is not None and Path(weights).is_file() else None
    import torchvision
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    expected = lpips_backbone_file(net)
    path = Path(weights) if weights is not None else expected
    if not path.is_file():
        url = getattr(torchvision.models, LPIPS_NETS[net][1]).IMAGENET1K_V1.url
        raise FileNotFoundError(
            f"LPIPS ({net}) needs the ImageNet backbone weights {expected.name}, not found at {path}. We never "
            f"download: fetch {url} on a machine with internet and put it into {expected.parent} (torch hub "
            "cache) or pass --lpips-weights PATH."
        )
    if state is None:
        state = _read_weights(path, what)
    model = _NoTrainLpips(pretrained=True, net=net, pnet_rand=True)  # linear heads ship with torchmetrics
    model.net.load_state_dict(_backbone_state(model, state, path, net))
    return model.eval().requires_grad_(False).to(device)


def fid_weights_file() -> Path:
    """Where torch-fidelity keeps its InceptionV3 weights in the torch hub cache."""
    return _hub_checkpoints() / FID_WEIGHTS


def load_fid(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """torchmetrics' ``FrechetInceptionDistance`` (2048-d pool features) with the InceptionV3 weights from
    ``weights`` or the torch hub cache; never downloads. Needs torch-fidelity."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise ImportError("FID needs the torch-fidelity package: pip install torch-fidelity") from None
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = Path(weights) if weights is not None else fid_weights_file()
    if not path.is_file():
        raise FileNotFoundError(
            f"FID needs the InceptionV3 weights {FID_WEIGHTS}, not found at {path}. We never download: fetch "
            f"{FID_WEIGHTS_URL} on a machine with internet and put it into {fid_weights_file().parent} (torch hub "
            "cache) or pass --fid-weights PATH."
        )
    # torch-fidelity reads the file with weights_only=False (it may run code in a pickle): only a file that loads
    # as plain tensors gets that far
    _read_weights(path, f"torch-fidelity InceptionV3 state dict {FID_WEIGHTS} (pass one with --fid-weights PATH)")
    return FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=str(path)).to(device)
