"""CUDA tensors: the CUDA kernels of ``custom_ops/cuda`` for float32 (forward and input gradient, on the
current stream) and the chunked path's weight gradient; float64, or a build without the CUDA kernels, runs
the chunked path."""

from __future__ import annotations

import torch
from torch import Tensor

from adderconvert.nn import _kernels
from adderconvert.nn.backends import chunked
from adderconvert.nn.geometry import output_size

__all__ = ["backward", "forward", "has_kernels"]


def has_kernels(x: Tensor) -> bool:
    """True when ``x`` is a float32 CUDA tensor and the CUDA kernel library was built."""
    return x.is_cuda and x.dtype == torch.float32 and _kernels.has_cuda_library()


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> Tensor:
    """``-sum |Xpad - W| (+ bias)``; padding is (top, left, bottom, right)."""
    if not has_kernels(x):
        return chunked.forward(x, weight, bias, stride, padding, dilation, groups)
    out = x.new_empty(
        x.shape[0], weight.shape[0], *output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    )
    b = bias.contiguous() if bias is not None else None
    _kernels.cuda_forward(x.contiguous(), weight.contiguous(), b, out, stride, padding, dilation, groups)
    return out


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
    if not has_kernels(x):
        return chunked.backward(grad_out, x, weight, stride, padding, dilation, groups, input_grad, weight_grad)
    grad_out = grad_out.contiguous()
    grad_x, grad_w = x.new_empty(0), weight.new_empty(0)
    if input_grad:
        grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
        _kernels.cuda_backward_input(
            x.contiguous(), weight.contiguous(), grad_out, grad_x, stride, padding, dilation, groups
        )
    if weight_grad:
        grad_w = chunked.grad_weight(grad_out, x, weight, stride, padding, dilation, groups)
    return grad_x, grad_w
