"""The adder convolution as a PyTorch custom op with the AdderNet training rule.

``Y[n, o, h, w] = -sum_{c, i, j} |Xpad[n, g*Cg + c, h*s + i*d, w*s + j*d] - W[o, c, i, j]| (+ bias)``

Backward follows Chen et al. (CVPR 2020), not autograd of ``|.|``:

* ``grad_weight = sum (X - W) * grad_out`` (full precision, unscaled; see :mod:`adderconvert.nn.adaptive_lr`)
* ``grad_input = sum HardTanh(W - X) * grad_out``

The forward pass and the input gradient run in the C++ kernel of ``custom_ops/cpu`` for CPU tensors and
in the CUDA kernels of ``custom_ops/cuda`` for float32 CUDA tensors; the weight gradient is a convolution
weight gradient through the identity ``sum (X - W) g = X g^T - W sum g``. Other devices and dtypes use a chunked
PyTorch implementation whose extra memory stays within a small multiple of im2col.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from adderconvert.nn import _kernels

__all__ = ["adder_conv2d", "resolve_padding"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)
# Elements one chunk of the device-agnostic path may materialise besides im2col.
_CHUNK_ELEMENTS = 1 << 24


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return values  # type: ignore[return-value]


def resolve_padding(
    padding: str | int | Sequence[int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """Turn Conv2d-style padding (int, pair, ``'same'`` or ``'valid'``) into (top, left, bottom, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
        if stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return (ph, pw, ph, pw)


def _output_size(x_hw, w_hw, stride, padding, dilation) -> tuple[int, int]:
    return tuple(
        (x + padding[a] + padding[a + 2] - d * (k - 1) - 1) // s + 1
        for a, (x, k, s, d) in enumerate(zip(x_hw, w_hw, stride, dilation))
    )  # type: ignore[return-value]


# --- device-agnostic implementation (chunked broadcast over output channels) -------------------------


def _unfold(x: Tensor, weight: Tensor, stride, padding, dilation, groups) -> Tensor:
    """im2col of the zero-padded input as (N, groups, Cg*kh*kw, L)."""
    top, left, bottom, right = padding
    cols = F.unfold(F.pad(x, (left, right, top, bottom)), weight.shape[2:], dilation=dilation, stride=stride)
    return cols.view(x.shape[0], groups, -1, cols.shape[-1])


def _out_chunk(cols: Tensor, rows: int) -> int:
    return max(1, min(rows, _CHUNK_ELEMENTS // max(1, cols.numel())))


def _forward_chunked(x, weight, stride, padding, dilation, groups) -> Tensor:
    cols = _unfold(x, weight, stride, padding, dilation, groups).unsqueeze(2)  # N, G, 1, K, L
    rows = weight.shape[0] // groups
    w = weight.reshape(groups, rows, -1, 1)
    out = x.new_empty(x.shape[0], groups, rows, cols.shape[-1])
    step = _out_chunk(cols, rows)
    for o in range(0, rows, step):
        out[:, :, o : o + step] = -(cols - w[:, o : o + step]).abs().sum(3)
    return out.view(x.shape[0], weight.shape[0], -1)


def _backward_input_chunked(grad_out, x, weight, stride, padding, dilation, groups) -> Tensor:
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


# --- the custom ops ---------------------------------------------------------------------------------


@torch.library.custom_op("adderconvert::adder_conv2d", mutates_args=())
def _adder_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    out_hw = _output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    if x.device.type == "cpu" or _kernels.has_cuda_kernels(x):
        out = x.new_empty(x.shape[0], weight.shape[0], *out_hw)
        b = bias.contiguous() if bias is not None else None
        run = _kernels.forward if x.device.type == "cpu" else _kernels.cuda_forward
        run(x.contiguous(), weight.contiguous(), b, out, stride, padding, dilation, groups)
        return out
    out = _forward_chunked(x, weight, stride, padding, dilation, groups).view(x.shape[0], -1, *out_hw)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


@_adder_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    out_hw = _output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    return x.new_empty(x.shape[0], weight.shape[0], *out_hw)


@torch.library.custom_op("adderconvert::adder_conv2d_backward", mutates_args=())
def _adder_conv2d_backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    input_grad: bool,
    weight_grad: bool,
) -> tuple[Tensor, Tensor]:
    grad_out = grad_out.contiguous()
    grad_x = x.new_empty(0)
    grad_w = weight.new_empty(0)
    if input_grad:
        if x.device.type == "cpu" or _kernels.has_cuda_kernels(x):
            grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
            run = _kernels.backward_input if x.device.type == "cpu" else _kernels.cuda_backward_input
            run(x.contiguous(), weight.contiguous(), grad_out, grad_x, stride, padding, dilation, groups)
        else:
            grad_x = _backward_input_chunked(grad_out, x, weight, stride, padding, dilation, groups)
    if weight_grad:
        # sum (X - W) g = X g^T - W sum g, where X g^T is the weight gradient of an ordinary convolution.
        grad_w = _conv_weight_grad(grad_out, x, weight, stride, padding, dilation, groups)
        grad_w -= weight * grad_out.sum((0, 2, 3)).view(-1, 1, 1, 1)
    return grad_x, grad_w


def _conv_weight_grad(grad_out, x, weight, stride, padding, dilation, groups) -> Tensor:
    """``sum_{n,h,w} Xpad[n, g*Cg + c, h*s + i*d, w*s + j*d] * grad_out[n, o, h, w]``: conv2d's weight gradient.

    On CPU it is oneDNN's; elsewhere one batched GEMM over im2col, which stays in full FP32 on CUDA
    (cuDNN's weight gradient may use TF32).
    """
    if x.device.type == "cpu":
        top, left, bottom, right = padding
        if (top, left) != (bottom, right):
            x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
        mask = [False, True, False]
        return torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, stride, [top, left], dilation, False, [0, 0], groups, mask
        )[1]
    cols = _unfold(x, weight, stride, padding, dilation, groups)  # N, G, K, L
    g = grad_out.view(x.shape[0], groups, weight.shape[0] // groups, -1)
    return torch.einsum("ngkl,ngml->gmk", cols, g).reshape(weight.shape)


@_adder_conv2d_backward.register_fake
def _(grad_out, x, weight, stride, padding, dilation, groups, input_grad, weight_grad):
    return (torch.empty_like(x) if input_grad else x.new_empty(0)), (
        torch.empty_like(weight) if weight_grad else weight.new_empty(0)
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x, grad_w = _adder_conv2d_backward(grad_out, x, weight, *ctx.conv_args, need_x, need_w)
    grad_b = grad_out.sum((0, 2, 3)) if ctx.has_bias and need_b else None
    return (grad_x if need_x else None), (grad_w if need_w else None), grad_b, None, None, None, None


_adder_conv2d.register_autograd(_backward, setup_context=_setup_context)


# --- public functional API ----------------------------------------------------------------------------


def _check_inputs(x: Tensor, weight: Tensor, bias: Tensor | None, padding, dilation, groups: int) -> None:
    if x.dim() != 4:
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to adder_conv2d, but got input of size: {list(x.shape)}"
        )
    if weight.dim() != 4:
        raise RuntimeError(f"adder_conv2d expects a 4D weight (out, in/groups, kh, kw), got {list(weight.shape)}")
    for name, t in (("input", x), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"adder_conv2d supports float32 and float64 tensors; {name} is {t.dtype}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"adder_conv2d: input ({x.dtype}) and weight/bias must have the same dtype")
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        raise RuntimeError(f"adder_conv2d: input is on {x.device} but weight/bias are on {weight.device}")
    if groups <= 0 or weight.shape[0] % groups != 0:
        raise RuntimeError(f"adder_conv2d: out_channels ({weight.shape[0]}) must be divisible by groups ({groups})")
    if weight.shape[1] * groups != x.shape[1]:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected input{list(x.shape)} "
            f"to have {weight.shape[1] * groups} channels, but got {x.shape[1]} channels instead"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise RuntimeError(f"adder_conv2d: bias must have shape ({weight.shape[0]},), got {list(bias.shape)}")
    padded = (x.shape[2] + padding[0] + padding[2], x.shape[3] + padding[1] + padding[3])
    kernel = tuple(d * (k - 1) + 1 for d, k in zip(dilation, weight.shape[2:]))
    if kernel[0] > padded[0] or kernel[1] > padded[1]:
        raise RuntimeError(
            f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). "
            f"Kernel size: ({kernel[0]} x {kernel[1]}). Kernel size can't be greater than actual input size"
        )


def adder_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """Adder convolution with :func:`torch.nn.functional.conv2d`'s signature (float32/float64).

    ``padding`` may be an int, a pair, ``'same'`` or ``'valid'``; padding is with zeros. A 3D input is
    treated as one unbatched image, as in ``conv2d``.
    """
    stride_hw, dilation_hw = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride_hw) <= 0 or min(dilation_hw) <= 0:
        raise ValueError(f"stride and dilation must be positive, got stride={stride}, dilation={dilation}")
    if weight.dim() != 4:
        raise RuntimeError(f"adder_conv2d expects a 4D weight (out, in/groups, kh, kw), got {list(weight.shape)}")
    pads = resolve_padding(padding, tuple(weight.shape[2:]), stride_hw, dilation_hw)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    _check_inputs(x, weight, bias, pads, dilation_hw, groups)
    out = _adder_conv2d(x, weight, bias, list(stride_hw), list(pads), list(dilation_hw), groups)
    return out.squeeze(0) if unbatched else out
