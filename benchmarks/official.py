"""The official-style AdderNet layer as an nn.Module (adderconvert.nn.reference), for baselines."""

from __future__ import annotations

import math

import torch
from torch import nn

from adderconvert.nn.reference import reference_adder_conv2d


class OfficialAdder2d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k))
        self.stride, self.padding = (stride, stride), (padding,) * 4

    def forward(self, x):
        return reference_adder_conv2d(x, self.weight, None, self.stride, self.padding, (1, 1), 1)
