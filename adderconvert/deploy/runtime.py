"""Running exported adder models with ONNX Runtime: the runtime package ``adderconvert_ort`` (the
adderconvert-ort wheel, which deployments install without PyTorch) owns it; this module names it here, and its
:func:`run_dense` gives a segmentation or detection session's outputs as torch tensors (``adderconvert_ort.run_dense``
gives them as numpy arrays)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

import adderconvert_ort
from adderconvert_ort import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    available_providers,
    build_info,
    get_library_path,
    kernel_path,
    make_session,
    model_metadata,
)

if TYPE_CHECKING:
    import torch

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "available_providers",
    "build_info",
    "get_library_path",
    "kernel_path",
    "make_session",
    "model_metadata",
    "run_dense",
]


def run_dense(session: Any, images: torch.Tensor | np.ndarray | Sequence[torch.Tensor]) -> Any:
    """:func:`adderconvert_ort.run_dense` with torch tensors: ``images`` a batch ``(N, 3, H, W)`` (or a detector's
    list of such images, of one size), the result as torch tensors on the CPU: the logits ``(N, C, H, W)`` of a
    segmentation model, the model's ``"out"``, or a detector's one dict per image (``boxes``, ``scores``,
    ``labels``), what ``adderconvert.metrics.confusion_matrix`` and ``coco_map`` take."""
    import torch  # here, not at import: doctor, the report and INT8 name this module without needing it

    if isinstance(images, (list, tuple)):
        images = [image.detach().cpu().numpy() for image in images]
    elif isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    outputs = adderconvert_ort.run_dense(session, images)
    if isinstance(outputs, np.ndarray):
        return torch.from_numpy(outputs)
    return [{key: torch.from_numpy(value) for key, value in found.items()} for found in outputs]
