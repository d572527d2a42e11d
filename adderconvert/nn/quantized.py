"""The INT8 adder layer: :class:`QuantizedAdderConv2d` computes exactly the integers of the
``com.adderconvert::QuantizedAdderConv`` kernel.

The input and the weights share one grid, the layer's ``x_scale`` and ``x_zero_point``::

    inv = float32(1 / x_scale)
    qx  = clamp(round_half_even(x * inv) + x_zero_point, 0, 255)     (NaN -> x_zero_point)
    S   = sum over the taps of |qx - W|                              (W uint8; a padded tap reads x_zero_point)
    Y   = alpha[m] * S + beta[m]

``S`` is computed on ``qx - x_zero_point`` and ``W - x_zero_point``, float32 integers, by the float adder kernel
with zero padding: every partial sum of integers below 2^24 is exact in float32, so ``S`` is the integer the
kernel computes, bit for bit (:func:`integer_sums` checks the bound). The epilogue is computed in float64 and
rounded once to float32, as the kernel's ``fmaf`` does (a double rounding can differ in the last bit, rarely).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adderconvert.nn.functional import adder_conv2d
from adderconvert.nn.geometry import output_size, pair
from adderconvert.nn.modules import combine_bases

__all__ = [
    "QuantizedAdderConv2d",
    "inverse_scale",
    "quantize_values",
    "quantized_adder_conv2d",
]

# Sums of integers stay exact in float32 below this.
EXACT_FLOAT32 = 1 << 24


def inverse_scale(x_scale: float) -> Tensor:
    """``1 / x_scale`` divided in float32 (as the kernel's ``1.0f / x_scale``), a 0-d float32 tensor."""
    return torch.tensor(1.0, dtype=torch.float32) / torch.tensor(x_scale, dtype=torch.float32)


def quantize_values(x: Tensor, x_scale: float, x_zero_point: int) -> Tensor:
    """``clamp(round_half_even(x * float32(1 / x_scale)) + x_zero_point, 0, 255)`` as float32 integers; NaN gives
    the zero point, +inf 255 and -inf 0."""
    v = torch.round(x.float() * inverse_scale(x_scale))  # torch.round rounds halves to even
    v = torch.nan_to_num(v, nan=0.0)  # +-inf stay infinite (clamped below), NaN -> 0 (the zero point)
    return (v + x_zero_point).clamp_(0, 255)


def _check_grid(x_scale: float, x_zero_point: int) -> None:
    if not (x_scale > 0 and math.isfinite(x_scale)) or not torch.isfinite(inverse_scale(x_scale)):
        raise ValueError(f"x_scale must be positive and finite with 1/x_scale finite, got {x_scale}")
    if not 0 <= int(x_zero_point) <= 255 or int(x_zero_point) != x_zero_point:
        raise ValueError(f"x_zero_point must be an integer in 0..255, got {x_zero_point}")


@torch.library.custom_op("adderconvert::quantized_adder_conv2d", mutates_args=())
def _quantized_adder_conv2d(
    x: Tensor,
    weight: Tensor,
    alpha: Tensor,
    beta: Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    x_scale: float,
    x_zero_point: int,
    relu: bool,
) -> Tensor:
    s = _sums(x, weight, stride, padding, dilation, groups, x_scale, x_zero_point)
    y = (alpha.double().view(1, -1, 1, 1) * s.double() + beta.double().view(1, -1, 1, 1)).float()
    return y.clamp_min_(0) if relu else y


@_quantized_adder_conv2d.register_fake
def _(x, weight, alpha, beta, stride, padding, dilation, groups, x_scale, x_zero_point, relu):
    return x.new_empty(
        x.shape[0], weight.shape[0], *output_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)
    ).float()


def _sums(x, weight, stride, padding, dilation, groups, x_scale, x_zero_point) -> Tensor:
    taps = weight[0].numel()
    if 255 * taps >= EXACT_FLOAT32:
        raise ValueError(f"quantized adder layer: {taps} taps per output could exceed 2^24 (exact float32 sums)")
    a = quantize_values(x, x_scale, x_zero_point) - x_zero_point
    b = weight.float() - x_zero_point
    top, left, bottom, right = padding
    if (top, left) != (bottom, right):  # padding by the quantised 0, which is 0 after the shift
        a, top, left = F.pad(a, (left, right, top, bottom)), 0, 0
    return -adder_conv2d(a, b, None, stride, (top, left), dilation, groups)


def quantized_adder_conv2d(
    x: Tensor,
    weight: Tensor,
    alpha: Tensor,
    beta: Tensor,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    x_scale: float = 1.0,
    x_zero_point: int = 0,
    relu: bool = False,
) -> Tensor:
    """``alpha[m] * S + beta[m]`` (then ReLU) with ``S = sum |qx - W|``; ``weight`` uint8, ``padding`` (top, left,
    bottom, right). The op exports to ``com.adderconvert::QuantizedAdderConv``."""
    if weight.dtype != torch.uint8:
        raise TypeError(f"quantized_adder_conv2d: weight must be uint8, got {weight.dtype}")
    _check_grid(x_scale, x_zero_point)
    return _quantized_adder_conv2d(
        x.float(),
        weight,
        alpha.float(),
        beta.float(),
        list(pair(stride, "stride")),
        [int(p) for p in padding],
        list(pair(dilation, "dilation")),
        int(groups),
        float(x_scale),
        int(x_zero_point),
        bool(relu),
    )


class QuantizedAdderConv2d(nn.Module):
    """An adder layer on a uint8 grid shared by its input and its weights (see the module docstring).

    Built from an :class:`~adderconvert.nn.AdderConv2d` by :meth:`from_adder`: ``alpha = -x_scale`` and
    ``beta = bias - excess``, so the output stands for ``-sum |x - w| + bias``. Weights beyond the grid are
    clamped to its edge and the excess ``sum |w - clamp(w)|`` of each output channel goes into ``beta``: exact
    for inputs on the grid, since then ``|x - w| = |x - clamp(w)| + |w - clamp(w)|`` tap by tap.
    """

    def __init__(
        self,
        weight: Tensor,
        alpha: Tensor,
        beta: Tensor,
        *,
        stride: Sequence[int] = (1, 1),
        pads: Sequence[int] = (0, 0, 0, 0),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
        x_scale: float,
        x_zero_point: int,
        relu: bool = False,
        bases: int = 1,
        base_scale: Tensor | None = None,
        base_shift: Tensor | None = None,
    ) -> None:
        super().__init__()
        if weight.dtype != torch.uint8 or weight.dim() != 4:
            raise ValueError(f"weight must be a 4-D uint8 tensor, got {weight.dtype} {list(weight.shape)}")
        x_scale = float(torch.tensor(x_scale, dtype=torch.float32))  # the attribute ONNX stores is float32
        _check_grid(x_scale, x_zero_point)
        filters = weight.shape[0]
        for name, t in (("alpha", alpha), ("beta", beta)):
            if t.shape != (filters,):
                raise ValueError(f"{name} must have shape ({filters},), got {list(t.shape)}")
        if bases < 1 or filters % bases or (bases > 1 and relu):
            raise ValueError(f"bases must divide the {filters} filters (and exclude relu), got {bases}")
        self.bases = int(bases)
        self.register_buffer("weight", weight.clone())
        self.register_buffer("alpha", alpha.detach().float().clone())
        self.register_buffer("beta", beta.detach().float().clone())
        if bases > 1:  # AdderConv2d's extra bases: see adderconvert.nn.modules.combine_bases
            self.register_buffer("base_scale", base_scale.detach().float().reshape(bases - 1, filters // bases))
            self.register_buffer("base_shift", base_shift.detach().float().reshape(filters // bases))
        self.stride, self.dilation = pair(stride, "stride"), pair(dilation, "dilation")
        self.pads = tuple(int(p) for p in pads)
        self.groups = int(groups)
        self.x_scale, self.x_zero_point, self.relu = x_scale, int(x_zero_point), bool(relu)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0] // self.bases

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.weight.shape[2:])  # type: ignore[return-value]

    def grid(self) -> tuple[float, float]:
        """The real values of the integers 0 and 255: the range inputs and weights are clamped to."""
        return (self.x_scale * (0 - self.x_zero_point), self.x_scale * (255 - self.x_zero_point))

    @classmethod
    def from_adder(cls, layer: nn.Module, x_scale: float, x_zero_point: int) -> QuantizedAdderConv2d:
        """The quantised twin of ``layer`` (an AdderConv2d) on the grid ``x_scale``, ``x_zero_point``."""
        x_scale = float(torch.tensor(x_scale, dtype=torch.float32))
        _check_grid(x_scale, x_zero_point)
        w = layer.weight.detach().double().cpu()
        low, high = x_scale * (0 - x_zero_point), x_scale * (255 - x_zero_point)
        clamped = w.clamp(low, high)
        excess = (w - clamped).abs().flatten(1).sum(1)
        q = quantize_values(clamped.float(), x_scale, x_zero_point).to(torch.uint8)
        beta = -excess
        bases = getattr(layer, "bases", 1)
        extra = {}
        if bases > 1:  # the bias is added once, after the bases are combined
            shift = layer.base_shift.detach().double().cpu()
            shift = shift + layer.bias.detach().double().cpu() if layer.bias is not None else shift
            extra = {"bases": bases, "base_scale": layer.base_scale.detach().cpu(), "base_shift": shift}
        elif layer.bias is not None:
            beta = beta + layer.bias.detach().double().cpu()
        alpha = torch.full((w.shape[0],), -x_scale, dtype=torch.float64)
        module = cls(
            q,
            alpha,
            beta,
            stride=layer.stride,
            pads=layer.pads,
            dilation=layer.dilation,
            groups=layer.groups,
            x_scale=x_scale,
            x_zero_point=x_zero_point,
            **extra,
        )
        return module.to(layer.weight.device)

    def integer_sums(self, x: Tensor) -> Tensor:
        """``S = sum |qx - W|`` per output, float32 integers (exact)."""
        return _sums(
            x, self.weight, list(self.stride), list(self.pads), list(self.dilation), self.groups, self.x_scale,
            self.x_zero_point,
        )  # fmt: skip

    def forward(self, input: Tensor) -> Tensor:
        y = quantized_adder_conv2d(
            input,
            self.weight,
            self.alpha,
            self.beta,
            self.stride,
            self.pads,
            self.dilation,
            self.groups,
            self.x_scale,
            self.x_zero_point,
            self.relu,
        )
        return y if self.bases == 1 else combine_bases(y, self.groups, self.bases, self.base_scale, self.base_shift)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.bases != 1:
            s += f", bases={self.bases}"
        if any(self.pads):
            s += f", pads={self.pads}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", x_scale={self.x_scale:.6g}, x_zero_point={self.x_zero_point}"
