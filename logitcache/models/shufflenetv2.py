"""ShuffleNetV2 (1x) for CIFAR, the ShuffleV2 student of the KD literature.

Follows ``mdistiller/models/cifar/ShuffleNetv2.py`` (kuangliu's pytorch-cifar layout, as used
by RepDistiller): a 1x1 stem, three stages of a down-sampling unit plus channel-split units,
a 1x1 conv to 1024 channels, and the same module names so that its checkpoints load strictly.
The fixed 4x4 average pool is adaptive here, so any input size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model
from .shufflenetv1 import channel_shuffle

_STEM_CHANNELS = 24


class BasicBlock(nn.Module):
    """Split the channels in half, transform the second half, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, stride=1, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[1] // 2
        kept, changed = x[:, :half], x[:, half:]
        out = F.relu(self.bn1(self.conv1(changed)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class DownBlock(nn.Module):
    """Stride-2 unit: two branches on the full input, each giving half the output channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left branch: depthwise 3x3 stride 2, then 1x1
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch: 1x1, depthwise 3x3 stride 2, 1x1
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)))
        right = F.relu(self.bn3(self.conv3(x)))
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for small images.

    Args:
        out_channels: Output channels of the three stages and of the final 1x1 conv.
        num_blocks: Channel-split units per stage, after its down-sampling unit.
        num_classes: Size of the classifier output.
    """

    def __init__(
        self,
        out_channels: tuple[int, int, int, int],
        num_blocks: tuple[int, int, int],
        num_classes: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        ins = (_STEM_CHANNELS, *out_channels[:2])
        self.layer1 = self._make_layer(ins[0], out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(ins[1], out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(ins[2], out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    @staticmethod
    def _make_layer(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(
            DownBlock(in_channels, out_channels), *(BasicBlock(out_channels) for _ in range(blocks))
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(self.avgpool(x).flatten(1))


@register_model("ShuffleV2")
def shufflev2(num_classes: int) -> ShuffleNetV2:
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes)
