"""Saved models: top-1 of a checkpoint (PyTorch) or of an ONNX file (ONNX Runtime), the metric of a segmentation
or detection checkpoint (mIoU, mAP), and ONNX export of a checkpoint with the metadata a deployment needs; the
data sets of every task by name (:func:`load_data`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from adderconvert.app.devices import resolve_device
from adderconvert.app.outputs import check_output_file, write_through
from adderconvert.architectures.dense import DEFAULT_IMAGE_SIZE, DETECTION_MODELS, SEGMENTATION_MODELS
from adderconvert.architectures.registry import task_of
from adderconvert.checkpoint import CheckpointError, CheckpointMeta, load, read_meta
from adderconvert.data import DATASETS, DataError, DatasetSplits, check_task, load_dataset
from adderconvert.data_formats import FORMATS, load_coco, load_voc
from adderconvert.data_scenes import load_scenes
from adderconvert.deploy.export import export_onnx, input_metadata, read_metadata
from adderconvert.deploy.runtime import make_session, run_dense
from adderconvert.train.dense import training_task

__all__ = [
    "ALL_DATASETS",
    "SessionModel",
    "count_images",
    "dataset_for",
    "deployment_metadata",
    "evaluate_file",
    "export_checkpoint",
    "first_line",
    "is_onnx_model",
    "load_data",
    "onnx_logits",
    "read_checkpoint_meta",
    "recorded_seed",
]

ALL_DATASETS = (*DATASETS, *FORMATS)  # what --dataset takes


def load_data(
    name: str,
    root: str | Path | None,
    image_size: int | None,
    model: str,
    *,
    seed: int = 0,
) -> DatasetSplits:
    """The data set ``name`` (:data:`ALL_DATASETS`) from ``root`` at ``image_size`` for ``model``, checked to be of
    its task. Classifiers take Fashion-MNIST, CIFAR-10 or an ImageFolder (:func:`adderconvert.data.load_dataset`);
    segmentation and detection models take a VOC or COCO folder (``adderconvert.data_formats``), and the default
    ``fashion-mnist`` stands for their task's built-in scenes of its items (``data_scenes.load_scenes`` from
    ``seed``, with instance masks for Mask R-CNN), at :data:`DEFAULT_IMAGE_SIZE` unless ``image_size`` says."""
    task = task_of(model)
    if task != "classification":
        image_size = image_size or DEFAULT_IMAGE_SIZE
        if model.startswith("keypointrcnn"):
            raise DataError(f"{model} trains on keypoint annotations, which none of the data sets here has")
    if root is not None and not Path(root).is_dir():
        what = "is a file, not a folder" if Path(root).exists() else "does not exist"
        raise DataError(f"data folder {root} {what}")
    if name in FORMATS:
        if root is None:
            raise DataError(f"--dataset {name} needs --data DIR")
        if model.startswith("maskrcnn"):
            raise DataError(f"{model} trains on instance masks, which the {name} reader does not read; use the scenes")
        splits = (load_coco if name == "coco" else load_voc)(root, image_size or DEFAULT_IMAGE_SIZE)
    elif task != "classification" and name == "fashion-mnist":
        splits = load_scenes(task, root, image_size, seed, masks=model.startswith("maskrcnn"))
    else:
        splits = load_dataset(name, root, image_size)
    check_task(splits, model, task)
    return splits


def dataset_for(
    meta: CheckpointMeta, dataset: str | None, data: str | None, image_size: int | None
) -> tuple[str, DatasetSplits]:
    """The name and splits of the data set ``dataset`` (by default the one ``meta`` was trained on) from ``data`` at
    ``image_size``, for the model of ``meta``: an official classifier's data set, else :func:`load_data`'s, whose
    built-in scenes follow the run's seed (its recipe's)."""
    name = dataset or meta.dataset or "fashion-mnist"
    if meta.official_arch is not None:  # the official AdderNet code's classifiers, named by it
        return name, load_dataset(name, data, image_size)
    # the built-in scenes follow the run's seed
    return name, load_data(name, data, image_size, meta.model_name, seed=recorded_seed(meta))


def recorded_seed(meta: CheckpointMeta) -> int:
    """The seed of the run that wrote the checkpoint of ``meta`` (its recipe's; 0, the default, where it has none):
    that of its built-in scenes and of the main job's INT8 calibration."""
    return (meta.recipe or {}).get("seed", 0)


def _check_classes(model_classes: int, splits, name: str, target) -> None:
    if model_classes != splits.num_classes:
        raise ValueError(
            f"{target} has {model_classes} classes but {name} has {splits.num_classes}: "
            "pass the --dataset it was trained on"
        )


def _data_warnings(target, trained_on: str | None, trained_size: int | None, name: str, size: int) -> list[str]:
    """What differs between the data a model was trained on and the data it is scored on."""
    warnings = []
    if trained_on is not None and trained_on != name:
        warnings.append(f"{target} was trained on {trained_on}, not {name}: its top-1 there means little")
    if trained_size is not None and trained_size != size:
        warnings.append(f"{target} was trained at {trained_size}px and is scored at {size}px")
    return warnings


def is_onnx_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an ONNX model with a graph (whatever its name), for messages that name the
    real cause when an ONNX file is given where a PyTorch file is expected."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: not ONNX
        return False
    return len(model.graph.node) > 0 and len(model.graph.input) > 0


def read_checkpoint_meta(path: Path, command: str = "evaluate") -> CheckpointMeta:
    """The meta of the checkpoint at ``path``; a :class:`CheckpointError` that says what to do when ``path`` holds
    an ONNX model instead: ``evaluate`` reads it by its ``.onnx`` name, ``export`` (``command``) does not take it."""
    try:
        return read_meta(path)
    except CheckpointError:
        if not is_onnx_model(path):
            raise
        if command == "export":
            message = f"{path} is already an ONNX model; export takes a .pt checkpoint (evaluate takes .onnx files)"
        else:
            message = f"{path} is an ONNX model, not a checkpoint: name it .onnx"
        raise CheckpointError(message) from None


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
    input size the model was trained with). Returns ``target, top1, images, dataset, runtime, warnings``
    (where the data set or input size differ from the model's training), and ``scores``: the task's metrics
    (``{"top1"}``; a segmentation checkpoint's ``{"miou", "pixel_accuracy"}``, a detector's ``{"map", "map_50"}``,
    where ``top1`` is None)."""
    target = Path(target)
    if not target.is_file():
        raise FileNotFoundError(f"no such file: {target}")
    if target.suffix == ".onnx":
        return _evaluate_onnx(target, dataset, data, image_size, batch_size, max_batches)
    meta = read_checkpoint_meta(target)
    device = resolve_device(device)
    try:
        task = training_task("classification" if meta.official_arch else task_of(meta.model_name))
    except ValueError as e:
        raise CheckpointError(f"{target}: {e}") from None
    name, splits = dataset_for(meta, dataset, data, image_size or meta.image_size)
    _check_classes(meta.num_classes, splits, name, target)
    model = load(target).to(device)
    scores = task.evaluate(model, splits.test, batch_size=batch_size, device=device, max_batches=max_batches)
    images = count_images(splits.test, batch_size, max_batches)
    return {
        "target": str(target),
        "top1": scores.get("top1"),
        "scores": scores,
        "images": images,
        "dataset": name,
        "runtime": f"PyTorch, {device}",
        "warnings": _data_warnings(target, meta.dataset, meta.image_size, name, splits.image_size),
    }


def count_images(dataset, batch_size: int, max_batches: int | None) -> int:
    """How many images of ``dataset`` an evaluation in batches of ``batch_size`` scores (at most ``max_batches``)."""
    return len(dataset) if max_batches is None else min(len(dataset), batch_size * max_batches)


def _fixed(dim) -> int | None:
    return dim.dim_value if dim.HasField("dim_value") else None


def _read_onnx(target: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(target), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ValueError(f"{target} is not a readable ONNX file: {e}") from e
    if not model.graph.node or not model.graph.input:
        raise ValueError(f"{target} is not an ONNX model: it holds no graph (empty or truncated file?)")
    return model


def _onnx_input(target: Path, model: onnx.ModelProto, image_size: int | None) -> tuple[int | None, int | None]:
    """(fixed batch or None, fixed square size or None) of the model's input, checked against images of
    3 channels, float32, at ``image_size``."""
    value = model.graph.input[0]
    tensor = value.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor.elem_type) if tensor.elem_type else "not a tensor"
        raise ValueError(f"{target} takes {kind} input {value.name!r}; evaluate feeds float32 images")
    dims = [_fixed(d) for d in tensor.shape.dim] if tensor.HasField("shape") else None
    if dims is None or len(dims) != 4:
        shape = "unknown" if dims is None else len(dims)
        raise ValueError(f"{target} takes an input of rank {shape}; evaluate feeds image batches (N, 3, H, W)")
    batch, channels, height, width = dims
    if channels not in (None, 3):
        raise ValueError(f"{target} takes {channels}-channel input; the data sets give 3-channel images")
    if height is not None and width is not None and height != width:
        raise ValueError(f"{target} takes {height}x{width} input; the data sets give square images")
    fixed = height or width
    if image_size is not None and fixed is not None and image_size != fixed:
        raise ValueError(
            f"{target} takes {fixed}x{fixed} input only (fixed size, not --dynamic-hw): --image-size {image_size} "
            "does not fit"
        )
    return batch, fixed


def _check_dynamic_size(target: Path, model: onnx.ModelProto, metadata: dict, size: int) -> None:
    """A model exported with dynamic H and W takes ``size``: no smaller than the ``min_image_size`` its
    export recorded, and with outputs that do not depend on H and W (a file of an older export where the
    model took one size only: ONNX Runtime crashes on it, or gives outputs of another size)."""
    for value in model.graph.output:
        dims = list(value.type.tensor_type.shape.dim)
        if len(dims) >= 2 and dims[1].dim_param:
            shape = ", ".join(d.dim_param or str(d.dim_value) for d in dims)
            raise ValueError(
                f"{target} was exported with dynamic H and W, but its output {value.name!r} changes size with them "
                f"([{shape}]): the model takes one input size only; export it again without --dynamic-hw"
            )
    minimum = metadata.get("min_image_size")
    if isinstance(minimum, int) and size < minimum:
        raise ValueError(f"{target} takes inputs of {minimum}x{minimum} or more; --image-size {size} is smaller")


def _is_ort_error(error: Exception) -> bool:
    """ONNX Runtime's own errors (Fail, InvalidArgument, InvalidGraph, ...), which derive from Exception
    only: about the model or its input, not a bug of this tool."""
    return type(error).__module__.startswith("onnxruntime") or isinstance(error, RuntimeError)


def first_line(error: Exception) -> str:
    """The first line of ``error``'s message (ONNX Runtime's run to many lines), else its type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def onnx_logits(sessions, loader, max_batches: int | None = None, fixed_batch: int | None = None):
    """For each (images, labels) batch of ``loader`` (at most ``max_batches``): the first output of every ONNX
    Runtime session in ``sessions`` and the labels, as NumPy arrays. With ``fixed_batch`` (a model that takes
    that batch size only) a short last batch is padded with zeros and the outputs cut back."""
    for index, (images, labels) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            return
        count = len(labels)
        if fixed_batch and count < fixed_batch:
            images = torch.cat([images, images.new_zeros(fixed_batch - count, *images.shape[1:])])
        feed = images.numpy()
        yield [s.run(None, {s.get_inputs()[0].name: feed})[0][:count] for s in sessions], labels.numpy()


class SessionModel(nn.Module):
    """An ONNX Runtime session of an exported segmentation or detection model (``task``), called as the PyTorch
    model is in eval mode: ``{"out": logits}`` of an image batch, a detector's detections of a list of images
    (:func:`adderconvert.deploy.runtime.run_dense`), so that the task's evaluation scores it."""

    def __init__(self, session: Any, task: str) -> None:
        super().__init__()
        self.session, self.task = session, task

    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> Any:
        outputs = run_dense(self.session, images)
        return {"out": outputs} if self.task == "segmentation" else outputs


def _evaluate_onnx(target: Path, dataset, data, image_size, batch_size, max_batches) -> dict[str, Any]:
    model = _read_onnx(target)
    metadata = read_metadata(model)
    fixed_batch, fixed = _onnx_input(target, model, image_size)
    stored = metadata.get("image_size")
    stored = stored[-1] if isinstance(stored, list) and stored and isinstance(stored[-1], int) else None
    size = image_size or stored or fixed
    name = dataset or metadata.get("dataset") or "fashion-mnist"
    task = metadata.get("task", "classification")
    if task != "classification":  # the scenes follow the run's seed, which its export records
        if not isinstance(metadata.get("model_name"), str):
            raise ValueError(f"{target} is a {task} model whose metadata does not name it (model_name)")
        splits = load_data(name, data, size, metadata["model_name"], seed=metadata.get("seed", 0))
        if isinstance(metadata.get("classes"), list):  # the class names its export recorded, background included
            _check_classes(len(metadata["classes"]), splits, name, target)
    else:
        splits = load_dataset(name, data, size)
    if fixed is not None and splits.image_size != fixed:
        raise ValueError(f"{target} takes {fixed}x{fixed} input only; {name} gives {splits.image_size}px images")
    _check_dynamic_size(target, model, metadata, splits.image_size)
    try:
        session = make_session(target)
    except Exception as e:
        if not _is_ort_error(e):
            raise
        raise ValueError(f"ONNX Runtime cannot load {target}: {first_line(e)}") from None
    runtime = f"ONNX Runtime, {session.get_providers()[0]}"
    warnings = _data_warnings(target, metadata.get("dataset"), stored, name, splits.image_size)
    if task != "classification":
        try:
            scores = training_task(task).evaluate(
                SessionModel(session, task), splits.test, batch_size=fixed_batch or batch_size, max_batches=max_batches
            )
        except Exception as e:
            if not _is_ort_error(e):
                raise
            raise ValueError(f"ONNX Runtime cannot run {target} on {name}: {first_line(e)}") from None
        images = count_images(splits.test, fixed_batch or batch_size, max_batches)
        result = {"target": str(target), "top1": None, "scores": scores, "images": images, "dataset": name}
        return {**result, "runtime": runtime, "warnings": warnings}
    correct = total = 0
    loader = torch.utils.data.DataLoader(splits.test, batch_size=fixed_batch or batch_size)
    try:
        for index, ([logits], labels) in enumerate(onnx_logits([session], loader, max_batches, fixed_batch)):
            if index == 0:
                if logits.ndim != 2:
                    raise ValueError(f"{target} gives outputs of shape {list(logits.shape)}, not (N, classes) logits")
                _check_classes(logits.shape[1], splits, name, target)
            correct += int((np.argmax(logits, 1) == labels).sum())
            total += len(labels)
    except Exception as e:
        if not _is_ort_error(e):
            raise
        raise ValueError(f"ONNX Runtime cannot run {target} on {name}: {first_line(e)}") from None
    top1 = 100.0 * correct / max(total, 1)
    return {
        "target": str(target),
        "top1": top1,
        "scores": {"top1": top1},
        "images": total,
        "dataset": name,
        "runtime": runtime,
        "warnings": warnings,
    }


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    dynamic_hw: bool = False,
    portable: bool = False,
    overwrite: bool = False,
) -> Path:
    """Export the model a checkpoint holds to ONNX (default: beside it, ``.onnx``), with its input size,
    normalisation, class names and data set as metadata.

    The output is checked before the work (:func:`adderconvert.app.outputs.check_output_file`): an
    existing file is replaced only with ``overwrite``, the checkpoint itself never; the file is written
    through a temporary one and renamed.
    """
    checkpoint = Path(checkpoint)
    output = Path(output) if output is not None else checkpoint.with_suffix(".onnx")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no such file: {checkpoint}")
    meta = read_checkpoint_meta(checkpoint, "export")
    check_output_file(output, overwrite=overwrite, inputs=[checkpoint])
    if meta.image_size is None:
        raise ValueError(f"{checkpoint} does not record its input size; export it from Python with export_onnx")
    model = load(checkpoint)
    example = torch.zeros(2, 3, meta.image_size, meta.image_size)
    return write_through(
        output,
        lambda tmp: export_onnx(
            model, tmp, example, dynamic_hw=dynamic_hw, portable=portable, metadata=deployment_metadata(meta)
        ),
    )


def deployment_metadata(meta: CheckpointMeta, seed: int | None = None) -> dict[str, Any]:
    """What an ONNX file needs to be used alone: input size, normalisation, classes, layout, data set, model; for a
    segmentation or detection model also ``seed``, the run's (``seed``, else its recipe's), which its built-in
    scenes follow."""
    values = input_metadata(
        image_size=meta.image_size, mean=meta.mean, std=meta.std, classes=meta.classes, dataset=meta.dataset
    )
    values["model_name"] = meta.official_arch or meta.model_name
    if meta.official_arch is None and meta.model_name in (*SEGMENTATION_MODELS, *DETECTION_MODELS):
        values["seed"] = seed if seed is not None else recorded_seed(meta)
    return values
