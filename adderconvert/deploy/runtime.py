"""Running exported adder models with ONNX Runtime: the runtime package ``adderconvert_ort`` (the
adderconvert-ort wheel, which deployments install without PyTorch) owns it; this module names it here, and adds
:func:`run_dense`, which gives a segmentation or detection session's outputs in torchvision's format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

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
    """Run an exported segmentation or detection model (``session`` from :func:`make_session`) on one batch of
    ``images`` (``(N, 3, H, W)``, normalised as for the PyTorch model, or a detector's list of such images) and
    return what the PyTorch model returns in eval mode, as torch tensors on the CPU:

    - segmentation (output ``logits``): the logits ``(N, C, H, W)``, the model's ``"out"``;
    - detection (outputs ``boxes``, ``scores``, ``labels``, ``image_index``): one dict per image with ``boxes``
      ``(n, 4)`` float32 ``x1, y1, x2, y2``, ``scores`` ``(n,)`` and ``labels`` ``(n,)`` int64, highest score first,
      what ``adderconvert.metrics.coco_map`` takes.

    A graph of one batch size (a two-stage R-CNN's) runs ``images`` in pieces of that size, the last one padded with
    zero images. A session of another model (a classifier) is a ``ValueError``."""
    import torch  # here, not at import: doctor, the report and INT8 name this module without needing it

    from adderconvert.deploy.dense import DETECTION_OUTPUTS  # torchvision's detection models: deferred as torch

    if isinstance(images, (list, tuple)):
        images = torch.stack(list(images))
    batch = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    names = [output.name for output in session.get_outputs()]
    name = session.get_inputs()[0].name
    if names == ["logits"]:
        return torch.from_numpy(session.run(None, {name: batch})[0])
    if sorted(names) != sorted(DETECTION_OUTPUTS):
        raise ValueError(f"not a segmentation or detection model exported by adderconvert: its outputs are {names}")
    size = session.get_inputs()[0].shape[0]
    step = size if isinstance(size, int) else len(batch)
    detections: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(batch), max(1, step)):
        piece = batch[start : start + step]
        if len(piece) < step:  # a graph of one batch size
            piece = np.concatenate([piece, np.zeros((step - len(piece), *piece.shape[1:]), piece.dtype)])
        found = dict(zip(names, (torch.from_numpy(v) for v in session.run(None, {name: piece}))))
        image_index = found.pop("image_index")
        count = min(step, len(batch) - start)
        detections += [{key: value[image_index == i] for key, value in found.items()} for i in range(count)]
    return detections
