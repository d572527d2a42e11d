"""CPU tensors: the C++ kernel of ``custom_ops/cpu`` (forward and input gradient, float32 and float64) and
oneDNN's convolution weight gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adderconvert.nn import _kernels

__all__ = ["backward_input", "forward", "grad_weight"]

forward = _kernels.cpu_forward
backward_input = _kernels.cpu_backward_input


def grad_weight(grad_out: Tensor, x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> Tensor:
    """``sum (X - W) * grad_out = X grad_out^T - W sum grad_out``, where ``X grad_out^T`` is an ordinary
    convolution's weight gradient (oneDNN's)."""
    top, left, bottom, right = padding
    if (top, left) != (bottom, right):
        x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
    mask = [False, True, False]
    products = torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, stride, [top, left], dilation, False, [0, 0], groups, mask
    )[1]
    return products - weight * grad_out.sum((0, 2, 3)).view(-1, 1, 1, 1)
