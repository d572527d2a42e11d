"""INT8 adder models in the application: calibrate on training batches, export ``MODEL_adder_int8.onnx`` and evaluate it
beside the FP32 adder ONNX model (top-1 and top-1 agreement).

The calibration batches are drawn (shuffled, seeded) from the training split of the data set the model was
trained on; :func:`adderconvert.quantize` does the rest (see :mod:`adderconvert.quantization`).
"""

from __future__ import annotations

import copy
import os
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adderconvert.app.outputs import check_output_file, write_through
from adderconvert.app.saved_models import deployment_metadata, onnx_logits
from adderconvert.architectures.dense import DETECTION_MODELS, SEGMENTATION_MODELS
from adderconvert.checkpoint import CheckpointMeta, load, read_meta
from adderconvert.data import load_dataset
from adderconvert.deploy.export import export_onnx
from adderconvert.deploy.runtime import make_session
from adderconvert.quantization import (
    CALIBRATION_BATCH_SIZE,
    DEFAULT_CALIBRATION_BATCHES,
    DEFAULT_METHOD,
    METHODS,
    quantize,
)

__all__ = [
    "calibration_batches",
    "check_calibration_batches",
    "compare_onnx",
    "export_checkpoint_int8",
    "export_int8",
    "int8_path",
]


def int8_path(folder: str | os.PathLike, model_name: str) -> Path:
    """Where the INT8 model of ``model_name`` goes: ``FOLDER/MODEL_adder_int8.onnx`` (beside the run's
    ``MODEL_adder.onnx``)."""
    return Path(folder) / f"{model_name}_adder_int8.onnx"


def check_calibration_batches(batches: int, train_images: int) -> None:
    """ValueError unless ``batches`` calibration batches fit in a training set of ``train_images`` images."""
    if batches < 1:
        raise ValueError(f"--calibration-batches must be >= 1, got {batches}")
    available = -(-train_images // CALIBRATION_BATCH_SIZE)
    if batches > available:
        raise ValueError(
            f"--calibration-batches {batches}: the {train_images} training images make {available} batches of "
            f"{CALIBRATION_BATCH_SIZE}; ask for at most {available} (the default, {DEFAULT_CALIBRATION_BATCHES}, is "
            "enough)"
        )


def calibration_batches(train_set, batches: int = DEFAULT_CALIBRATION_BATCHES, seed: int = 0) -> list[torch.Tensor]:
    """``batches`` shuffled batches of :data:`CALIBRATION_BATCH_SIZE` training images (fewer if the set is small),
    the same for the same ``seed``: without the training split's random flips (the inputs inference sees)."""
    check_calibration_batches(batches, len(train_set))
    if getattr(train_set, "flip", False):
        train_set = copy.copy(train_set)
        train_set.flip = False
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=CALIBRATION_BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    return [images for images, _ in islice(loader, batches)]


def export_int8(
    model: nn.Module,
    path: str | os.PathLike,
    batches: list[torch.Tensor],
    metadata: dict[str, Any],
    method: str = DEFAULT_METHOD,
    dynamic_hw: bool = False,
) -> Path:
    """Quantise a copy of ``model`` on ``batches`` and export it to ``path`` (QuantizedAdderConv nodes)."""
    if method not in METHODS:
        raise ValueError(f"--calibration-method must be one of {', '.join(METHODS)}, got {method!r}")
    quantized = quantize(model.cpu().eval(), batches, method)
    return export_onnx(quantized, path, batches[0][:2], dynamic_hw=dynamic_hw, metadata=metadata)


def export_checkpoint_int8(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    batches: int = DEFAULT_CALIBRATION_BATCHES,
    method: str = DEFAULT_METHOD,
    data: str | None = None,
    dynamic_hw: bool = False,
    overwrite: bool = False,
) -> Path:
    """``adderconvert export CHECKPOINT --int8``: the INT8 ONNX model of an adder checkpoint (default
    ``MODEL_adder_int8.onnx`` beside it), calibrated on its training data set (``data``: its folder). An
    existing output is replaced only with ``overwrite``; the checkpoint itself never."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no such file: {checkpoint}")
    meta: CheckpointMeta = read_meta(checkpoint)
    if meta.image_size is None:
        raise ValueError(f"{checkpoint} does not record its input size; quantise it from Python")
    if meta.stage != "adder":
        raise ValueError(f"{checkpoint} holds a {meta.stage} model: --int8 needs an adder model's checkpoint")
    if meta.model_name in SEGMENTATION_MODELS + DETECTION_MODELS:
        raise ValueError(
            f"{checkpoint} holds a {meta.model_name} model: `export --int8` calibrates classifiers only so "
            "far; quantise it from Python (adderconvert.quantize(model, calibration) on its training scenes, then "
            "adderconvert.export_onnx)"
        )
    if batches < 1:
        raise ValueError(f"--calibration-batches must be >= 1, got {batches}")
    if method not in METHODS:
        raise ValueError(f"--calibration-method must be one of {', '.join(METHODS)}, got {method!r}")
    output = Path(output) if output is not None else int8_path(checkpoint.parent, meta.official_arch or meta.model_name)
    check_output_file(output, overwrite=overwrite, inputs=[checkpoint])  # app/outputs.py's policy
    model = load(checkpoint)
    splits = load_dataset(meta.dataset or "fashion-mnist", data, meta.image_size)
    check_calibration_batches(batches, len(splits.train))
    batches_ = calibration_batches(splits.train, batches)
    metadata = deployment_metadata(meta)
    return write_through(output, lambda tmp: export_int8(model, tmp, batches_, metadata, method, dynamic_hw=dynamic_hw))


def compare_onnx(
    int8: str | os.PathLike,
    fp32: str | os.PathLike | None,
    test_set,
    *,
    batch_size: int = 256,
    max_batches: int | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Top-1 (%) of the INT8 ONNX model on ``test_set`` and, with ``fp32`` (the FP32 adder ONNX model), the share
    of images (%) on which both predict the same class."""
    sessions = [make_session(int8)] + ([make_session(fp32)] if fp32 else [])
    loader = torch.utils.data.DataLoader(test_set, batch_size=batch_size, num_workers=workers)
    correct = agree = total = 0
    for outputs, labels in onnx_logits(sessions, loader, max_batches):
        predictions = [np.argmax(logits, 1) for logits in outputs]
        correct += int((predictions[0] == labels).sum())
        if fp32:
            agree += int((predictions[0] == predictions[1]).sum())
        total += len(labels)
    total = max(total, 1)
    return {
        "int8_top1": 100.0 * correct / total,
        "int8_agreement": 100.0 * agree / total if fp32 else None,
        "int8_images": total,
    }
