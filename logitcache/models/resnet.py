"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4) of the KD literature.

Follows ``mdistiller/models/cifar/resnet.py`` (itself from CRD's RepDistiller): three stages of
post-activation basic blocks on a 3x3 stem, with the same module names so that the public
CIFAR-100 teacher checkpoints load strictly. The fixed 8x8 average pool is adaptive here, so
any input size works.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection, ReLU after the sum."""

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class CifarResNet(nn.Module):
    """ResNet with ``(depth - 2) / 6`` basic blocks in each of three stages.

    Args:
        depth: Total number of weighted layers, ``6n + 2``.
        widths: Channels of the stem and of the three stages.
        num_classes: Size of the classifier output.
    """

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(widths[1], blocks, stride=1)
        self.layer2 = self._make_layer(widths[2], blocks, stride=2)
        self.layer3 = self._make_layer(widths[3], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8")
def resnet8(num_classes: int) -> CifarResNet:
    return CifarResNet(8, _THIN, num_classes)


@register_model("resnet14")
def resnet14(num_classes: int) -> CifarResNet:
    return CifarResNet(14, _THIN, num_classes)


@register_model("resnet20")
def resnet20(num_classes: int) -> CifarResNet:
    return CifarResNet(20, _THIN, num_classes)


@register_model("resnet32")
def resnet32(num_classes: int) -> CifarResNet:
    return CifarResNet(32, _THIN, num_classes)


@register_model("resnet44")
def resnet44(num_classes: int) -> CifarResNet:
    return CifarResNet(44, _THIN, num_classes)


@register_model("resnet56")
def resnet56(num_classes: int) -> CifarResNet:
    return CifarResNet(56, _THIN, num_classes)


@register_model("resnet110")
def resnet110(num_classes: int) -> CifarResNet:
    return CifarResNet(110, _THIN, num_classes)


@register_model("resnet8x4")
def resnet8x4(num_classes: int) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes)


@register_model("resnet32x4")
def resnet32x4(num_classes: int) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes)
