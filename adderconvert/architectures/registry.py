"""Every model the tool knows, by task: torchvision's classification CNNs (``cnn.py``) and its segmentation and
detection models (``dense.py``). The task follows from the model's name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from adderconvert.architectures.cnn import build_model, classifier_path, list_cnn_models
from adderconvert.architectures.dense import (
    DETECTION_MODELS,
    SEGMENTATION_MODELS,
    build_dense_model,
    class_heads,
    model_part,
)
from adderconvert.data import TASKS

__all__ = ["TASKS", "build", "head_names", "models_by_task", "part_of", "task_of"]


def models_by_task() -> dict[str, list[str]]:
    """The models each task has (:data:`TASKS` order)."""
    return {
        "classification": list_cnn_models(),
        "segmentation": list(SEGMENTATION_MODELS),
        "detection": list(DETECTION_MODELS),
    }


def task_of(name: str) -> str:
    """The task of model ``name``; ``ValueError`` for a name no task has."""
    task = next((task for task, names in models_by_task().items() if name in names), None)
    if task is None:
        raise ValueError(f"unknown model {name!r}; `adderconvert list` shows them by task")
    return task


def build(name: str, num_classes: int, image_size: int) -> nn.Module:
    """Model ``name`` with fresh weights and ``num_classes`` classes; a detector's input transform set to
    ``image_size`` (see ``dense.py``)."""
    if task_of(name) == "classification":
        return build_model(name, num_classes)
    return build_dense_model(name, num_classes, image_size)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The layers of ``model`` whose shapes follow the number of classes: a classifier's last layer, a segmentation
    model's classifiers, a detector's class (and per-class box) predictors."""
    heads = class_heads(model)
    return heads if heads is not None else (classifier_path(model)[0],)


def part_of(name: str) -> Callable[[str], str] | None:
    """For a segmentation or detection model ``name``: the function giving each of its layers' part (backbone,
    neck, head); None for a classifier."""
    return None if task_of(name) == "classification" else model_part
