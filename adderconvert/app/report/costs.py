"""Operation counts and energies of a model, per image and per layer (the cost report's accounting).

Accounting (Chen et al., CVPR 2020): a conv or linear MAC is 1 multiplication + 1 addition; an adder
MAC (``|x - w|`` accumulated) is 2 additions; a bias is 1 addition per output. The headline totals
(``multiplications``, ``additions``, ``energy_pj``, ``energy_ratio``) cover every Conv2d, AdderConv2d
and Linear layer, as the paper does. BatchNorm is counted apart (``batchnorm``, ``energy_pj_with_batchnorm``):
after a convolution or linear layer it folds into the weights at inference (free), while after an adder
layer (or anywhere else) it stays a per-element scale and shift, 1 multiplication + 1 addition (a BatchNorm
right after another merges into it).
Energies use 45 nm figures from Horowitz, ISSCC 2014 (:data:`ENERGY_PJ`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from adderconvert.nn import AdderConv2d

__all__ = [
    "ENERGY_PJ",
    "ENERGY_SOURCE",
    "LayerCost",
    "OperationCounts",
    "cnn_twin",
    "count_operations",
    "deployed_int8_energy_pj",
    "energy_pj",
]

# pJ per operation at 45 nm (M. Horowitz, "Computing's energy problem", ISSCC 2014).
ENERGY_PJ: dict[str, dict[str, float]] = {
    "fp32": {"multiplication": 3.7, "addition": 0.9},
    "int32": {"multiplication": 3.1, "addition": 0.1},
    "int8": {"multiplication": 0.2, "addition": 0.03},
}


ENERGY_SOURCE = "45 nm, M. Horowitz, Computing's energy problem (and what we can do about it), ISSCC 2014"


@dataclass
class LayerCost:
    """Operations of one layer for one image."""

    name: str
    kind: str  # "conv", "adder" or "linear"
    weight_shape: list[int]
    output_shape: list[int]  # without the batch dimension
    macs: int
    multiplications: int
    additions: int
    # Of ``additions``, those combining an adder layer's extra bases (FP32 in every deployment).
    combine_additions: int = 0


@dataclass
class OperationCounts:
    """Per-image operations of a model: its Conv2d/AdderConv2d/Linear layers and its BatchNorm epilogue."""

    layers: list[LayerCost]
    bn_multiplications: int
    bn_additions: int

    @property
    def multiplications(self) -> int:
        return sum(layer.multiplications for layer in self.layers)

    @property
    def additions(self) -> int:
        return sum(layer.additions for layer in self.layers)


def count_operations(model: nn.Module, input_shape: tuple[int, int, int]) -> OperationCounts:
    """Count per-image operations of ``model`` on one ``(C, H, W)`` input by forward hooks.

    Returns the Conv2d/AdderConv2d/Linear layers in call order and the BatchNorm epilogue's operations
    (see the module docstring for the accounting).
    """
    layers: list[LayerCost] = []
    # Conv/linear outputs a following BatchNorm folds into, kept alive so that their ids stay unique.
    foldable: dict[int, torch.Tensor] = {}
    bn_ops = [0]
    names = {module: name for name, module in model.named_modules()}

    def on_layer(module: nn.Module, inputs, output: torch.Tensor) -> None:
        per_image = list(output.shape[1:])
        outputs = math.prod(per_image)
        if isinstance(module, nn.Linear):
            kind, fan_in = "linear", module.in_features
        else:
            kind = "adder" if isinstance(module, AdderConv2d) else "conv"
            fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
        bases = getattr(module, "bases", 1)  # an adder layer's binary bases: each one more output filter
        macs = outputs * fan_in * bases
        bias = outputs if module.bias is not None else 0
        combine = 0
        if kind == "adder":  # |x - w| and its sum per tap; per output, each extra base a scale and a sum, one shift
            combine = outputs * bases if bases > 1 else 0
            mults, adds = outputs * (bases - 1), 2 * macs + bias + combine
        else:
            mults, adds = macs, macs + bias
            foldable[id(output)] = output
        shape = list(module.weight.shape)
        layers.append(LayerCost(names[module], kind, shape, per_image, macs, mults, adds, combine))

    def on_batchnorm(module: nn.Module, inputs, output: torch.Tensor) -> None:
        if id(inputs[0]) not in foldable:
            bn_ops[0] += output[0].numel()
        foldable[id(output)] = output  # a BatchNorm right after this one merges into the same scale and shift

    was_training = model.training
    model.eval()
    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, AdderConv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_layer))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_hook(on_batchnorm))
    try:
        parameter = next(model.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.float32
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return OperationCounts(layers, bn_ops[0], bn_ops[0])


def energy_pj(multiplications: int, additions: int, precision: str = "fp32") -> float:
    """Energy in pJ of ``multiplications`` and ``additions`` at ``precision`` (a key of :data:`ENERGY_PJ`)."""
    table = ENERGY_PJ[precision]
    return multiplications * table["multiplication"] + additions * table["addition"]


def deployed_int8_energy_pj(counts: OperationCounts, quantized_kinds: tuple[str, ...]) -> float:
    """Energy in pJ of ``counts``' layers as an INT8 model runs them: a MAC of a layer whose kind is in
    ``quantized_kinds`` is one 8-bit operation (a multiplication for conv and linear, the addition
    ``|x - w|`` for adder) plus one 32-bit accumulation, a bias one 32-bit addition; the other layers stay
    FP32. The INT8 CNN (ONNX Runtime's QLinearConv and QGemm) quantises ``("conv", "linear")``; the INT8
    AdderNet (QuantizedAdderConv) ``("adder",)``, its stem and classifier staying FP32."""
    total = 0.0
    accumulate = ENERGY_PJ["int32"]["addition"]
    for layer in counts.layers:
        if layer.kind not in quantized_kinds:
            total += energy_pj(layer.multiplications, layer.additions, "fp32")
            continue
        adder = layer.kind == "adder"
        operation = ENERGY_PJ["int8"]["addition" if adder else "multiplication"]
        bias = layer.additions - (2 if adder else 1) * layer.macs - layer.combine_additions
        total += layer.macs * (operation + accumulate) + bias * accumulate
        if adder:  # the combination of extra bases (per-channel scales, sums, shift) stays FP32
            total += energy_pj(layer.multiplications, layer.combine_additions, "fp32")
    return total


def cnn_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every AdderConv2d replaced by a Conv2d of the same geometry (the CNN it stands for)."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, AdderConv2d):
            twin.set_submodule(name, module.to_conv(copy_weights=False))
    return twin.eval()
