"""Image classifiers for Table 2: the registry, backbones with ImageNet weights, and checkpoint loading.

``CLASSIFIERS`` maps the architecture names users type (``--arch``) to factories::

    model = CLASSIFIERS["resnet50"](num_classes=200, weights="imagenet")   # new 200-way head

* ``"vgg16"``, ``"resnet50"``: the torchvision networks the paper fine-tunes; ``weights`` is
  ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` enum, read from the torch hub cache), a local ``.pth``
  path (an ImageNet state dict, e.g. the file torchvision would download) or ``"none"`` (random init, on
  purpose only).
* ``"vgg-mini"``, ``"resnet-mini"``: small members of the same families (3x3 conv stacks + max-pool + FC
  head; basic residual blocks + global pool + linear head), for the built-in mini benchmark. They have no
  pretrained weights and train from scratch on CPU in seconds.
* User code plugs in as ``"pkg.module:factory"`` with the signature ``factory(num_classes, weights) ->
  nn.Module`` mapping ``[B, 3, H, W]`` normalised images to ``[B, num_classes]`` logits.

Every model takes ImageNet-normalised ``float NCHW`` input (see `eval_transform`) and returns logits.
A fine-tuned checkpoint (written by `classifiers.finetune`) records the architecture, the class names, the
preprocessing, the protocol it was trained and measured on (whole images, or box crops as in URIE's CUB-C:
`eval_protocol`, `protocol_transform`) and the clean test accuracy; `load_classifier` rebuilds the model from it.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from cubdata import load_torch_file

log = logging.getLogger(__name__)

__all__ = [
    "CLASSIFIERS",
    "CHECKPOINT_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClassifierArch",
    "build_backbone",
    "build_classifier",
    "classifier_head",
    "URIE_BBOX_SIZE",
    "WHOLE_IMAGE",
    "default_preprocess",
    "describe_protocol",
    "eval_protocol",
    "eval_transform",
    "get_arch",
    "imagenet_weights_file",
    "load_classifier",
    "parse_bbox_size",
    "protocol_preprocess",
    "protocol_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "diffloss-toolkit/classifier-v1"


# --------------------------------------------------------------------------------------------------
# small members of the two families (mini benchmark)
# --------------------------------------------------------------------------------------------------
class ResNetMini(nn.Module):
    """A narrow ResNet (torchvision ``BasicBlock``s, one per stage, widths 16-128) with a linear ``fc``
    head. Input ``[B, 3, H, W]`` (any H, W >= 16), output ``[B, num_classes]`` logits."""

    def __init__(self, num_classes: int = 1000, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            for j in range(n):
                down = None
                if j == 0 and (stride != 1 or cin != w):
                    down = nn.Sequential(nn.Conv2d(cin, w, 1, stride=stride, bias=False), nn.BatchNorm2d(w))
                layers.append(BasicBlock(cin, w, stride=stride if j == 0 else 1, downsample=down))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class VGGMini(nn.Module):
    """A narrow VGG: 3x3 conv + BN + ReLU stages (``cfg``: channels, "M" = 2x2 max-pool), global average
    pooling and a two-layer FC ``classifier`` whose last Linear is the head. Input ``[B, 3, H, W]``
    (H, W >= 16), output ``[B, num_classes]`` logits. (One conv per stage: on the mini benchmark deeper
    stacks trained less reliably from scratch, e.g. 52-92% over four seeds vs 90-97%.)"""

    def __init__(self, num_classes: int = 1000, cfg=(16, "M", 32, "M", 64, "M", 128, "M")) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(cin, 128), nn.ReLU(True), nn.Dropout(0.1), nn.Linear(128, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierArch:
    """One registry entry. Calling it builds the network with a fresh ``num_classes``-way head.

    ``head``: dotted attribute path of the final ``nn.Linear`` (gets the higher learning rate);
    ``img_size`` / ``resize``: the default test preprocessing (resize shorter side, centre crop);
    ``imagenet``: name of the torchvision weights enum member (``None``: no pretrained weights exist).
    """

    name: str
    family: str
    build_imagenet_head: Callable[[], nn.Module] = field(repr=False)
    head: str
    img_size: int
    resize: int
    imagenet: str | None = None
    description: str = ""

    def __call__(self, num_classes: int, weights: str | os.PathLike = "none", *, download: bool = False) -> nn.Module:
        return build_classifier(self.name, num_classes, weights, download=download)


def _tv_resnet50() -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None)


def _tv_vgg16() -> nn.Module:
    from torchvision.models import vgg16

    return vgg16(weights=None)


CLASSIFIERS: dict[str, ClassifierArch] = {
    a.name: a
    for a in (
        ClassifierArch("vgg16", "vgg", _tv_vgg16, "classifier.6", 448, 512, "VGG16_Weights.IMAGENET1K_V1",
                       "torchvision VGG16 (138M parameters), paper's 'V' column"),
        ClassifierArch("resnet50", "resnet", _tv_resnet50, "fc", 448, 512, "ResNet50_Weights.IMAGENET1K_V1",
                       "torchvision ResNet50 (25.6M parameters), paper's 'R' column"),
        ClassifierArch("vgg-mini", "vgg", lambda: VGGMini(1000), "classifier.3", 64, 72, None,
                       "narrow VGG (0.1M parameters) for the mini benchmark, from scratch"),
        ClassifierArch("resnet-mini", "resnet", lambda: ResNetMini(1000), "fc", 64, 72, None,
                       "narrow ResNet (0.3M parameters) for the mini benchmark, from scratch"),
    )
}


def _load_entry_point(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected 'pkg.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} of classifier {spec!r}: {err}") from err
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r} (classifier {spec!r})") from None


def get_arch(name: str) -> ClassifierArch | None:
    """The registry entry of ``name``; ``None`` for a ``pkg.module:factory`` spec; unknown -> ValueError."""
    if name in CLASSIFIERS:
        return CLASSIFIERS[name]
    if ":" in name:
        return None
    raise ValueError(
        f"unknown classifier architecture {name!r}; valid names: {', '.join(CLASSIFIERS)} "
        "(or 'pkg.module:factory' for your own)"
    )


def _get_module(model: nn.Module, dotted: str) -> nn.Module:
    m = model
    for part in dotted.split("."):
        m = m[int(part)] if part.isdigit() else getattr(m, part)  # type: ignore[index]
    return m


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_path, _, last = dotted.rpartition(".")
    parent = _get_module(model, parent_path) if parent_path else model
    if last.isdigit():
        parent[int(last)] = new  # type: ignore[index]
    else:
        setattr(parent, last, new)


def classifier_head(model: nn.Module, arch: str | None = None) -> tuple[str, nn.Linear]:
    """``(dotted name, module)`` of the model's final ``nn.Linear`` (the registry's ``head`` for built-in
    architectures, else the last Linear in module order)."""
    entry = CLASSIFIERS.get(arch) if arch else None
    if entry is not None:
        return entry.head, _get_module(model, entry.head)  # type: ignore[return-value]
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise ValueError(f"cannot find the classification head: {type(model).__name__} has no nn.Linear")
    return last


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------
def _weights_enum(entry: ClassifierArch):
    import torchvision.models as tvm

    enum_name, member = entry.imagenet.split(".")  # type: ignore[union-attr]
    return getattr(getattr(tvm, enum_name), member)


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision's ImageNet weights of ``arch`` live in the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/<file>``; e.g. ``resnet50-0676ba61.pth``)."""
    entry = get_arch(arch)
    if entry is None or entry.imagenet is None:
        raise ValueError(f"architecture {arch!r} has no ImageNet weights; use weights='none' or a path")
    url = _weights_enum(entry).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = load_torch_file(path, "weights file (a state dict of tensors)")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor), found {type(obj).__name__}")
    # DataParallel / DDP checkpoints prefix every key with "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], arch: str, source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(state[k].shape)}"
              for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            detail.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise ValueError(
            f"the weights in {source} do not fit architecture {arch!r}: {'; '.join(detail)}. "
            "Is it a checkpoint of another architecture?"
        )
    model.load_state_dict(state, strict=True)


def build_backbone(arch: str, weights: str | os.PathLike = "imagenet", *, download: bool = False) -> nn.Module:
    """The network ``arch`` with its original 1000-way ImageNet head.

    ``weights``: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` weights read from the torch hub cache;
    with ``download=True`` torchvision may fetch them when they are not cached), ``"none"`` (random init)
    or a path to a state dict (loaded with ``weights_only=True``, strictly). Offline and not cached ->
    ``FileNotFoundError`` naming the expected file, the cache folder and ``--weights PATH``; nothing is
    downloaded unless ``download=True``.
    """
    entry = get_arch(arch)
    if entry is None:
        raise ValueError(f"build_backbone supports the registry architectures ({', '.join(CLASSIFIERS)}), got {arch!r}")
    w = str(weights)
    if w == "none":
        return entry.build_imagenet_head()
    if w == "imagenet":
        if entry.imagenet is None:
            raise ValueError(
                f"architecture {arch!r} has no ImageNet-pretrained weights; train it from scratch with "
                "--weights none, or pass --weights PATH to a state dict of this architecture"
            )
        enum = _weights_enum(entry)
        cached = imagenet_weights_file(arch)
        if cached.is_file():
            log.info("loading ImageNet weights of %s from %s", arch, cached)
            model = entry.build_imagenet_head()
            _load_strict(model, _read_state_dict(cached), arch, str(cached))
            return model
        if not download:
            # checked before anything could reach the network: torchvision would download silently
            raise FileNotFoundError(
                f"ImageNet weights for {arch} not found: expected {cached.name} in the torch hub cache "
                f"{cached.parent} (set TORCH_HOME to move it). Get the file from {enum.url} and either put it "
                f"there or pass --weights PATH (a local copy of {cached.name}); pass --download to let "
                "torchvision fetch it, or --weights none to train from scratch on purpose."
            )
        log.info("downloading ImageNet weights of %s from %s", arch, enum.url)
        model = entry.build_imagenet_head()
        model.load_state_dict(enum.get_state_dict(progress=True, check_hash=True))
        return model
    path = Path(w).expanduser()
    if not path.is_file():
        hint = (f"e.g. torchvision's {imagenet_weights_file(arch).name} from {_weights_enum(entry).url}"
                if entry.imagenet else "a state dict of this architecture")
        raise FileNotFoundError(
            f"weights file {path} not found (arch {arch}). Pass an existing state dict file ({hint}), "
            "or --weights imagenet / none."
        )
    log.info("loading %s weights from %s", arch, path)
    model = entry.build_imagenet_head()
    _load_strict(model, _read_state_dict(path), arch, str(path))
    return model


def build_classifier(arch: str, num_classes: int, weights: str | os.PathLike = "none", *,
                     download: bool = False) -> nn.Module:
    """``arch`` (registry name or ``"pkg.module:factory"``) with a freshly initialised ``num_classes``-way
    head; ``weights`` as in `build_backbone` (user factories receive it unchanged)."""
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    entry = get_arch(arch)
    if entry is None:
        model = _load_entry_point(arch)(int(num_classes), str(weights))
        if not isinstance(model, nn.Module):
            raise TypeError(f"classifier factory {arch!r} returned {type(model).__name__}, not an nn.Module")
        return model
    model = build_backbone(arch, weights, download=download)
    old = _get_module(model, entry.head)
    if not isinstance(old, nn.Linear):
        raise TypeError(f"registry head {entry.head!r} of {arch} is {type(old).__name__}, expected nn.Linear")
    new = nn.Linear(old.in_features, int(num_classes), device=old.weight.device, dtype=old.weight.dtype)
    _set_module(model, entry.head, new)
    return model


# --------------------------------------------------------------------------------------------------
# preprocessing and checkpoints
# --------------------------------------------------------------------------------------------------
def default_preprocess(arch: str, img_size: int | None = None) -> dict[str, Any]:
    """The test-time preprocessing recorded in checkpoints: resize the shorter side to ``resize``
    (= ``img_size / 0.875``, e.g. 512 for 448, 256 for 224), centre-crop ``img_size``, ImageNet mean/std."""
    entry = get_arch(arch)
    size = int(img_size or (entry.img_size if entry else 224))
    if size < 16:
        raise ValueError(f"img_size must be >= 16, got {size}")
    resize = entry.resize if (entry is not None and size == entry.img_size) else int(round(size / 0.875))
    return {"img_size": size, "resize": resize, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "interpolation": "bilinear"}


def eval_transform(preprocess: dict[str, Any], bbox_crop: bool = False):
    """PIL RGB image -> ``[3, img_size, img_size]`` normalised float tensor, per ``preprocess`` (a
    checkpoint's record). With ``bbox_crop`` the (already box-cropped) image is resized to a
    ``resize x resize`` square before the centre crop (URIE's CUB-C protocol)."""
    from torchvision import transforms as T

    interp = T.InterpolationMode(preprocess.get("interpolation", "bilinear"))
    resize = int(preprocess["resize"])
    return T.Compose([
        T.Resize((resize, resize) if bbox_crop else resize, interpolation=interp),
        T.CenterCrop(int(preprocess["img_size"])),
        T.ToTensor(),
        T.Normalize(preprocess["mean"], preprocess["std"]),
    ])


#: URIE's CUB-C protocol (Son et al. 2020): crop to the box, resize to 256x256, centre-crop 227.
URIE_BBOX_SIZE = (256, 227)
#: The protocol of checkpoints that record none (written before protocols were recorded): whole images.
WHOLE_IMAGE = {"bbox_crop": False, "bbox_size": None}


def parse_bbox_size(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"256,227"`` / ``[256, 227]`` -> ``(256, 227)``; ``"classifier"`` / ``None`` -> ``None`` (the
    classifier's own resize and crop size). Needs ``16 <= crop <= resize``."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "classifier"):
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        resize, crop = (int(str(v).strip()) for v in parts)
    except ValueError:
        raise ValueError(f"expected RESIZE,CROP (e.g. '256,227') or 'classifier', got {text!r}") from None
    if not 16 <= crop <= resize:
        raise ValueError(f"bbox size needs 16 <= CROP <= RESIZE, got resize {resize}, crop {crop}")
    return resize, crop


def eval_protocol(bbox_crop: bool = False, bbox_size: Sequence[int] | None = URIE_BBOX_SIZE) -> dict[str, Any]:
    """The evaluation protocol as recorded in checkpoints: ``{"bbox_crop": bool, "bbox_size": [resize, crop]
    or None}``. Whole images -> ``bbox_size`` None; box crops with ``bbox_size=None`` -> the classifier's own
    sizes (`protocol_preprocess` resolves them)."""
    size = parse_bbox_size(bbox_size) if bbox_crop else None
    return {"bbox_crop": bool(bbox_crop), "bbox_size": list(size) if size is not None else None}


def protocol_preprocess(preprocess: dict[str, Any], protocol: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing ``protocol`` scores with: ``preprocess`` (a checkpoint's record), with ``resize`` /
    ``img_size`` replaced by the protocol's ``bbox_size`` when it crops to boxes at set sizes."""
    pp = dict(preprocess)
    if protocol.get("bbox_crop") and protocol.get("bbox_size") is not None:
        pp.update(resize=int(protocol["bbox_size"][0]), img_size=int(protocol["bbox_size"][1]))
    return pp


def protocol_transform(preprocess: dict[str, Any], protocol: dict[str, Any]):
    """The test transform of ``protocol`` (`eval_transform` of `protocol_preprocess`): whole images -> resize
    the shorter side, centre crop; box crops (the image must already be cropped to its box) -> resize to a
    square, centre crop. Shared by fine-tuning's evaluation and `analysis.classify`, so both score alike."""
    return eval_transform(protocol_preprocess(preprocess, protocol), bbox_crop=bool(protocol.get("bbox_crop")))


def describe_protocol(protocol: dict[str, Any], preprocess: dict[str, Any] | None = None) -> str:
    """``"whole images"`` or ``"box -> 256x256 -> centre crop 227"`` (sizes from ``preprocess`` when the
    protocol uses the classifier's own)."""
    if not protocol.get("bbox_crop"):
        return "whole images"
    size = protocol.get("bbox_size")
    if size is None and preprocess is not None:
        size = [preprocess["resize"], preprocess["img_size"]]
    return f"box -> {size[0]}x{size[0]} -> centre crop {size[1]}" if size else "box crops at the classifier's sizes"


def _checkpoint_protocol(ckpt: dict[str, Any], path: Path) -> dict[str, Any]:
    raw = ckpt.get("protocol")
    if raw is None:
        return dict(WHOLE_IMAGE)
    if not isinstance(raw, dict) or "bbox_crop" not in raw:
        raise ValueError(f"checkpoint {path}: 'protocol' must be a mapping with bbox_crop and bbox_size, found {raw!r}")
    return eval_protocol(bool(raw["bbox_crop"]), raw.get("bbox_size"))


def load_classifier(ckpt_path: str | os.PathLike, device: str | torch.device = "cpu", *,
                    expect_arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned classifier from a `classifiers.finetune` checkpoint.

    Returns ``(model, info)``: the model in eval mode with ``requires_grad_(False)`` on ``device``; ``info``
    holds ``arch``, ``num_classes``, ``class_names`` (index = 0-based label), ``preprocess`` (``img_size``,
    ``resize``, ``mean``, ``std``, ``interpolation``), ``protocol`` (what it was trained and measured on,
    `eval_protocol`'s dict; checkpoints without one: whole images), ``clean_test_top1`` (percent or None),
    ``epoch``, ``complete`` and ``path``. ``expect_arch`` (e.g. the name a user gave) must match the recorded arch.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier checkpoint {path} not found; train one with "
            "`python -m classifiers.finetune --arch resnet50 --cub-root CUB_200_2011 --out CKPT`"
        )
    ckpt = load_torch_file(path, "classifier checkpoint of this toolkit (python -m classifiers.finetune)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a classifier checkpoint of this toolkit (expected format {CHECKPOINT_FORMAT!r}, "
            f"found {found!r}); write one with python -m classifiers.finetune"
        )
    arch = ckpt["arch"]
    if expect_arch is not None and expect_arch != arch:
        raise ValueError(f"checkpoint {path} holds a {arch!r} classifier, but {expect_arch!r} was expected")
    if not ckpt.get("complete", True):
        log.warning("checkpoint %s is from an unfinished run (epoch %s of %s)", path, ckpt.get("epoch"),
                    ckpt.get("epochs"))
    model = build_classifier(arch, int(ckpt["num_classes"]), "none")
    _load_strict(model, ckpt["state_dict"], arch, str(path))
    model = model.to(device).eval().requires_grad_(False)
    info = {
        "arch": arch,
        "num_classes": int(ckpt["num_classes"]),
        "class_names": list(ckpt["class_names"]),
        "preprocess": dict(ckpt["preprocess"]),
        "protocol": _checkpoint_protocol(ckpt, path),
        "clean_test_top1": ckpt.get("clean_test_top1"),
        "epoch": ckpt.get("epoch"),
        "epochs": ckpt.get("epochs"),
        "complete": bool(ckpt.get("complete", True)),
        "path": str(path),
    }
    return model, info
