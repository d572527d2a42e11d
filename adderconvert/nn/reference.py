"""The official-style AdderNet layer (huawei-noah/AdderNet adder.py): a slow, memory-hungry broadcast
over a (Cout, Cin*kh*kw, N*L) tensor. It is the independent reference for the forward pass and the paper's
gradients (the tests run it in float64) and the baseline of benchmarks/layer.py and benchmarks/official.py;
nothing in the package computes with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adderconvert.nn.geometry import output_size

__all__ = ["reference_adder_conv2d"]


class _OfficialAdder(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_col: Tensor, w_col: Tensor) -> Tensor:
        ctx.save_for_backward(x_col, w_col)
        return -(w_col.unsqueeze(2) - x_col.unsqueeze(0)).abs().sum(1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x_col, w_col = ctx.saved_tensors
        # Unscaled: the official code also multiplies by eta*sqrt(k)/||g|| here; we test that separately.
        grad_w = ((x_col.unsqueeze(0) - w_col.unsqueeze(2)) * grad_out.unsqueeze(1)).sum(2)
        grad_x = (-(x_col.unsqueeze(0) - w_col.unsqueeze(2)).clamp(-1, 1) * grad_out.unsqueeze(1)).sum(0)
        return grad_x, grad_w


def reference_adder_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups: int = 1,
) -> Tensor:
    """Official-style adder convolution; padding is (top, left, bottom, right); groups run one by one."""
    n = x.shape[0]
    top, left, bottom, right = padding
    xp = F.pad(x, (left, right, top, bottom))
    kh, kw = weight.shape[2:]
    out_h, out_w = output_size(x.shape[2:], (kh, kw), stride, padding, dilation)
    cg, mg = x.shape[1] // groups, weight.shape[0] // groups
    outs = []
    for g in range(groups):
        cols = F.unfold(xp[:, g * cg : (g + 1) * cg], (kh, kw), dilation=dilation, stride=stride)
        x_col = cols.permute(1, 0, 2).reshape(cols.shape[1], -1)  # K, N*L
        w_col = weight[g * mg : (g + 1) * mg].reshape(mg, -1)
        out = _OfficialAdder.apply(x_col, w_col)  # Mg, N*L
        outs.append(out.view(mg, n, out_h * out_w).permute(1, 0, 2))
    y = torch.cat(outs, 1).reshape(n, weight.shape[0], out_h, out_w)
    return y if bias is None else y + bias.view(1, -1, 1, 1)
