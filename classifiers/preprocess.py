"""Preprocessing and evaluation protocols: what a checkpoint records, and the transforms built from it.

``preprocess`` (recorded in every checkpoint): ``{"img_size", "resize", "mean", "std", "interpolation"}``;
test images are resized (shorter side) to ``resize`` and centre-cropped to ``img_size``, then normalised with
ImageNet's mean/std. ``protocol``: ``{"bbox_crop": bool, "bbox_size": [resize, crop] or None}``, whole images
or crops to the CUB boxes (URIE's CUB-C protocol: box -> 256x256 -> centre crop 227).
"""
from __future__ import annotations

from typing import Any, Sequence

from classifiers.registry import CLASSIFIERS

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "URIE_BBOX_SIZE", "NO_COLOR_JITTER", "default_preprocess", "eval_transform",
           "train_transform", "parse_bbox_size", "eval_protocol", "protocol_preprocess", "protocol_transform",
           "describe_protocol"]

#: ImageNet's channel statistics (RGB, [0, 1] images), the normalisation of every classifier in the toolkit.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: URIE's CUB-C protocol (Son et al. 2020): crop to the box, resize to 256x256, centre-crop 227.
URIE_BBOX_SIZE = (256, 227)


def default_preprocess(arch: str, img_size: int | None = None) -> dict[str, Any]:
    """The test-time preprocessing recorded in checkpoints: resize the shorter side to ``resize``
    (= ``img_size / 0.875``, e.g. 512 for 448, 256 for 224), centre-crop ``img_size``, ImageNet mean/std."""
    entry = CLASSIFIERS[arch]
    size = int(img_size or entry.img_size)
    if size < 16:
        raise ValueError(f"img_size must be >= 16, got {size}")
    resize = entry.resize if size == entry.img_size else int(round(size / 0.875))
    return {"img_size": size, "resize": resize, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "interpolation": "bilinear"}


def _to_normalised_tensor(preprocess: dict[str, Any]) -> list:
    from torchvision import transforms as T

    return [T.ToTensor(), T.Normalize(preprocess["mean"], preprocess["std"])]


def _interpolation(preprocess: dict[str, Any]):
    from torchvision import transforms as T

    return T.InterpolationMode(preprocess.get("interpolation", "bilinear"))


def eval_transform(preprocess: dict[str, Any], bbox_crop: bool = False):
    """PIL RGB image -> ``[3, img_size, img_size]`` normalised float tensor, per ``preprocess`` (a
    checkpoint's record). With ``bbox_crop`` the (already box-cropped) image is resized to a
    ``resize x resize`` square before the centre crop (URIE's CUB-C protocol)."""
    from torchvision import transforms as T

    resize = int(preprocess["resize"])
    return T.Compose([
        T.Resize((resize, resize) if bbox_crop else resize, interpolation=_interpolation(preprocess)),
        T.CenterCrop(int(preprocess["img_size"])),
        *_to_normalised_tensor(preprocess),
    ])


#: ``color_jitter`` that turns colour jitter off: (brightness, contrast, saturation, hue) all 0.
NO_COLOR_JITTER = (0.0, 0.0, 0.0, 0.0)


def train_transform(preprocess: dict[str, Any], crop_scale=(0.25, 1.0), color_jitter=NO_COLOR_JITTER):
    """PIL RGB image -> augmented ``[3, S, S]`` normalised float tensor: RandomResizedCrop(S, crop_scale)
    + horizontal flip (S = ``preprocess["img_size"]``), then, unless ``color_jitter`` is all zeros,
    torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` with ``color_jitter``'s four values
    (brightness/contrast/saturation factors drawn from ``[1 - v, 1 + v]``, hue shifted by up to ``v`` of a
    turn). Randomness comes from torch's RNG (seeded per DataLoader worker from the loader's generator)."""
    from torchvision import transforms as T

    b, c, s, h = (float(v) for v in color_jitter)
    jitter = [T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)] if any((b, c, s, h)) else []
    return T.Compose([
        T.RandomResizedCrop(int(preprocess["img_size"]), scale=tuple(crop_scale),
                            interpolation=_interpolation(preprocess)),
        T.RandomHorizontalFlip(),
        *jitter,
        *_to_normalised_tensor(preprocess),
    ])


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
