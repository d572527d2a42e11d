"""INT8 adder models in the application: calibrate on training batches, export ``MODEL_adder_int8.onnx`` and evaluate it
beside the FP32 adder ONNX model: a classifier's top-1 and top-1 agreement, a segmentation model's mIoU, pixel
accuracy and argmax agreement, a detector's mAP and mAP@.5.

The calibration batches are drawn (shuffled, seeded) from the training split of the data set the model was
trained on, of its task (a segmentation or detection model's built-in scenes of the run's seed, or the COCO or VOC
folder it trained on); :func:`adderconvert.quantize` does the rest (see :mod:`adderconvert.quantization`). A
detector is calibrated on lists of images, as it takes them, and exports with its post-processing graph
(:mod:`adderconvert.deploy.dense`).
"""

from __future__ import annotations

import copy
import os
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from adderconvert.app.outputs import check_output_file, write_through
from adderconvert.app.saved_models import (
    SessionModel,
    count_images,
    dataset_for,
    deployment_metadata,
    onnx_logits,
    read_checkpoint_meta,
    recorded_seed,
)
from adderconvert.checkpoint import CheckpointMeta, load
from adderconvert.data_formats import FORMATS
from adderconvert.deploy.dense import model_task
from adderconvert.deploy.export import export_onnx
from adderconvert.deploy.runtime import make_session, run_dense
from adderconvert.metrics import confusion_matrix
from adderconvert.quantization import (
    CALIBRATION_BATCH_SIZE,
    DEFAULT_CALIBRATION_BATCHES,
    DEFAULT_METHOD,
    METHODS,
    quantize,
)
from adderconvert.train.dense import training_task

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


def calibration_batches(
    train_set, batches: int = DEFAULT_CALIBRATION_BATCHES, seed: int = 0, task: str = "classification"
) -> list[torch.Tensor]:
    """``batches`` shuffled batches of :data:`CALIBRATION_BATCH_SIZE` training images (fewer if the set is small),
    the same for the same ``seed``: without the training split's random flips (the inputs inference sees). The
    samples are those of ``task`` (``classification``, ``segmentation``, ``detection``); only the images are kept,
    a detector's stacked (its data share one size)."""
    check_calibration_batches(batches, len(train_set))
    if getattr(train_set, "flip", False):
        train_set = copy.copy(train_set)
        train_set.flip = False
    task_ = training_task(task)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=CALIBRATION_BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=task_.collate_fn,
    )
    return [task_.images(batch) for batch in islice(loader, batches)]


def export_int8(
    model: nn.Module,
    path: str | os.PathLike,
    batches: list[torch.Tensor],
    metadata: dict[str, Any],
    method: str = DEFAULT_METHOD,
    dynamic_hw: bool = False,
) -> Path:
    """Quantise a copy of ``model`` on ``batches`` and export it to ``path`` (QuantizedAdderConv nodes). A
    detector is calibrated on each batch as a list of images and exported with its post-processing."""
    if method not in METHODS:
        raise ValueError(f"--calibration-method must be one of {', '.join(METHODS)}, got {method!r}")
    model = model.cpu().eval()
    calibration = [list(batch) for batch in batches] if model_task(model) == "detection" else batches
    quantized = quantize(model, calibration, method)
    return export_onnx(quantized, path, batches[0][:2], dynamic_hw=dynamic_hw, metadata=metadata)


def _data_folder(checkpoint: Path, meta: CheckpointMeta) -> str | None:
    """The COCO or VOC folder the run of ``checkpoint`` trained on, from its run folder's ``config.yaml`` (the
    checkpoint records the data set's name, not its folder), a relative path there taken from the run folder; None
    where that is not there. ValueError, asking for ``--data``, where config.yaml cannot be read or names a folder
    that does not exist."""
    run = checkpoint.parent
    config = run / "config.yaml"
    if meta.dataset not in FORMATS or not config.is_file():
        return None
    try:
        values = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read config.yaml in {run} ({type(e).__name__}): pass --data DIR") from None
    if not isinstance(values, dict):
        raise ValueError(f"config.yaml in {run} holds a {type(values).__name__}, not options: pass --data DIR")
    data = values.get("data")
    if values.get("dataset") != meta.dataset or data is None:  # another run's, or one without a folder
        return None
    if not isinstance(data, str):
        raise ValueError(f"config.yaml in {run} names data folder {data!r}, not a path: pass --data DIR")
    folder = run / data  # an absolute path stays as it is
    if not folder.is_dir():
        raise ValueError(f"config.yaml in {run} names data folder {data}, which does not exist: pass --data DIR")
    return str(folder)


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
    ``MODEL_adder_int8.onnx`` beside it), calibrated on its training data set (``data``: its folder) in the order
    of its run's seed, as its main job's ``--int8`` was (:func:`~adderconvert.app.saved_models.recorded_seed`). A
    segmentation or detection model calibrates on its task's data: the built-in scenes of its run's seed, or the
    COCO or VOC folder of ``data`` (by default the one its run folder's ``config.yaml`` names). An existing output
    is replaced only with ``overwrite``; the checkpoint itself never."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no such file: {checkpoint}")
    meta = read_checkpoint_meta(checkpoint, "export")
    if meta.image_size is None:
        raise ValueError(f"{checkpoint} does not record its input size; quantise it from Python")
    if meta.stage != "adder":
        raise ValueError(f"{checkpoint} holds a {meta.stage} model: --int8 needs an adder model's checkpoint")
    if batches < 1:
        raise ValueError(f"--calibration-batches must be >= 1, got {batches}")
    if method not in METHODS:
        raise ValueError(f"--calibration-method must be one of {', '.join(METHODS)}, got {method!r}")
    output = Path(output) if output is not None else int8_path(checkpoint.parent, meta.official_arch or meta.model_name)
    check_output_file(output, overwrite=overwrite, inputs=[checkpoint])  # app/outputs.py's policy
    data = data if data is not None else _data_folder(checkpoint, meta)
    _, splits = dataset_for(meta, None, data, meta.image_size)
    check_calibration_batches(batches, len(splits.train))
    # the run's seed: the batches its main job calibrated on with --int8
    batches_ = calibration_batches(splits.train, batches, recorded_seed(meta), splits.task)
    model = load(checkpoint)
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
    task: str = "classification",
) -> dict[str, Any]:
    """The INT8 ONNX model's scores (%) on ``test_set`` under ``int8_`` + their names, and with ``fp32`` (the FP32
    adder ONNX model) ``int8_agreement``: the share (%) of images (a classifier's) or of pixels (a segmentation
    model's, the ignored ones included) on which both predict the same class; a detector has none (None): compare
    its ``int8_map`` with the FP32 model's. ``int8_images`` counts the images scored."""
    if task == "detection":  # detections of the whole set, scored together (pycocotools)
        session = SessionModel(make_session(int8), task)
        scores = training_task(task).evaluate(
            session, test_set, batch_size=batch_size, workers=workers, max_batches=max_batches
        )
        images = count_images(test_set, batch_size, max_batches)
        return {**{f"int8_{k}": v for k, v in scores.items()}, "int8_agreement": None, "int8_images": images}
    sessions = [make_session(int8)] + ([make_session(fp32)] if fp32 else [])
    loader = torch.utils.data.DataLoader(test_set, batch_size=batch_size, num_workers=workers)
    if task == "segmentation":
        return _compare_segmentation(sessions, loader, max_batches)
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


def _compare_segmentation(sessions: list, loader, max_batches: int | None) -> dict[str, Any]:
    """:func:`compare_onnx` of a segmentation model: the INT8 session's mIoU and pixel accuracy (the task's
    scores of its confusion matrices) and, with a second (FP32) session, the argmax agreement over the pixels."""
    confusions, agree, pixels, images = [], 0, 0, 0
    for batch, (inputs, masks) in enumerate(loader):
        if max_batches is not None and batch >= max_batches:
            break
        logits = [run_dense(session, inputs) for session in sessions]
        predictions = [output.argmax(1) for output in logits]
        confusions.append(confusion_matrix(predictions[0], masks, logits[0].shape[1]))
        if len(predictions) > 1:
            agree += int((predictions[0] == predictions[1]).sum())
        pixels += predictions[0].numel()
        images += len(inputs)
    scores = training_task("segmentation").scores(confusions)
    return {
        **{f"int8_{k}": v for k, v in scores.items()},
        "int8_agreement": 100.0 * agree / max(pixels, 1) if len(sessions) > 1 else None,
        "int8_images": images,
    }
