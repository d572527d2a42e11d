"""Saved models: top-1 of a checkpoint (PyTorch) or of an ONNX file (ONNX Runtime), and ONNX export of a
checkpoint with the metadata a deployment needs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from adderconvert.app.devices import resolve_device
from adderconvert.checkpoint import CheckpointMeta, load, read_meta
from adderconvert.data import load_dataset
from adderconvert.deploy.export import export_onnx, input_metadata, read_metadata
from adderconvert.deploy.runtime import make_session
from adderconvert.train import evaluate

__all__ = ["deployment_metadata", "evaluate_file", "export_checkpoint"]


def _dataset_for(meta_dataset: str | None, dataset: str | None, data: str | None, image_size: int | None):
    name = dataset or meta_dataset or "fashion-mnist"
    return name, load_dataset(name, data, image_size)


def _check_classes(model_classes: int, splits, name: str, target) -> None:
    if model_classes != splits.num_classes:
        raise ValueError(
            f"{target} has {model_classes} outputs but {name} has {splits.num_classes} classes: "
            "pass the --dataset it was trained on"
        )


def evaluate_file(
    target: str | os.PathLike,
    *,
    dataset: str | None = None,
    data: str | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    max_batches: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Top-1 (%) of a checkpoint or ``.onnx`` file on a data set's test split (by default the data set and
    input size the model was trained with). Returns ``target, top1, images, dataset, runtime``."""
    target = Path(target)
    if not target.is_file():
        raise FileNotFoundError(f"no such file: {target}")
    if target.suffix == ".onnx":
        return _evaluate_onnx(target, dataset, data, image_size, batch_size, max_batches)
    meta = read_meta(target)
    name, splits = _dataset_for(meta.dataset, dataset, data, image_size or meta.image_size)
    _check_classes(meta.num_classes, splits, name, target)
    device = resolve_device(device)
    model = load(target).to(device)
    top1 = evaluate(model, splits.test, batch_size=batch_size, device=device, max_batches=max_batches)
    images = _count(splits.test, batch_size, max_batches)
    return {"target": str(target), "top1": top1, "images": images, "dataset": name, "runtime": f"PyTorch, {device}"}


def _count(dataset, batch_size: int, max_batches: int | None) -> int:
    return len(dataset) if max_batches is None else min(len(dataset), batch_size * max_batches)


def _evaluate_onnx(target: Path, dataset, data, image_size, batch_size, max_batches) -> dict[str, Any]:

    try:
        model = onnx.load(str(target), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{target} is not a readable ONNX file: {e}") from e
    metadata = read_metadata(model)
    shape = model.graph.input[0].type.tensor_type.shape.dim
    fixed = shape[-1].dim_value if shape and shape[-1].HasField("dim_value") else None
    stored = metadata.get("image_size")
    size = image_size or (stored[-1] if isinstance(stored, list) and stored else None) or fixed
    name, splits = _dataset_for(metadata.get("dataset"), dataset, data, size)
    session = make_session(target)
    correct = total = 0
    loader = torch.utils.data.DataLoader(splits.test, batch_size=batch_size)
    for index, (images, labels) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        logits = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
        if index == 0:
            _check_classes(logits.shape[1], splits, name, target)
        correct += int((np.argmax(logits, 1) == labels.numpy()).sum())
        total += len(labels)
    return {
        "target": str(target),
        "top1": 100.0 * correct / max(total, 1),
        "images": total,
        "dataset": name,
        "runtime": f"ONNX Runtime, {session.get_providers()[0]}",
    }


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    dynamic_hw: bool = False,
    portable: bool = False,
) -> Path:
    """Export the model a checkpoint holds to ONNX (default: beside it, ``.onnx``), with its input size,
    normalisation, class names and data set as metadata."""
    checkpoint = Path(checkpoint)
    meta: CheckpointMeta = read_meta(checkpoint)
    if meta.image_size is None:
        raise ValueError(f"{checkpoint} does not record its input size; export it from Python with export_onnx")
    model = load(checkpoint)
    output = Path(output) if output is not None else checkpoint.with_suffix(".onnx")
    example = torch.zeros(2, 3, meta.image_size, meta.image_size)
    return export_onnx(
        model,
        output,
        example,
        dynamic_hw=dynamic_hw,
        portable=portable,
        metadata=deployment_metadata(meta),
    )


def deployment_metadata(meta: CheckpointMeta) -> dict[str, Any]:
    """What an ONNX file needs to be used alone: input size, normalisation, classes, layout, data set, model."""
    values = input_metadata(
        image_size=meta.image_size, mean=meta.mean, std=meta.std, classes=meta.classes, dataset=meta.dataset
    )
    return {**values, "model_name": meta.official_arch or meta.model_name}
