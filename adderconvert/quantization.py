"""INT8 adder models: calibrate each adder layer's input range and swap the layer for its integer twin.

``|x - w|`` needs ``x`` and ``w`` on one grid, so each adder layer gets one scale and one zero point, shared by
its input and its weights (:class:`~adderconvert.nn.quantized.QuantizedAdderConv2d`). The grid covers the
layer's input range, measured on calibration batches (:func:`calibrate`) and widened to hold 0, so that zero
padding is exactly the zero point. Weights beyond the grid are clamped to its edge with the excess folded into a
per-output-channel constant, exact for inputs on the grid.

Calibration methods (:data:`METHODS`):

* ``minmax``: the smallest and largest input seen.
* ``percentile``: the ``100 - p`` and ``p`` percentiles (``p`` = :data:`DEFAULT_PERCENTILE`) of a random sample
  of every batch's inputs; a few outliers then cost the rest no resolution.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from adderconvert.nn import AdderConv2d
from adderconvert.nn.quantized import QuantizedAdderConv2d

__all__ = ["DEFAULT_METHOD", "DEFAULT_PERCENTILE", "METHODS", "LayerRange", "calibrate", "grid", "quantize"]

METHODS = ("minmax", "percentile")
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.99
# Inputs sampled per layer and batch for the percentile method.
_SAMPLE = 1 << 17


@dataclass
class LayerRange:
    """An adder layer's calibrated input range and the grid chosen for it."""

    name: str
    low: float
    high: float
    x_scale: float = 0.0
    x_zero_point: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def grid(low: float, high: float) -> tuple[float, int]:
    """``(x_scale, x_zero_point)`` of the uint8 grid over ``[low, high]`` widened to hold 0 (0 is then a grid
    point: the zero point)."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"calibrated range [{low}, {high}] is not finite")
    span = high - low
    if span <= 0:  # every input was 0: any grid holds it
        return 1.0, 0
    scale = span / 255
    zero_point = int(min(255, max(0, round(-low / scale))))
    return scale, zero_point


def _adder_layers(model: nn.Module) -> dict[str, AdderConv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdderConv2d)}


def calibrate(
    model: nn.Module,
    batches: Iterable[Tensor | tuple | list],
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    seed: int = 0,
) -> dict[str, LayerRange]:
    """The input range of every AdderConv2d of ``model`` (eval mode) on ``batches`` (image tensors, or
    ``(images, labels)`` pairs), by ``method`` (``minmax`` or ``percentile``)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    layers = _adder_layers(model)
    if not layers:
        raise ValueError("the model has no AdderConv2d layer to quantise")
    generator = torch.Generator().manual_seed(seed)
    lows: dict[str, float] = {name: math.inf for name in layers}
    highs: dict[str, float] = {name: -math.inf for name in layers}
    samples: dict[str, list[Tensor]] = {name: [] for name in layers}

    def hook(name):
        def record(module, inputs, output):
            x = inputs[0].detach().float().flatten()
            x = x[torch.isfinite(x)]
            if x.numel() == 0:
                return
            lows[name] = min(lows[name], float(x.min()))
            highs[name] = max(highs[name], float(x.max()))
            if method == "percentile":
                if x.numel() > _SAMPLE:
                    x = x[torch.randint(x.numel(), (_SAMPLE,), generator=generator).to(x.device)]
                samples[name].append(x.cpu())

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    was_training = model.training
    model.eval()
    seen = 0
    device = next(iter(layers.values())).weight.device
    try:
        with torch.no_grad():
            for batch in batches:
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(images.to(device))
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration needs at least one batch")
    ranges = {}
    for name in layers:
        if not math.isfinite(lows[name]):
            raise ValueError(f"adder layer {name} saw no finite input during calibration")
        low, high = lows[name], highs[name]
        if method == "percentile":
            values = torch.cat(samples[name]).double()
            q = torch.tensor([(100 - percentile) / 100, percentile / 100], dtype=torch.float64)
            low, high = (float(v) for v in torch.quantile(values, q))
        scale, zero_point = grid(low, high)
        ranges[name] = LayerRange(name, low, high, scale, zero_point)
    return ranges


def quantize(
    model: nn.Module,
    batches: Iterable[Tensor | tuple | list],
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    *,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) whose AdderConv2d layers are
    :class:`~adderconvert.nn.quantized.QuantizedAdderConv2d` on grids calibrated on ``batches`` (see
    :func:`calibrate`). The ranges are kept as ``model.quantization`` (a dict: method, layers)."""
    ranges = calibrate(model, batches, method, percentile)
    target = model if inplace else copy.deepcopy(model)
    for name, layer in _adder_layers(target).items():
        r = ranges[name]
        target.set_submodule(name, QuantizedAdderConv2d.from_adder(layer, r.x_scale, r.x_zero_point))
    target.quantization = {
        "method": method,
        "percentile": percentile if method == "percentile" else None,
        "layers": [r.to_dict() for r in ranges.values()],
    }
    return target.eval()
