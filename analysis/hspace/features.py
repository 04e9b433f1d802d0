"""The feature networks of the generations and the distances to the unperturbed one: ResNet50 (ImageNet)
penultimate features (paper mode), a fine-tuned classifier's penultimate features and predicted classes
(`ClassifierFeatures`: quick mode's demo ResNet-mini, ``--classifier CKPT`` in paper mode) and the pixel change."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from classifiers import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

__all__ = ["ResNetFeatures", "ClassifierFeatures", "build_feature_extractor", "load_classifier_features",
           "feature_distances", "feature_distance_metrics", "pixel_change", "RESNET50_FILE", "RESNET50_URL",
           "IMAGENET_MEAN", "IMAGENET_STD"]

RESNET50_FILE = "resnet50-0676ba61.pth"
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


class ResNetFeatures(nn.Module):
    """Frozen ResNet50 penultimate features: ``[0, 1] NCHW float`` -> ``[N, 2048]``.

    Inputs are resized to ``size`` x ``size`` (bilinear, antialiased) and ImageNet-normalised."""

    def __init__(self, backbone: nn.Module, size: int = 224) -> None:
        super().__init__()
        if hasattr(backbone, "fc"):
            backbone.fc = nn.Identity()
        self.backbone = backbone
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [0, 1] NCHW images with 3 channels, got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)
        return self.backbone((x - self.mean) / self.std).flatten(1)


def build_feature_extractor(weights: str = "imagenet", size: int = 224, device="cpu",
                            init_seed: int = 0) -> ResNetFeatures:
    """ResNet50 feature extractor via ``classifiers.build_backbone("resnet50", weights)``, fc -> Identity.

    ``weights``: "imagenet" (torchvision enum; offline it must be in the torch hub cache), a path to a state
    dict (e.g. resnet50-0676ba61.pth), or "none" (random init drawn from ``init_seed``: quick mode only --
    distances then say nothing about semantics)."""
    from classifiers import build_backbone

    w = str(weights)
    if w not in ("imagenet", "none") and not Path(w).is_file():
        raise FileNotFoundError(
            f"ResNet50 weights file not found: {w}. Expected an ImageNet state dict such as {RESNET50_FILE} "
            f"(download it on a connected machine from {RESNET50_URL}) and pass --weights PATH."
        )
    with torch.random.fork_rng(devices=[]):  # torchvision's init draws from the global RNG
        torch.manual_seed(int(init_seed))
        net = build_backbone("resnet50", weights=w)
    if w == "none":
        log.warning("!!! ResNet50 with RANDOM weights (--weights none): the feature distances measure a random "
                    "network, not ImageNet semantics. Use --weights PATH for the real study. !!!")
    return ResNetFeatures(net, size=size).to(device)


class ClassifierFeatures(nn.Module):
    """A fine-tuned classifier (a `classifiers.finetune` checkpoint) as the study's feature network, frozen:
    ``[0, 1] NCHW float`` -> its penultimate features ``[N, D]`` (the input of its classification head);
    `predict` gives the predicted classes ``[N]`` (int64).

    Inputs are preprocessed as the checkpoint scores test images (``preprocess``: the square image resized to
    ``resize`` x ``resize``, bilinear and antialiased, centre-cropped to ``img_size``, normalised), so a
    generation is judged at the size the classifier was trained at."""

    def __init__(self, model: nn.Module, preprocess: dict, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.resize = int(preprocess["resize"])
        self.size = int(preprocess["img_size"])
        self.register_buffer("mean", torch.tensor(preprocess["mean"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(preprocess["std"], dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self._head = head
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected [0, 1] NCHW images with 3 channels, got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.resize, self.resize):
            x = nn.functional.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False,
                                          antialias=True)
        top = (self.resize - self.size) // 2
        x = x[..., top:top + self.size, top:top + self.size]
        return (x - self.mean) / self.std

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features [N, D], logits [N, classes]) of ``[0, 1] NCHW`` images, in one forward."""
        seen: list[torch.Tensor] = []
        handle = self._head.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
        try:
            logits = self.model(self._prepare(images))
        finally:
            handle.remove()
        return seen[-1].flatten(1), logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[0]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted classes [N] (int64, 0-based) of ``[0, 1] NCHW`` images."""
        return self.features_and_logits(images)[1].argmax(dim=1)


def load_classifier_features(ckpt: str | Path, device="cpu") -> ClassifierFeatures:
    """`ClassifierFeatures` of the classifier checkpoint ``ckpt`` (a `classifiers.finetune` run folder or its
    classifier.pt; `classifiers.load_classifier` names what is wrong with a missing or foreign file)."""
    from classifiers import classifier_head, load_classifier

    model, info = load_classifier(ckpt, device=device)
    if info["protocol"].get("bbox_crop"):
        log.warning("classifier %s was trained on bounding-box crops; the generations are whole images",
                    info["path"])
    _, head = classifier_head(model, info["arch"])
    return ClassifierFeatures(model, info["preprocess"], head).to(device)


def pixel_change(generations: torch.Tensor) -> torch.Tensor:
    """Mean absolute pixel change of levels 1..K against level 0, in 8-bit units (0..255): ``generations``
    [N, 1+K, 3, H, W] in [0, 1] -> [N, K] float64."""
    if not isinstance(generations, torch.Tensor) or generations.ndim != 5 or generations.shape[1] < 2:
        raise ValueError(f"generations must be [N, 1+K, 3, H, W] with K >= 1, got "
                         f"{getattr(generations, 'shape', generations)}")
    g = generations.double()
    return (g[:, 1:] - g[:, :1]).abs().mean(dim=(2, 3, 4)) * 255.0


def _check_features(features) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 3 or features.shape[1] < 2:
        raise ValueError(f"features must be [N, 1+K, D] with K >= 1, got {getattr(features, 'shape', features)}")
    return features.double()


def feature_distances(features: torch.Tensor) -> torch.Tensor:
    """L2 distances of levels 1..K to level 0: ``features`` [N, 1+K, D] -> [N, K] (float64)."""
    f = _check_features(features)
    return torch.linalg.vector_norm(f[:, 1:] - f[:, :1], dim=-1)


def feature_distance_metrics(features: torch.Tensor) -> dict[str, torch.Tensor]:
    """Distances of levels 1..K to level 0, each [N, K] float64, keyed as the columns of distances.csv:

    ``distance``: L2 ||f_k - f_0|| (`feature_distances`); ``cosine_distance``: 1 - cos(f_k, f_0), in [0, 2];
    ``relative_distance``: ||f_k - f_0|| / ||f_0||, the L2 in units of the unperturbed feature norm (a group
    whose features are smaller overall cannot look "more stable" by that alone). Where ||f_0|| (or ||f_k|| for
    the cosine) is 0 the ratio is undefined: NaN."""
    f = _check_features(features)
    ref, lev = f[:, :1], f[:, 1:]
    l2 = torch.linalg.vector_norm(lev - ref, dim=-1)
    n_ref = torch.linalg.vector_norm(ref, dim=-1)                 # [N, 1]
    n_lev = torch.linalg.vector_norm(lev, dim=-1)                 # [N, K]
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    denom = n_ref * n_lev
    cos = torch.where(denom > 0, (lev * ref).sum(-1) / torch.where(denom > 0, denom, 1.0), nan)
    rel = torch.where(n_ref > 0, l2 / torch.where(n_ref > 0, n_ref, 1.0), nan)
    return {"distance": l2, "cosine_distance": (1.0 - cos).clamp(0.0, 2.0), "relative_distance": rel}
