"""CIFAR ResNet-20 (He et al. 2016, as in the AdderNet paper) with a pluggable 3x3/1x1 layer, for benchmarks."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ConvFactory = Callable[..., nn.Module]


class BasicBlock(nn.Module):
    def __init__(self, make_conv: ConvFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = make_conv(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = make_conv(cout, cout, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(make_conv(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(y)) + self.shortcut(x)).relu()


def resnet20(make_conv: ConvFactory, num_classes: int = 10) -> nn.Module:
    """ResNet-20 whose inner layers are built by ``make_conv(cin, cout, k, stride=, padding=)``."""
    layers = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(BasicBlock(make_conv, cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)
