"""ShuffleNetV1 (groups 3) for CIFAR, the ShuffleV1 student of the KD literature.

Follows ``mdistiller/models/cifar/ShuffleNetv1.py`` (kuangliu's pytorch-cifar layout, as used
by RepDistiller): a 1x1 stem, three stages of grouped bottlenecks with channel shuffle, and
the same module names so that its checkpoints load strictly. The fixed 4x4 average pool is
adaptive here, so any input size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

_STEM_CHANNELS = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups: (N, g*c, H, W) -> (N, c*g, H, W)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1.

    A stride-2 unit concatenates an average-pooled copy of its input instead of adding it,
    so its convs produce ``out_planes`` channels on top of the input's.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        # The stem has too few channels to split into groups.
        self.first_groups = 1 if in_planes == _STEM_CHANNELS else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, 3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = (
            nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    """ShuffleNetV1 for small images.

    Args:
        out_planes: Output channels of the three stages.
        num_blocks: Units per stage; the first of each has stride 2.
        groups: Groups of the 1x1 convs.
        num_classes: Size of the classifier output.
    """

    def __init__(
        self,
        out_planes: tuple[int, int, int],
        num_blocks: tuple[int, int, int],
        groups: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, _STEM_CHANNELS, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM_CHANNELS)
        self.in_planes = _STEM_CHANNELS
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            if i == 0:
                layers.append(Bottleneck(self.in_planes, out_planes - self.in_planes, 2, groups))
            else:
                layers.append(Bottleneck(out_planes, out_planes, 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


@register_model("ShuffleV1")
def shufflev1(num_classes: int) -> ShuffleNetV1:
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), groups=3, num_classes=num_classes)
