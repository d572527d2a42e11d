"""The layer swap: replace the convs a plan converts with :class:`~adderconvert.nn.AdderConv2d` layers, their
weights set by an init (:data:`INIT_CHOICES`), and insert a ``BatchNorm2d`` where a converted conv has no norm
after it: the conv ``name`` becomes ``nn.Sequential(adder, bn)`` (``name.0``, ``name.1``). A
``FrozenBatchNorm2d`` after a converted conv becomes the ``BatchNorm2d`` it stands for, and the adder layer and its
norm are trainable whatever the CNN's conv was: an adder layer is trained, never left frozen.

:func:`swap_layers` is one step of :func:`adderconvert.convert`; :func:`restore` uses it alone to rebuild the
structure a saved adder model had.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from adderconvert.conversion.plan import ConversionReport, LayerDecision, plan_conversion
from adderconvert.nn import AdderConv2d
from adderconvert.nn.modules import stack_bases

__all__ = ["DEFAULT_INIT", "INIT_CHOICES", "SIGN_MARGIN", "SIGN_MIN_GAP", "restore", "sign_edges", "swap_layers"]

INIT_CHOICES = ("sign", "fresh", "rescale", "copy")
DEFAULT_INIT = "sign"
# "sign": each adder weight is placed this share of the layer's input span beyond the inputs measured in
# planning, so that inputs calibration did not see (up to that far out) still lie inside.
SIGN_MARGIN = 0.1
# ... and never closer than this to any of them: the training rule's input gradient HardTanh(W - X) is the
# tap's true slope sign(W - X) only where |W - X| >= 1. Closer, the backward pass stops matching the forward
# (after a ReLU, weights at 0 passed back -x, not -1, for every input x < 1), and the error compounds: on
# RegNet-Y the first step's input gradients grew ~10x per block (1.6e9 at block 1 against 0.06 for the CNN).
SIGN_MIN_GAP = 1.0


def sign_edges(decision: LayerDecision, margin: float = SIGN_MARGIN) -> tuple[float, float]:
    """Where the ``sign`` init puts the weights of the layer ``decision`` describes: (lower, upper), beyond
    the measured input range and zero (the padding) by ``margin`` of its span, and by at least
    :data:`SIGN_MIN_GAP`, so that the training rule's gradient is the true one at the start."""
    if decision.input_max is None:
        raise ValueError(
            f"{decision.name}: the conversion plan has no measured input range (a report from before it was "
            "measured); plan again with example batches, or use another init"
        )
    low, high = min(decision.input_min, 0.0), max(decision.input_max, 0.0)
    gap = max(margin * max(high - low, 0.0), SIGN_MIN_GAP)
    return low - gap, high + gap


def _init_weights(
    layer: AdderConv2d, conv: nn.Conv2d, init: str, decision: LayerDecision, sign_margin: float = SIGN_MARGIN
) -> None:
    input_std = decision.input_std
    with torch.no_grad():
        if init == "sign":
            # A tap whose weight lies beyond every input it meets computes -|x - w| = sign(w) * x - |w|: the
            # layer is the conv's binary-weight twin plus a per-channel constant that the norm after it takes.
            lower, upper = sign_edges(decision, sign_margin)
            layer.weight.copy_(stack_bases(torch.where(conv.weight >= 0, upper, lower), conv.groups, layer.bases))
        elif init == "fresh":
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            layer.weight.mul_(input_std / max(float(layer.weight.std()), 1e-12))
            if decision.input_min >= 0:
                # Inputs after a ReLU are never negative, and against them a negative weight only adds
                # |w| + x, the same for every filter: keep weights where the inputs are.
                layer.weight.abs_()
        elif init == "rescale":
            # Keep the pretrained filters' pattern, at the scale of the activations they meet:
            # |x - w| only discriminates when w lives where x does.
            layer.weight.mul_(input_std / max(float(conv.weight.std()), 1e-12))


def swap_layers(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    *,
    init: str = DEFAULT_INIT,
    report: ConversionReport | None = None,
    sign_margin: float = SIGN_MARGIN,
    **rules,
) -> nn.Module:
    """Swap convs for adder layers in place and return ``model``.

    ``init`` chooses the adder weights: ``"sign"`` (the default: each weight just past the range of the
    inputs measured on ``example_input``, on the side of the conv weight's sign, see :func:`sign_edges`;
    the model keeps the CNN's function up to binary weights, once its norms are re-estimated with
    :func:`~adderconvert.conversion.fit_norm_statistics`), ``"fresh"`` (Kaiming init scaled to the
    std of the layer's input activations and made non-negative where those inputs are, as after a ReLU),
    ``"rescale"`` (the conv's weights scaled to that std) or ``"copy"`` (the conv's weights as they are).
    Without a ``report`` the model is planned on ``example_input`` with ``rules`` (the keywords of
    :func:`plan_conversion`: include, exclude, keep_stem, ...); pass its ``report`` to apply a plan already made.
    ``sign_margin`` is :func:`sign_edges`' margin.

    With ``sign``, a BatchNorm inserted after an adder layer is set to give the conv's output scale:
    weight ``mean|W|`` per channel (the binary-weight twin's least-squares scale), its running statistics
    taking away the adder layer's constant; in eval mode the pair computes ``conv(x, mean|W| sign(W)) + b``.
    """
    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES}, got {init!r}")
    if report is None:
        report = plan_conversion(model, example_input, **rules)
    elif rules:
        raise TypeError(f"swap_layers follows the report it is given: its rules {sorted(rules)} would be ignored")
    for decision in report.converted:
        conv = model.get_submodule(decision.name)
        layer = AdderConv2d.from_conv(conv, bases=decision.bases).train(conv.training)
        _init_weights(layer, conv, init, decision, sign_margin)
        if decision.insert_bn:
            bn = nn.BatchNorm2d(conv.out_channels).to(device=conv.weight.device, dtype=conv.weight.dtype)
            bn.train(conv.training)
            if init == "sign":
                _match_conv_scale(bn, layer, conv)
            model.set_submodule(decision.name, nn.Sequential(layer, bn))
        else:
            model.set_submodule(decision.name, layer)
        if decision.norm is not None:
            _trainable_norm(model, decision.norm)
    return model


def _trainable_norm(model: nn.Module, name: str) -> None:
    """Make the norm ``name`` after an adder layer a trainable BatchNorm: a ``FrozenBatchNorm2d`` becomes the
    ``BatchNorm2d`` of the same statistics, affine and eps (in eval mode it computes the same), and a frozen
    BatchNorm's weight and bias train again."""
    norm = model.get_submodule(name)
    if isinstance(norm, FrozenBatchNorm2d):
        frozen = norm
        norm = nn.BatchNorm2d(frozen.weight.numel(), eps=frozen.eps).to(frozen.weight.device, frozen.weight.dtype)
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(norm, key).copy_(getattr(frozen, key))
        norm.train(frozen.training)
        model.set_submodule(name, norm)
    norm.requires_grad_(True)


def _match_conv_scale(bn: nn.BatchNorm2d, layer: AdderConv2d, conv: nn.Conv2d) -> None:
    """Set an inserted BatchNorm so that, in eval mode, it maps the sign-initialised ``layer``'s output
    ``sign(W) * x - sum|w| + b`` to ``mean|W| * sign(W) * x + b``."""
    with torch.no_grad():
        scale = conv.weight.abs().flatten(1).mean(1)
        constant = layer.base_weight(0).abs().flatten(1).sum(1)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        bn.weight.copy_(scale)
        bn.bias.copy_(bias)
        bn.running_mean.copy_(bias - constant if layer.bias is not None else -constant)
        bn.running_var.fill_(1.0 - bn.eps)


def restore(model: nn.Module, report: ConversionReport | dict) -> nn.Module:
    """Give a freshly built CNN the structure ``report`` describes (adder layers, inserted BatchNorms), in
    place, so that a state dict saved after :func:`swap_layers` loads into it. Weights are left to that load."""
    if isinstance(report, dict):
        report = ConversionReport.from_dict(report)
    return swap_layers(model, None, report=report, init="copy")
