"""Building the CNN teacher: torchvision classification models, their weights, and classifier resizing."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

__all__ = [
    "WeightsError",
    "build_model",
    "check_input_size",
    "list_cnn_models",
    "load_weights",
    "resize_classifier",
]

# Classification models in torchvision that are not CNNs (adder layers would replace only their stem).
_NOT_CNN = ("vit_", "swin_", "maxvit_")


class WeightsError(RuntimeError):
    """Pretrained weights could not be had; the message says what to do instead."""


def list_cnn_models() -> list[str]:
    """torchvision's classification CNNs (transformers left out)."""
    return [n for n in torchvision.models.list_models(module=torchvision.models) if not n.startswith(_NOT_CNN)]


def _classifier_path(model: nn.Module) -> tuple[str, nn.Module]:
    """The last Linear (or, for SqueezeNet-like heads, the last Conv2d) of the model."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = (name, module)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv2d classifier")
    return last


def resize_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the final classification layer by a fresh one with ``num_classes`` outputs (if different)."""
    name, layer = _classifier_path(model)
    if isinstance(layer, nn.Linear):
        if layer.out_features == num_classes:
            return model
        new = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    else:
        if layer.out_channels == num_classes:
            return model
        new = nn.Conv2d(
            layer.in_channels, num_classes, layer.kernel_size, layer.stride, layer.padding, bias=layer.bias is not None
        )
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    # GoogLeNet and Inception carry auxiliary heads with their own classifiers.
    for aux in ("aux1", "aux2", "AuxLogits"):
        if getattr(model, aux, None) is not None:
            setattr(model, aux, None)
            if hasattr(model, "aux_logits"):
                model.aux_logits = False
    return model


def _state_dict_from_file(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The CNN state dict in a file: a plain state dict, a training checkpoint holding one, or a teacher
    checkpoint of this tool for the same architecture."""
    from adderconvert.checkpoint import CheckpointError, check_compatible, load_checkpoint, read_torch_file

    state = read_torch_file(path, WeightsError)
    if isinstance(state, dict) and "format" in state and "meta" in state:
        try:
            meta = load_checkpoint(path)["meta"]
            check_compatible(meta, path, stage="teacher", model_name=name)
        except CheckpointError as e:
            raise WeightsError(f"--weights takes CNN weights: {e}") from e
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, name: str, weights: str) -> None:
    """Load ``weights`` into ``model``: ``DEFAULT`` (or another torchvision weights enum name) or a file path.

    Classifier tensors whose shapes do not match (another number of classes) are skipped, so the
    resized head is trained from scratch.
    """
    if os.path.exists(weights):
        state = _state_dict_from_file(Path(weights), name)
    else:
        try:
            enum = torchvision.models.get_model_weights(name)
            state = (
                enum[weights].get_state_dict(progress=True)
                if weights != "DEFAULT"
                else enum.DEFAULT.get_state_dict(progress=True)
            )
        except KeyError as e:
            raise WeightsError(f"{weights!r} is neither a file nor a torchvision weights name for {name}") from e
        except Exception as e:  # offline: URLError, HTTPError, ...
            raise WeightsError(
                f"could not get torchvision's pretrained weights for {name} ({type(e).__name__}: {e}). "
                "Offline, pass --weights PATH (a state dict or checkpoint) or --pretrain-epochs N to train the "
                "CNN on the data set first."
            ) from e
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head = _classifier_path(model)[0] + "."
    missing = [k for k in own if k not in compatible and not k.startswith(head) and "num_batches_tracked" not in k]
    foreign = [k for k in state if k not in own and not k.startswith(head)]
    if missing or foreign:
        detail = f"{len(missing)} of its tensors missing or of another shape (e.g. {missing[:3]})" if missing else ""
        if foreign:
            detail += ("; " if detail else "") + f"{len(foreign)} tensors {name} does not have (e.g. {foreign[:3]})"
        raise WeightsError(f"weights {weights!r} are not {name} weights: {detail}")
    model.load_state_dict(compatible, strict=False)


def build_model(name: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A torchvision classification CNN with ``num_classes`` outputs, optionally with loaded weights."""
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"unknown model {name!r}; `adderconvert list` shows the {len(list_cnn_models())} CNNs")
    if name.startswith(_NOT_CNN):
        raise ValueError(
            f"{name} is a vision transformer, not a CNN: adder layers would replace only its patch embedding. "
            "`adderconvert list` shows the CNNs"
        )
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = resize_classifier(torchvision.models.get_model(name, weights=None, **kwargs), num_classes)
    if weights:
        load_weights(model, name, weights)
    return model


_CANDIDATE_SIZES = (32, 48, 64, 96, 128, 160, 192, 224, 299, 384, 512)


def check_input_size(model: nn.Module, name: str, image_size: int) -> None:
    """Raise ``ValueError`` suggesting an ``--image-size`` when ``model`` cannot take ``image_size`` inputs."""

    def works(size: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return True
        except (RuntimeError, ValueError):  # "Output size is too small", a kernel larger than its input
            return False

    was_training = model.training
    model.eval()
    try:
        if works(image_size):
            return
        fits = next((s for s in _CANDIDATE_SIZES if s > image_size and works(s)), None)
    finally:
        model.train(was_training)
    hint = f"; pass --image-size {fits} or more" if fits else ""
    raise ValueError(f"{name} cannot take {image_size}x{image_size} inputs (its feature maps shrink to nothing){hint}")
