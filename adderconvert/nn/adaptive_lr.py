"""The AdderNet adaptive learning rate, applied to gradients on the optimizer side.

The paper scales each adder layer's weight gradient to ``eta * sqrt(k) * g / ||g||_2`` (k = numel(W),
eta = 0.2). The official code does it inside backward, which is wrong under DDP (each rank scales its
own partial gradient before the all-reduce) and under gradient accumulation. Here ``.grad`` stays the
plain gradient; call :func:`scale_adder_gradients_` once per optimizer step::

    loss.backward()                 # DDP all-reduces gradients during backward
    scale_adder_gradients_(model)   # then rescale the adder weights' gradients
    optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

from adderconvert.nn.modules import AdderConv2d

__all__ = ["DEFAULT_ETA", "adder_weights", "scale_adder_gradients_"]

DEFAULT_ETA = 0.2  # the paper's, for training from scratch; fine-tuning uses more (TrainConfig.eta)


def adder_weights(model: nn.Module) -> Iterator[nn.Parameter]:
    """The weight parameters of every :class:`AdderConv2d` in ``model``."""
    for module in model.modules():
        if isinstance(module, AdderConv2d):
            yield module.weight


@torch.no_grad()
def scale_adder_gradients_(model: nn.Module, eta: float = DEFAULT_ETA) -> None:
    """Rescale, in place, each adder weight's ``.grad`` to ``eta * sqrt(numel) * grad / ||grad||_2``.

    Gradients that are missing or exactly zero are left alone.
    """
    if eta <= 0:
        raise ValueError(f"eta must be positive, got {eta}")
    for weight in adder_weights(model):
        grad = weight.grad
        if grad is None:
            continue
        norm = torch.linalg.vector_norm(grad)
        if norm > 0:
            grad.mul_(eta * math.sqrt(grad.numel()) / norm)
