"""Wide ResNets wrn_16_1, wrn_16_2, wrn_40_1 and wrn_40_2 for CIFAR.

Follows ``mdistiller/models/cifar/wrn.py`` (Zagoruyko & Komodakis' pre-activation blocks, as in
RepDistiller) with the same module names (``block1.layer.0.convShortcut``, ...) so that its
checkpoints load strictly. Dropout is left out: every registered variant uses a rate of 0.
The fixed 8x8 average pool is adaptive here, so any input size works.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3 twice, with a 1x1 projection when widths differ."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        # The projection sees the pre-activated input, the identity the raw one (as in WRN).
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of ``blocks`` basic blocks; only the first changes width and stride."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: three stages of ``(depth - 4) / 6`` blocks.

    Args:
        depth: ``6n + 4``.
        widen_factor: Channel multiplier of the three stages (16, 32, 64 base channels).
        num_classes: Size of the classifier output.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4, got {depth}")
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks, widths[0], widths[1], stride=1)
        self.block2 = NetworkBlock(blocks, widths[1], widths[2], stride=2)
        self.block3 = NetworkBlock(blocks, widths[2], widths[3], stride=2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn1(x))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int) -> WideResNet:
    return WideResNet(16, 1, num_classes)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int) -> WideResNet:
    return WideResNet(16, 2, num_classes)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int) -> WideResNet:
    return WideResNet(40, 1, num_classes)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int) -> WideResNet:
    return WideResNet(40, 2, num_classes)
