"""AdderConv2d: a drop-in replacement for :class:`torch.nn.Conv2d` that uses only additions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adderconvert.nn.functional import adder_conv2d
from adderconvert.nn.geometry import pair, resolve_padding

__all__ = ["AdderConv2d"]


class AdderConv2d(nn.Module):
    """Adder convolution layer (Chen et al., CVPR 2020) with ``nn.Conv2d``'s constructor.

    ``Y = -sum |X - W| (+ bias)`` over each receptive field; see :mod:`adderconvert.nn.functional` for the
    training rule. A BatchNorm after the layer is needed for training (adder outputs are large and
    negative). Only ``padding_mode='zeros'`` is supported.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: str | int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode != "zeros":
            raise NotImplementedError(
                f"AdderConv2d supports only padding_mode='zeros' (the AdderNet definition), got {padding_mode!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.dilation = pair(dilation, "dilation")
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding")
        self.groups = groups
        self.padding_mode = padding_mode
        # Validates 'same' with stride, negative values and so on at construction, as Conv2d does.
        resolve_padding(self.padding, self.kernel_size, self.stride, self.dilation)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like ``nn.Conv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, copy_weights: bool = True) -> AdderConv2d:
        """Build an AdderConv2d with ``conv``'s geometry (and, by default, a copy of its weights and bias)."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        if copy_weights:
            with torch.no_grad():
                layer.weight.copy_(conv.weight)
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
        return layer

    def to_conv(self, copy_weights: bool = True) -> nn.Conv2d:
        """The ``nn.Conv2d`` of the same geometry (and, by default, a copy of the weights and bias): the inverse
        of :meth:`from_conv`, e.g. the CNN an adder model stands for."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        if copy_weights:
            with torch.no_grad():
                conv.weight.copy_(self.weight)
                if self.bias is not None:
                    conv.bias.copy_(self.bias)
        return conv

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """Resolved zero padding as (top, left, bottom, right)."""
        return resolve_padding(self.padding, self.kernel_size, self.stride, self.dilation)

    def forward(self, input: Tensor) -> Tensor:
        return adder_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
