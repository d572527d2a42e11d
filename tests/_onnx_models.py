"""Kernel test cases built on adderconvert.deploy.ops.single_node_model, and a small adder network."""

import numpy as np
import onnx
import torch
from torch import nn

from adderconvert.deploy.ops import single_node_model as one_node
from adderconvert.nn import AdderConv2d

# Geometries shared by the CPU and CUDA kernel tests.
CASES = [
    dict(x=(2, 4, 9, 9), w=(6, 4, 3, 3), strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1),
    dict(x=(3, 6, 11, 8), w=(9, 2, 2, 3), strides=[2, 1], pads=[0, 2, 1, 0], dilations=[2, 1], group=3),
    dict(x=(1, 8, 7, 7), w=(8, 1, 3, 3), strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=8),
    dict(x=(2, 64, 14, 14), w=(130, 64, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=1),
    dict(x=(1, 3, 5, 5), w=(5, 3, 5, 5), strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1),
]
FORMS = ["plain", "bias", "fused", "fused_relu"]


def case_model(case: dict, form: str, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    """A one-node model of `case` in `form` (trained-like weights of std 6, BN-like epilogues) and its input."""
    x = rng.normal(size=case["x"]).astype(np.float32)
    w = (rng.normal(size=case["w"]) * 6).astype(np.float32)
    attrs = {k: case[k] for k in ("strides", "pads", "dilations", "group")}
    m = case["w"][0]
    extra = {}
    if form == "bias":
        extra = dict(bias=rng.normal(size=m))
    elif form.startswith("fused"):
        extra = dict(scale=rng.uniform(0.05, 0.5, m), shift=rng.normal(size=m) * 50, relu=int(form == "fused_relu"))
    return one_node(case["x"], w, **extra, **attrs), x


def small_adder_network(image_size: int = 12, num_classes: int = 10) -> nn.Module:
    """A small adder network in eval mode with BatchNorm statistics of its own outputs: a multiplicative stem and
    head around a plain adder layer and a strided, dilated, grouped, padded one."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        AdderConv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        AdderConv2d(16, 16, 3, stride=2, padding=2, dilation=2, groups=4),
        nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
    with torch.no_grad():
        model(torch.randn(32, 3, image_size, image_size))
    return model.eval()
