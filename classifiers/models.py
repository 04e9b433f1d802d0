"""The registered architectures: torchvision's VGG16 and ResNet50 (the paper's) and two small members of the
same families for the mini benchmark. Each builds the network with its 1000-way ImageNet head; `build_classifier`
swaps the head. Every model maps ImageNet-normalised ``[B, 3, H, W]`` float images to ``[B, K]`` logits."""
from __future__ import annotations

import torch
from torch import nn

from classifiers.registry import CLASSIFIERS

__all__ = ["ResNetMini", "VGGMini", "torchvision_resnet50", "torchvision_vgg16"]


@CLASSIFIERS.register("vgg16", family="vgg", head="classifier.6", img_size=448, resize=512,
                      imagenet="VGG16_Weights.IMAGENET1K_V1",
                      description="torchvision VGG16 (138M parameters), paper's 'V' column")
def torchvision_vgg16() -> nn.Module:
    from torchvision.models import vgg16

    return vgg16(weights=None)


@CLASSIFIERS.register("resnet50", family="resnet", head="fc", img_size=448, resize=512,
                      imagenet="ResNet50_Weights.IMAGENET1K_V1",
                      description="torchvision ResNet50 (25.6M parameters), paper's 'R' column")
def torchvision_resnet50() -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None)


def _kaiming_init_convs(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@CLASSIFIERS.register("vgg-mini", family="vgg", head="classifier.3", img_size=64, resize=72,
                      description="narrow VGG (0.1M parameters) for the mini benchmark, from scratch")
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
        _kaiming_init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@CLASSIFIERS.register("resnet-mini", family="resnet", head="fc", img_size=64, resize=72,
                      description="narrow ResNet (0.3M parameters) for the mini benchmark, from scratch")
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
        _kaiming_init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))
