"""The device-agnostic implementation: PyTorch operations over im2col, chunked over output channels.

Its extra memory stays within a small multiple of im2col. It is the op's default implementation (devices
without a kernel of their own) and the CUDA backend's path for float64 or when the CUDA kernels are not built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adderconvert.nn.geometry import output_size

__all__ = ["backward_input", "forward", "grad_weight"]

# Elements one chunk may materialise besides im2col.
CHUNK_ELEMENTS = 1 << 24


def _unfold(x: Tensor, weight: Tensor, stride, padding, dilation, groups) -> Tensor:
    """im2col of the zero-padded input as (N, groups, Cg*kh*kw, L)."""
    top, left, bottom, right = padding
    cols = F.unfold(F.pad(x, (left, right, top, bottom)), weight.shape[2:], dilation=dilation, stride=stride)
    return cols.view(x.shape[0], groups, -1, cols.shape[-1])


def _out_chunk(cols: Tensor, rows: int) -> int:
    return max(1, min(rows, CHUNK_ELEMENTS // max(1, cols.numel())))


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> Tensor:
    """``-sum |Xpad - W| (+ bias)``; padding is (top, left, bottom, right)."""
    out_hw = output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    cols = _unfold(x, weight, stride, padding, dilation, groups).unsqueeze(2)  # N, G, 1, K, L
    rows = weight.shape[0] // groups
    w = weight.reshape(groups, rows, -1, 1)
    out = x.new_empty(x.shape[0], groups, rows, cols.shape[-1])
    step = _out_chunk(cols, rows)
    for o in range(0, rows, step):
        out[:, :, o : o + step] = -(cols - w[:, o : o + step]).abs().sum(3)
    out = out.view(x.shape[0], weight.shape[0], *out_hw)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def backward_input(grad_out: Tensor, x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> Tensor:
    """``sum HardTanh(W - X) * grad_out``, scattered back through the padding."""
    cols = _unfold(x, weight, stride, padding, dilation, groups).unsqueeze(2)  # N, G, 1, K, L
    rows = weight.shape[0] // groups
    w = weight.reshape(groups, rows, -1, 1)
    g = grad_out.reshape(x.shape[0], groups, rows, 1, -1)
    grad_cols = torch.zeros_like(cols[:, :, 0])
    step = _out_chunk(cols, rows)
    for o in range(0, rows, step):
        grad_cols += ((w[:, o : o + step] - cols).clamp_(-1, 1) * g[:, :, o : o + step]).sum(2)
    top, left, bottom, right = padding
    padded_hw = (x.shape[2] + top + bottom, x.shape[3] + left + right)
    grad = F.fold(grad_cols.flatten(1, 2), padded_hw, weight.shape[2:], dilation=dilation, stride=stride)
    return grad[:, :, top : top + x.shape[2], left : left + x.shape[3]]


def grad_weight(grad_out: Tensor, x: Tensor, weight: Tensor, stride, padding, dilation, groups: int) -> Tensor:
    """``sum (X - W) * grad_out`` over images and positions, as ``X grad_out^T - W sum grad_out``.

    ``X grad_out^T`` is one batched GEMM over im2col, which stays in full FP32 on CUDA (cuDNN's convolution
    weight gradient may use TF32).
    """
    cols = _unfold(x, weight, stride, padding, dilation, groups)  # N, G, K, L
    g = grad_out.reshape(x.shape[0], groups, weight.shape[0] // groups, -1)
    products = torch.einsum("ngkl,ngml->gmk", cols, g).reshape(weight.shape)
    return products - weight * grad_out.sum((0, 2, 3)).view(-1, 1, 1, 1)
