"""RunningStatsBatchNorm2d: the BatchNorm inserted after an adder layer that a model runs more than once per forward."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RunningStatsBatchNorm2d"]


class RunningStatsBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` that normalises with its running statistics in training mode too, and keeps them.

    The conversion inserts it after an adder layer whose conv had no BatchNorm and runs more than once per forward:
    a detection head shared by the levels of a feature pyramid (FCOS, RetinaNet, the RPN), whose GroupNorm or
    missing norm treated every level alike. A ``BatchNorm2d`` there would normalise each level by its own batch
    statistics in training, and by one average of them all in evaluation: fine-tuning would train another function
    than the one evaluated, and re-estimating its statistics would change what the conversion fitted. This one
    is a trainable per-channel affine map in both modes (``weight / sqrt(running_var + eps)`` times the input minus
    ``running_mean``, plus ``bias``), exported as the ``BatchNormalization`` it is in eval mode. Its statistics are
    set only while ``estimating`` is true (:func:`adderconvert.conversion.fit_norm_statistics`, at conversion).
    """

    estimating: bool = False

    def forward(self, input: Tensor) -> Tensor:
        if self.estimating:
            return super().forward(input)
        self._check_input_dim(input)
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
