"""The weights a run's CNN starts from (``--weights``): torchvision's pretrained weights, a state dict, a
training checkpoint holding one, or a teacher checkpoint of this tool."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from adderconvert.app.saved_models import is_onnx_model
from adderconvert.architectures.registry import head_names
from adderconvert.checkpoint import (
    CheckpointError,
    check_compatible,
    checkpoint_of,
    load_state_dict,
    read_torch_file,
)

__all__ = ["WeightsError", "check_weights", "load_weights"]


class WeightsError(RuntimeError):
    """Pretrained weights could not be had; the message says what to do instead."""


def _state_dict_from_file(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The CNN state dict in a file: a plain state dict, a training checkpoint holding one, or a teacher
    checkpoint of this tool for the same architecture."""
    try:
        state = read_torch_file(path, WeightsError)
    except WeightsError:
        if is_onnx_model(path):
            raise WeightsError(
                f"--weights {path} is an ONNX model; --weights takes PyTorch weights (a state dict or a checkpoint)"
            ) from None
        raise
    if isinstance(state, dict) and "format" in state and "meta" in state:
        try:
            meta = checkpoint_of(state, path)["meta"]  # the file is read once: checkpoints can be gigabytes
            check_compatible(meta, path, stage="teacher", model_name=name)
        except CheckpointError as e:
            raise WeightsError(f"--weights takes CNN weights: {e}") from e
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    tensors = (
        {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if isinstance(state, dict)
        else {}
    )
    if not tensors:
        raise WeightsError(f"--weights {path} holds no state dict (no named tensors)")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def _weights_enum(name: str, weights: str):
    """torchvision's weights entry ``weights`` (``DEFAULT`` or an enum name) of model ``name``, not fetched."""
    try:
        enum = torchvision.models.get_model_weights(name)
        return enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{weights!r} is neither a file nor a torchvision weights name for {name}") from e


def check_weights(model: nn.Module, name: str, weights: str) -> bool | None:
    """Check ``weights`` without downloading anything (``--dry-run``): a file is loaded into ``model`` (returns
    whether its classifier fits), a torchvision weights name must exist (returns None: nothing was loaded)."""
    if os.path.exists(weights):
        return load_weights(model, name, weights)
    _weights_enum(name, weights)
    return None


def load_weights(model: nn.Module, name: str, weights: str) -> bool:
    """Load ``weights`` into ``model``: ``DEFAULT`` (or another torchvision weights enum name) or a file path.

    Classifier tensors whose shapes do not match (another number of classes) are skipped, so the
    resized head is trained from scratch; for a segmentation or detection model, the tensors of every layer whose
    shape follows the classes (:func:`~adderconvert.architectures.registry.head_names`). Returns whether the
    classifier was loaded too (its head fits).
    """
    if os.path.exists(weights):
        state = _state_dict_from_file(Path(weights), name)
    else:
        entry = _weights_enum(name, weights)
        try:
            state = entry.get_state_dict(progress=True)
        except Exception as e:  # offline: URLError, HTTPError, ...
            raise WeightsError(
                f"could not get torchvision's pretrained weights for {name} ({type(e).__name__}: {e}). "
                "Offline, pass --weights PATH (a state dict or checkpoint) or --pretrain-epochs N to train the "
                "CNN on the data set first."
            ) from e
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head = tuple(name + "." for name in head_names(model))
    missing = [k for k in own if k not in compatible and not k.startswith(head) and "num_batches_tracked" not in k]
    foreign = [k for k in state if k not in own and not k.startswith(head)]
    if missing or foreign:
        detail = f"{len(missing)} of its tensors missing or of another shape (e.g. {missing[:3]})" if missing else ""
        if foreign:
            detail += ("; " if detail else "") + f"{len(foreign)} tensors {name} does not have (e.g. {foreign[:3]})"
        raise WeightsError(f"weights {weights!r} are not {name} weights: {detail}")
    load_state_dict(model, compatible, strict=False)  # filtered: the model's module versions
    return all(k in compatible for k in own if k.startswith(head))
