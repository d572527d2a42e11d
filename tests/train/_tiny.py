"""A tiny adder model and data set shared by the training tests and the DDP worker."""

import torch
from torch import nn

from adderconvert.data import TensorImages
from adderconvert.nn import AdderConv2d


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        AdderConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip


def tiny_data(n: int = 64, seed: int = 1, flip: bool = False) -> TensorImages:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = torch.randn(n, 1, 8, 8, generator=gen) + labels.view(-1, 1, 1, 1).float()
    return TensorImages(images, labels, flip=flip)
