"""Health of a fine-tuned adder model's weights: their spread and how many are saturated.

An adder tap computes ``|x - w|``. When ``w`` lies at or beyond every input ``x`` the tap ever sees,
``|x - w|`` is linear in ``x`` (``w - x`` or ``x - w``): the layer drifts toward a sign-weighted sum
plus a constant, and the weight no longer compares ``x`` with anything. Such a weight is *saturated*.
The range is measured per tap, over the values that tap reads (its input channel at its kernel
offset, zero padding included), with forward hooks over a few batches.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from adderconvert.conversion import RangeObserver, run_hooked
from adderconvert.nn import AdderConv2d

__all__ = ["adder_weight_stats", "saturation_summary"]

_SAMPLES_PER_UNFOLD = 8  # bounds the memory of the unfolded receptive fields


def adder_weight_stats(
    model: nn.Module, batches: Iterable, device: str | torch.device = "cpu"
) -> list[dict[str, float | str]]:
    """Per adder layer (in the order they run): weight std and saturation, measured on ``batches``.

    ``batches`` yields input tensors or ``(inputs, labels)`` pairs; pass a few (e.g. with
    ``itertools.islice``). The model runs in eval mode without gradients and is left in the mode it
    had. Each dict holds ``name``, ``weight_std`` (population std of the layer's weights),
    ``saturation`` (fraction of its weights at or beyond the range of the inputs their tap reads),
    ``saturated`` and ``weights`` (the counts behind it), and ``input_min``/``input_max`` (the range
    of everything the layer read, zero padding included). Layers the batches never reach are left out.
    """
    ranges: dict[str, RangeObserver] = {}
    hooks = [
        module.register_forward_pre_hook(_range_recorder(ranges, name))
        for name, module in model.named_modules()
        if isinstance(module, AdderConv2d)
    ]
    seen = run_hooked(model, batches, hooks, device)
    if seen == 0:
        raise ValueError("adder_weight_stats needs at least one batch")

    modules = dict(model.named_modules())
    stats = []
    for name, observer in ranges.items():
        weight = modules[name].weight.detach()
        low, high = _per_weight(modules[name], observer.low, observer.high)
        saturated = int(((weight >= high) | (weight <= low)).sum())
        stats.append(
            {
                "name": name,
                "weight_std": float(weight.float().std(correction=0)),
                "saturation": saturated / weight.numel(),
                "saturated": saturated,
                "weights": weight.numel(),
                "input_min": float(low.min()),
                "input_max": float(high.max()),
            }
        )
    return stats


def saturation_summary(stats: list[dict[str, float | str]]) -> dict[str, float | int]:
    """Model-wide figures of :func:`adder_weight_stats`' output: ``layers``, ``mean_saturation`` (mean of
    the layers' saturation), ``saturated_fraction`` (saturated weights over all adder weights) and
    ``max_weight_std``."""
    if not stats:
        return {"layers": 0, "mean_saturation": 0.0, "saturated_fraction": 0.0, "max_weight_std": 0.0}
    return {
        "layers": len(stats),
        "mean_saturation": sum(s["saturation"] for s in stats) / len(stats),
        "saturated_fraction": sum(s["saturated"] for s in stats) / sum(s["weights"] for s in stats),
        "max_weight_std": max(s["weight_std"] for s in stats),
    }


def _range_recorder(ranges: dict[str, RangeObserver], name: str):
    """A pre-hook folding the per-tap (channel, kernel row, kernel column) range of the layer's input into
    ``ranges[name]``."""

    def hook(module: AdderConv2d, inputs) -> None:
        x = inputs[0].detach().float()
        top, left, bottom, right = module.pads
        x = F.pad(x, (left, right, top, bottom))  # the zeros the padded taps read
        observer = ranges.setdefault(name, RangeObserver(per_index=1))
        for chunk in x.split(_SAMPLES_PER_UNFOLD):
            # (N, C*kh*kw, L): column l holds what every tap reads at output position l.
            observer.observe(F.unfold(chunk, module.kernel_size, dilation=module.dilation, stride=module.stride))

    return hook


def _per_weight(module: AdderConv2d, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tap ranges laid out like the weight: filter o of group g reads that group's inputs."""
    groups, kernel = module.groups, module.kernel_size
    per_group = module.in_channels // groups
    filters = module.weight.shape[0]  # out_channels times the layer's bases, each group's filters together
    group_of_output = torch.arange(filters, device=low.device) // (filters // groups)

    def expand(bound: torch.Tensor) -> torch.Tensor:
        return bound.view(groups, per_group, *kernel)[group_of_output].to(module.weight.device)

    return expand(low), expand(high)
