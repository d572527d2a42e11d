"""Running exported adder models with ONNX Runtime: the runtime package ``adderconvert_ort`` (the
adderconvert-ort wheel, which deployments install without PyTorch) owns it; this module names it here, and adds
:func:`run_dense`, which gives a segmentation or detection session's outputs in torchvision's format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from adderconvert.deploy.dense import DETECTION_OUTPUTS
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
    """Run an exported segmentation or detection model (``session`` from :func:`make_session`) on one batch of
    ``images`` (``(N, 3, H, W)``, normalised as for the PyTorch model, or a detector's list of such images) and
    return what the PyTorch model returns in eval mode, as torch tensors on the CPU:

    - segmentation (output ``logits``): the logits ``(N, C, H, W)``, the model's ``"out"``;
    - detection (outputs ``boxes``, ``scores``, ``labels``, ``image_index``): one dict per image with ``boxes``
      ``(n, 4)`` float32 ``x1, y1, x2, y2``, ``scores`` ``(n,)`` and ``labels`` ``(n,)`` int64, highest score first,
      what ``adderconvert.metrics.coco_map`` takes.

    A session of another model (a classifier) is a ``ValueError``."""
    if isinstance(images, (list, tuple)):
        images = torch.stack(list(images))
    batch = np.ascontiguousarray(images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images)
    names = [output.name for output in session.get_outputs()]
    feed = {session.get_inputs()[0].name: batch.astype(np.float32, copy=False)}
    if names == ["logits"]:
        return torch.from_numpy(session.run(None, feed)[0])
    if sorted(names) != sorted(DETECTION_OUTPUTS):
        raise ValueError(f"not a segmentation or detection model exported by adderconvert: its outputs are {names}")
    found = dict(zip(names, (torch.from_numpy(v) for v in session.run(None, feed))))
    image_index = found.pop("image_index")
    return [{key: value[image_index == i] for key, value in found.items()} for i in range(len(batch))]
