"""CUDA tensors: the CUDA kernels of ``custom_ops/cuda`` for float32 (forward and input gradient, on the
current stream) and the chunked path's weight gradient; float64, or a build without the CUDA kernels, runs
the chunked path."""

from __future__ import annotations

import torch
from torch import Tensor

from adderconvert.nn import _kernels
from adderconvert.nn.backends import chunked

__all__ = ["backward_input", "forward", "grad_weight", "has_kernels"]

grad_weight = chunked.grad_weight


def has_kernels(x: Tensor) -> bool:
    """True when ``x`` is a float32 CUDA tensor and the CUDA kernel library was built."""
    return x.is_cuda and x.dtype == torch.float32 and _kernels.has_cuda_library()


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> Tensor:
    """``-sum |Xpad - W| (+ bias)``; padding is (top, left, bottom, right)."""
    implementation = _kernels.cuda_forward if has_kernels(x) else chunked.forward
    return implementation(x, weight, bias, stride, padding, dilation, groups)


def backward_input(grad_out: Tensor, x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> Tensor:
    """``sum HardTanh(W - X) * grad_out``, scattered back through the padding."""
    implementation = _kernels.cuda_backward_input if has_kernels(x) else chunked.backward_input
    return implementation(grad_out, x, weight, stride, padding, dilation, groups)
