"""Adder layers: :class:`AdderConv2d`, its functional form and the adaptive learning rate."""

from adderconvert.nn import functional
from adderconvert.nn.adaptive_lr import DEFAULT_ETA, adder_weights, scale_adder_gradients_
from adderconvert.nn.modules import AdderConv2d

__all__ = ["DEFAULT_ETA", "AdderConv2d", "adder_weights", "functional", "scale_adder_gradients_"]
