"""The adder convolution as a PyTorch custom op with the AdderNet training rule.

``Y[n, o, h, w] = -sum_{c, i, j} |Xpad[n, g*Cg + c, h*s + i*d, w*s + j*d] - W[o, c, i, j]| (+ bias)``

Backward follows Chen et al. (CVPR 2020), not autograd of ``|.|``:

* ``grad_weight = sum (X - W) * grad_out`` (full precision, unscaled; see :mod:`adderconvert.nn.adaptive_lr`)
* ``grad_input = sum HardTanh(W - X) * grad_out``

This module holds the public function, its checks, the two ops (forward and backward) and their autograd
rule. The implementations live in :mod:`adderconvert.nn.backends`, one module per device type, registered
below; the chunked PyTorch implementation is the default for devices without a kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from adderconvert.nn.backends import chunked, cpu, cuda
from adderconvert.nn.geometry import output_size, pair, resolve_padding

__all__ = ["adder_conv2d", "resolve_padding"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)


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
    """Default implementation, for devices without a kernel of their own."""
    return chunked.forward(x, weight, bias, stride, padding, dilation, groups)


@_adder_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    return x.new_empty(
        x.shape[0], weight.shape[0], *output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    )


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
    """Default implementation, for devices without a kernel of their own."""
    return _gradients(chunked, grad_out, x, weight, stride, padding, dilation, groups, input_grad, weight_grad)


def _gradients(backend, grad_out, x, weight, stride, padding, dilation, groups, input_grad, weight_grad):
    """The requested gradients from ``backend`` (an empty tensor for one not requested)."""
    args = (grad_out.contiguous(), x, weight, stride, padding, dilation, groups)
    grad_x = backend.backward_input(*args) if input_grad else x.new_empty(0)
    grad_w = backend.grad_weight(*args) if weight_grad else weight.new_empty(0)
    return grad_x, grad_w


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


# The kernels by device type; the default implementation (chunked) serves the others.
def _register_kernels(device_type: str, backend) -> None:
    _adder_conv2d.register_kernel(device_type)(backend.forward)
    _adder_conv2d_backward.register_kernel(device_type)(functools.partial(_gradients, backend))
    # Under torch.autocast (bf16/fp16) the op takes float32 inputs: |x - w| summed over thousands of taps
    # needs float32's mantissa, and the kernels are float32.
    torch.library.register_autocast("adderconvert::adder_conv2d", device_type, torch.float32)


_register_kernels("cpu", cpu)
_register_kernels("cuda", cuda)


# --- public functional API ----------------------------------------------------------------------------


def _check_inputs(x: Tensor, weight: Tensor, bias: Tensor | None, padding, dilation, groups: int) -> None:
    if x.dim() != 4:
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to adder_conv2d, but got input of size: {list(x.shape)}"
        )
    if weight.dim() != 4:
        raise RuntimeError(f"adder_conv2d expects a 4D weight (out, in/groups, kh, kw), got {list(weight.shape)}")
    if not torch.is_autocast_enabled(x.device.type):  # under autocast the op casts its inputs to float32
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
    stride_hw, dilation_hw = pair(stride, "stride"), pair(dilation, "dilation")
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
