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
* ``mse``: the range whose quantised layer's output is closest (mean squared error) to the float layer's, on the
  first :data:`MSE_IMAGES` calibration images: a coordinate search over candidate upper and lower edges from
  30% of the percentile range out to the min/max. The score is the layer's output, not its input, because the
  range sets the grid of both: a narrower one rounds the weights inside it more finely (and clamps, exactly,
  more of them) but clips more inputs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from adderconvert.conversion.observers import RangeObserver
from adderconvert.conversion.plan import run_hooked
from adderconvert.nn import AdderConv2d
from adderconvert.nn.quantized import QuantizedAdderConv2d

__all__ = [
    "CALIBRATION_BATCH_SIZE",
    "DEFAULT_CALIBRATION_BATCHES",
    "DEFAULT_METHOD",
    "DEFAULT_PERCENTILE",
    "METHODS",
    "MSE_IMAGES",
    "LayerRange",
    "calibrate",
    "grid",
    "layer_output_mse",
    "quantize",
]

# Calibration data by default: this many batches of CALIBRATION_BATCH_SIZE training images.
DEFAULT_CALIBRATION_BATCHES = 16
CALIBRATION_BATCH_SIZE = 64
METHODS = ("minmax", "percentile", "mse")
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.99
# Inputs sampled per layer and batch for the percentile (and mse) method.
_SAMPLE = 1 << 17
# The mse method scores each layer on the first MSE_IMAGES calibration images (fewer where a layer's input
# would exceed _MSE_ELEMENTS values), with _MSE_POINTS candidates per edge between 30% of the percentile
# range and the percentile, as many between the percentile and the min/max, _MSE_ROUNDS rounds (high, low).
MSE_IMAGES = 256
_MSE_ELEMENTS = 1 << 22
_MSE_POINTS = 10
_MSE_ROUNDS = 2


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


def layer_output_mse(layer: AdderConv2d, x: Tensor, low: float, high: float, reference: Tensor | None = None) -> float:
    """Mean squared error between ``layer``'s output on ``x`` and its quantised twin's on the grid over
    ``[low, high]`` (see :func:`grid`); ``reference`` is ``layer(x)`` if already computed."""
    scale, zero_point = grid(low, high)
    with torch.no_grad():
        if reference is None:
            reference = layer(x)
        quantized = QuantizedAdderConv2d.from_adder(layer, scale, zero_point)
        return float((quantized(x).double() - reference.double()).pow(2).mean())


def _edges(percentile: float, extreme: float) -> list[float]:
    """Candidate values of one range edge: from 30% of the percentile edge to it, then on to the extreme."""
    if percentile == 0 and extreme == 0:
        return [0.0]
    if percentile == 0:  # the percentile sits at 0 (e.g. after a ReLU): candidates towards the extreme only
        return torch.linspace(0, extreme, 2 * _MSE_POINTS).tolist()[1:]
    inner = (percentile * r for r in torch.logspace(math.log10(0.3), 0, _MSE_POINTS).tolist())
    outer = torch.linspace(percentile, extreme, _MSE_POINTS).tolist()[1:]
    return sorted(set(inner) | set(outer))


def _mse_range(layer: AdderConv2d, x: Tensor, low: float, high: float, min_: float, max_: float) -> tuple[float, float]:
    """The ``(low, high)`` of least :func:`layer_output_mse` on ``x``, starting at the better of the percentile
    range ``[low, high]`` and the min/max ``[min_, max_]`` (so never worse than either on ``x``): alternately the
    best upper edge (lower one fixed), then the best lower edge."""
    with torch.no_grad():
        reference = layer(x)
    best = min(
        (layer_output_mse(layer, x, low, high, reference), low, high),
        (layer_output_mse(layer, x, min_, max_, reference), min_, max_),
    )
    highs, lows = _edges(high, max_), _edges(low, min_)
    for _ in range(_MSE_ROUNDS):
        for h in highs:
            error = layer_output_mse(layer, x, best[1], h, reference)
            if error < best[0]:
                best = (error, best[1], h)
        for lo in lows:
            error = layer_output_mse(layer, x, lo, best[2], reference)
            if error < best[0]:
                best = (error, lo, best[2])
    return best[1], best[2]


def calibrate(
    model: nn.Module,
    batches: Tensor | Iterable[Tensor | tuple | list] | Callable[[nn.Module], object],
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    seed: int = 0,
) -> dict[str, LayerRange]:
    """The input range of every AdderConv2d of ``model`` (eval mode) on ``batches`` (a tensor of images, an
    iterable of image tensors or ``(images, labels)`` pairs, or a callable ``forward_loop(model)``, as
    :func:`adderconvert.convert` takes), by ``method`` (one of :data:`METHODS`; see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (an adder model), got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    layers = _adder_layers(model)
    if not layers:
        raise ValueError("the model has no AdderConv2d layer to quantise")
    generator = torch.Generator().manual_seed(seed)
    sample = _SAMPLE if method in ("percentile", "mse") else 0
    observers = {name: RangeObserver(sample=sample, generator=generator) for name in layers}
    kept: dict[str, list[Tensor]] = {name: [] for name in layers}  # the mse method's scoring inputs

    def hook(name):
        def record(module, inputs, output):
            if method == "mse":
                x = inputs[0].detach().float()
                limit = min(MSE_IMAGES, max(1, _MSE_ELEMENTS // max(1, x[0].numel())))
                room = limit - sum(len(t) for t in kept[name])
                if room > 0:
                    kept[name].append(x[:room].cpu())
            observers[name].observe(inputs[0])

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    seen = run_hooked(model, batches, handles, next(iter(layers.values())).weight.device)
    if seen == 0:
        raise ValueError("calibration needs at least one batch")
    ranges = {}
    for name, observer in observers.items():
        if not observer.observed:
            raise ValueError(f"adder layer {name} saw no finite input during calibration")
        smallest, largest = low, high = observer.range()
        if method in ("percentile", "mse"):
            low, high = observer.percentile_range(percentile)
        if method == "mse":
            layer = layers[name]
            x = torch.cat(kept[name]).to(layer.weight.device)
            x = torch.nan_to_num(x, nan=0.0, posinf=largest, neginf=smallest)
            low, high = _mse_range(layer, x, low, high, smallest, largest)
        scale, zero_point = grid(low, high)
        ranges[name] = LayerRange(name, low, high, scale, zero_point)
    return ranges


def quantize(
    model: nn.Module,
    batches: Tensor | Iterable[Tensor | tuple | list] | Callable[[nn.Module], object],
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
        "percentile": percentile if method in ("percentile", "mse") else None,
        "layers": [r.to_dict() for r in ranges.values()],
    }
    return target.eval()
