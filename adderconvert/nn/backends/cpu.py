"""CPU tensors: the C++ kernel of ``custom_ops/cpu`` (forward and input gradient, float32 and float64) and
oneDNN's convolution weight gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adderconvert.nn import _kernels
from adderconvert.nn.geometry import output_size

__all__ = ["backward", "forward"]


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> Tensor:
    """``-sum |Xpad - W| (+ bias)``; padding is (top, left, bottom, right)."""
    out = x.new_empty(
        x.shape[0], weight.shape[0], *output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    )
    b = bias.contiguous() if bias is not None else None
    _kernels.cpu_forward(x.contiguous(), weight.contiguous(), b, out, stride, padding, dilation, groups)
    return out


def _grad_weight(grad_out: Tensor, x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> Tensor:
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


def backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    stride,
    padding,
    dilation,
    groups: int,
    input_grad: bool,
    weight_grad: bool,
) -> tuple[Tensor, Tensor]:
    """The requested gradients (an empty tensor for one not requested)."""
    grad_out = grad_out.contiguous()
    grad_x, grad_w = x.new_empty(0), weight.new_empty(0)
    if input_grad:
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
        _kernels.cpu_backward_input(
            x.contiguous(), weight.contiguous(), grad_out, grad_x, stride, padding, dilation, groups
        )
    if weight_grad:
        grad_w = _grad_weight(grad_out, x, weight, stride, padding, dilation, groups)
    return grad_x, grad_w
