"""Adder layers: :class:`AdderConv2d`, its functional form, the adaptive learning rate and the BatchNorm inserted
after a shared one (:class:`RunningStatsBatchNorm2d`)."""

from adderconvert.nn import functional
from adderconvert.nn.adaptive_lr import DEFAULT_ETA, adder_weights, scale_adder_gradients_
from adderconvert.nn.modules import AdderConv2d
from adderconvert.nn.norms import RunningStatsBatchNorm2d

__all__ = [
    "DEFAULT_ETA",
    "AdderConv2d",
    "RunningStatsBatchNorm2d",
    "adder_weights",
    "functional",
    "scale_adder_gradients_",
]
