"""MobileNetV2 for CIFAR as used in KD papers: expansion 6, width 0.5 (mdistiller's mobile_half).

Follows ``mdistiller/models/cifar/mobilenetv2.py`` (RepDistiller's ``mobilenetv2_T_w``): a
stride-2 stem, seven stages of inverted residuals and a 1x1 conv to 1280 channels, with the
same module names (``conv1``, ``blocks.i.j.conv.k``, ``conv2``, ``classifier.0``) so that its
checkpoints load strictly. The pool sized for 32x32 inputs is adaptive here, so any input size
works.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._registry import register_model

# (expansion, output channels, blocks, first stride) per stage; None is the expansion T.
_STAGES: list[tuple[int | None, int, int, int]] = [
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, linear 1x1 project; residual when shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with expansion ``expansion`` and width multiplier ``width``.

    Args:
        expansion: Expansion ratio T of every stage but the first.
        width: Channel multiplier (the 1280-channel head only grows for ``width > 1``).
        num_classes: Size of the classifier output.
    """

    def __init__(self, expansion: int, width: float, num_classes: int) -> None:
        super().__init__()
        channels = int(32 * width)
        self.conv1 = _conv_bn_relu(3, channels, kernel_size=3, stride=2)
        self.blocks = nn.ModuleList()
        for ratio, base, count, first_stride in _STAGES:
            out_channels = int(base * width)
            stage = []
            for i in range(count):
                stride = first_stride if i == 0 else 1
                stage.append(InvertedResidual(channels, out_channels, stride, ratio or expansion))
                channels = out_channels
            self.blocks.append(nn.Sequential(*stage))
        last_channels = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channels, kernel_size=1, stride=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(self.avgpool(x).flatten(1))


@register_model("MobileNetV2")
def mobilenetv2(num_classes: int) -> MobileNetV2:
    return MobileNetV2(expansion=6, width=0.5, num_classes=num_classes)
