"""Calibration data for a conversion: what :func:`adderconvert.convert` accepts, turned into one batch of images.

A conversion measures each layer's inputs (planning, the sign init), re-estimates BatchNorm statistics and
refits layers to the CNN's outputs, all on training images. They come as a tensor, as an iterable of batches (a
``DataLoader``: its first batches, up to :data:`CALIBRATION_IMAGES` images) or as a callable ``forward_loop(model)``
that runs the model on data itself (its inputs are recorded). A batch may also be a list of image tensors
(C, H, W), as detection models take them, or ``(images, targets)`` with such a list: its images are stacked, so they
must share one size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

import torch
from torch import nn

from adderconvert.conversion.plan import is_image_list, run_hooked

__all__ = ["CALIBRATION_IMAGES", "Calibration", "calibration_images"]

# Training images a conversion reads by default: enough for BatchNorm statistics and the layer fits, and
# cheap to hold at 224 px (0.6 GB).
CALIBRATION_IMAGES = 1024

Calibration = torch.Tensor | Iterable | Callable[[nn.Module], object]


class _Enough(BaseException):
    """Raised inside a forward loop once enough images are recorded (a BaseException: a loop's own ``except
    Exception`` does not swallow it)."""


def _images_of(batch: object, where: str) -> torch.Tensor:
    """The image tensor of one batch: the batch itself or the first item of an ``(images, labels, ...)`` pair, a
    list of image tensors (C, H, W) stacked."""
    images = batch[0] if isinstance(batch, (tuple, list)) and batch and not is_image_list(batch) else batch
    if is_image_list(images):
        sizes = sorted({tuple(t.shape) for t in images})
        if len(sizes) > 1:
            raise ValueError(
                f"calibration: {where} gave images of {len(sizes)} sizes ({', '.join(map(str, sizes[:3]))}); a "
                "conversion stacks them into one batch: give it images of one size (resized as the model's "
                "transform would)"
            )
        images = torch.stack(list(images))
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        found = f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"calibration: {where} gave {found}; a conversion needs image batches (N, C, H, W), lists of images "
            "(C, H, W) or (images, labels)"
        )
    return images


def _record_inputs(model: nn.Module, forward_loop: Callable[[nn.Module], object], limit: int) -> list[torch.Tensor]:
    """The image batches ``forward_loop`` feeds ``model`` (eval mode, no gradients), up to ``limit`` images."""
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs):
        have = sum(len(b) for b in seen)
        if have < limit:
            batch = args[0] if args else next(iter(kwargs.values()), None)
            seen.append(_images_of(batch, "the forward loop's model input").detach()[: limit - have])
        if sum(len(b) for b in seen) >= limit:
            raise _Enough

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run_hooked(model, forward_loop, [hook])  # eval mode, no gradients; the hook goes and the mode comes back
    except _Enough:
        pass
    return seen


def calibration_images(model: nn.Module, calibration: Calibration, limit: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """At most ``limit`` calibration images as one tensor on ``model``'s device and dtype.

    ``calibration`` is a tensor of images (N, C, H, W), an iterable of batches (tensors, lists of image tensors
    (C, H, W) of one size, or ``(images, labels)`` pairs of either, e.g. a ``DataLoader``; read until ``limit``
    images) or a callable ``forward_loop(model)`` (its inputs to ``model`` are recorded until ``limit`` images: a
    tensor or a list of image tensors, as a detector takes them with or without targets; the model runs in eval
    mode without gradients).
    """
    if limit < 1:
        raise ValueError(f"calibration: the number of images must be at least 1, got {limit}")
    if isinstance(calibration, torch.Tensor):
        batches = [_images_of(calibration, "the tensor")[:limit]]
    elif callable(calibration) and not isinstance(calibration, Iterable):
        batches = _record_inputs(model, calibration, limit)
    elif isinstance(calibration, Iterable):
        batches, count = [], 0
        for batch in islice(calibration, limit):  # every batch holds one image at least
            batches.append(_images_of(batch, "a batch")[: limit - count])
            count += len(batches[-1])
            if count >= limit:
                break
    else:
        raise TypeError(
            "calibration must be a tensor of images, an iterable of batches (a DataLoader) or a callable "
            f"forward_loop(model); got {type(calibration).__name__}"
        )
    if not batches or sum(len(b) for b in batches) == 0:
        raise ValueError("calibration: no images (an empty tensor, loader or forward loop)")
    if sum(len(b) for b in batches) < 2:
        raise ValueError("calibration: one image only; BatchNorm statistics need two at least (about 1,024 is right)")
    param = next(model.parameters(), None)
    images = torch.cat([b.to(param.device if param is not None else b.device) for b in batches])
    if not images.is_floating_point():
        raise ValueError(f"calibration: images must be floating point (normalised as in training), got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("calibration: the images hold NaN or infinite values")
    return images.to(param.dtype) if param is not None else images
