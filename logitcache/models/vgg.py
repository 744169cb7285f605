"""VGG8/11/13/16/19 with batch norm, the CIFAR variants of the KD literature.

Follows ``mdistiller/models/cifar/vgg.py`` (RepDistiller's ``vgg*_bn``): five conv blocks
``block0``..``block4`` separated by 2x2 max-pools, global average pooling and a single
``Linear(512, num_classes)`` classifier. Module indices inside the blocks are the same, so the
public CIFAR-100 checkpoints load strictly. As in the reference, the pool between block3 and
block4 runs only on 64x64 inputs (Tiny-ImageNet), so 32x32 and 64x64 inputs both reach block4
at 4x4; the final pool is adaptive, so 8x8 and larger inputs work.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

# Output channels of the convs of each of the five blocks.
_CONFIGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [
        [64, 64],
        [128, 128],
        [256, 256, 256, 256],
        [512, 512, 512, 512],
        [512, 512, 512, 512],
    ],
}

# The reference only pools between block3 and block4 at this input height.
_TINY_IMAGENET_SIZE = 64


def _make_block(channels: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    # The block ends at its last BN (the reference drops the final ReLU and applies it in
    # forward), which keeps the Sequential indices of the checkpoints.
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG with batch norm for small images.

    Args:
        config: Output channels of the convs of each of the five blocks.
        num_classes: Size of the classifier output.
    """

    def __init__(self, config: list[list[int]], num_classes: int) -> None:
        super().__init__()
        ins = [3] + [block[-1] for block in config[:-1]]
        self.block0 = _make_block(config[0], ins[0])
        self.block1 = _make_block(config[1], ins[1])
        self.block2 = _make_block(config[2], ins[2])
        self.block3 = _make_block(config[3], ins[3])
        self.block4 = _make_block(config[4], ins[4])
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config[4][-1], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        x = self.pool(F.relu(self.block0(x)))
        x = self.pool(F.relu(self.block1(x)))
        x = self.pool(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if height == _TINY_IMAGENET_SIZE:
            x = self.pool(x)
        x = F.relu(self.block4(x))
        return self.classifier(self.avgpool(x).flatten(1))


@register_model("vgg8")
def vgg8(num_classes: int) -> VGG:
    return VGG(_CONFIGS["S"], num_classes)


@register_model("vgg11")
def vgg11(num_classes: int) -> VGG:
    return VGG(_CONFIGS["A"], num_classes)


@register_model("vgg13")
def vgg13(num_classes: int) -> VGG:
    return VGG(_CONFIGS["B"], num_classes)


@register_model("vgg16")
def vgg16(num_classes: int) -> VGG:
    return VGG(_CONFIGS["D"], num_classes)


@register_model("vgg19")
def vgg19(num_classes: int) -> VGG:
    return VGG(_CONFIGS["E"], num_classes)
