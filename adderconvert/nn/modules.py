"""AdderConv2d: a drop-in replacement for :class:`torch.nn.Conv2d` that uses only additions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from adderconvert.nn.functional import adder_conv2d
from adderconvert.nn.geometry import pair, resolve_padding

__all__ = ["AdderConv2d", "combine_bases", "combining_conv", "interleaved_bases", "stack_bases"]


def stack_bases(weight: Tensor, groups: int, bases: int) -> Tensor:
    """``weight`` (out, in/groups, kh, kw) repeated for each of ``bases`` in :class:`AdderConv2d`'s layout: per group,
    the group's filters of base 0, then of base 1, ... (so that the stack is an ordinary grouped weight of
    ``bases * out`` filters)."""
    out = weight.shape[0]
    per_group = weight.reshape(groups, 1, out // groups, *weight.shape[1:])
    return per_group.expand(-1, bases, -1, *weight.shape[1:]).reshape(bases * out, *weight.shape[1:])


def combine_bases(y: Tensor, groups: int, bases: int, scale: Tensor, shift: Tensor) -> Tensor:
    """The output of :class:`AdderConv2d` with several bases from that of its stacked weight ``y`` (N, bases * out,
    H, W): base 0 plus ``scale[b - 1]`` (per output channel) times base b, plus ``shift``."""
    n, channels, *spatial = y.shape
    out = channels // bases
    parts = y.reshape(n, groups, bases, out // groups, *spatial)
    combined = parts[:, :, 0].reshape(n, out, *spatial) + shift.view(1, out, *([1] * len(spatial)))
    for b in range(1, bases):
        combined = combined + scale[b - 1].view(1, out, *([1] * len(spatial))) * parts[:, :, b].reshape(
            n, out, *spatial
        )
    return combined


def interleaved_bases(groups: int, bases: int, out: int) -> Tensor:
    """Indices into a stacked weight (:func:`stack_bases`'s layout) that put each output channel's bases side by
    side: entry ``c * bases + b`` is the filter of output channel ``c`` in base ``b``. Each group's filters stay in
    their group, so the reordered weight is still a grouped weight of ``groups`` groups."""
    per_group = out // groups
    channel = torch.arange(out)
    group, offset = channel // per_group, channel % per_group
    base = torch.arange(bases)
    return ((group[:, None] * bases + base[None, :]) * per_group + offset[:, None]).reshape(-1)


def combining_conv(scale: Tensor, shift: Tensor) -> nn.Conv2d:
    """The grouped 1x1 conv that is :func:`combine_bases` on outputs in :func:`interleaved_bases` order: one group
    per output channel, base 0 at weight 1, base b at ``scale[b - 1]``, bias ``shift``."""
    extra, out = scale.shape
    conv = nn.Conv2d((extra + 1) * out, out, 1, groups=out, bias=True, device=scale.device, dtype=scale.dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([torch.ones_like(scale[:1]), scale]).t().reshape(out, extra + 1, 1, 1))
        conv.bias.copy_(shift)
    return conv


class AdderConv2d(nn.Module):
    """Adder convolution layer (Chen et al., CVPR 2020) with ``nn.Conv2d``'s constructor.

    ``Y = -sum |X - W| (+ bias)`` over each receptive field; see :mod:`adderconvert.nn.functional` for the
    training rule. A BatchNorm after the layer is needed for training (adder outputs are large and
    negative). Only ``padding_mode='zeros'`` is supported.

    With ``bases`` > 1 the layer holds that many adder filters per output channel (``weight`` stacks them: see
    :func:`stack_bases`) and adds them up, each after the first scaled per channel (``base_scale``, (bases - 1,
    out)), plus ``base_shift``: a conv whose weights are approximated by several binary bases keeps more of its
    function, for ``bases`` times the additions (and one multiplication per output and extra base).
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
        bases: int = 1,
    ) -> None:
        super().__init__()
        if bases < 1:
            raise ValueError(f"bases must be a positive integer, got {bases}")
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
        self.bases = bases
        shape = (bases * out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        if bases > 1:  # zero: the extra bases add nothing until fitted or trained
            self.base_scale = nn.Parameter(torch.zeros(bases - 1, out_channels, **factory))
            self.base_shift = nn.Parameter(torch.zeros(out_channels, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like ``nn.Conv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, copy_weights: bool = True, bases: int = 1) -> AdderConv2d:
        """Build an AdderConv2d with ``conv``'s geometry and ``bases`` (and, by default, a copy of its weights, in
        every base, and bias)."""
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
            bases=bases,
        )
        if copy_weights:
            with torch.no_grad():
                layer.weight.copy_(stack_bases(conv.weight, conv.groups, bases))
                if conv.bias is not None:
                    layer.bias.copy_(conv.bias)
        return layer

    def base_weight(self, base: int) -> Tensor:
        """The weights of one base, (out, in/groups, kh, kw): a copy where the layer has several."""
        if self.bases == 1:
            return self.weight
        per_group = self.weight.reshape(
            self.groups, self.bases, self.out_channels // self.groups, *self.weight.shape[1:]
        )
        return per_group[:, base].reshape(self.out_channels, *self.weight.shape[1:])

    @torch.no_grad()
    def set_base_weight(self, base: int, weight: Tensor) -> None:
        """Set the weights of one base from ``weight`` (out, in/groups, kh, kw)."""
        per_group = self.weight.view(self.groups, self.bases, self.out_channels // self.groups, *self.weight.shape[1:])
        per_group[:, base].copy_(weight.reshape(self.groups, self.out_channels // self.groups, *weight.shape[1:]))

    def to_conv(self, copy_weights: bool = True) -> nn.Conv2d:
        """The ``nn.Conv2d`` of the same geometry (and, by default, a copy of the weights and bias): the inverse
        of :meth:`from_conv`, e.g. the CNN an adder model stands for (with several bases, the first one's weights)."""
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
                conv.weight.copy_(self.base_weight(0))
                if self.bias is not None:
                    conv.bias.copy_(self.bias)
        return conv

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """Resolved zero padding as (top, left, bottom, right)."""
        return resolve_padding(self.padding, self.kernel_size, self.stride, self.dilation)

    def forward(self, input: Tensor) -> Tensor:
        if self.bases == 1:
            return adder_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        y = adder_conv2d(input, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        y = combine_bases(y, self.groups, self.bases, self.base_scale, self.base_shift)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

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
        if self.bases != 1:
            s += f", bases={self.bases}"
        return s
