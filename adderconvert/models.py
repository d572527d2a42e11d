"""Building the CNN teacher: torchvision classification models, their weights, and classifier resizing."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

__all__ = ["WeightsError", "build_model", "list_cnn_models", "load_weights", "resize_classifier"]

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


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
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
        state = _state_dict_from_file(Path(weights))
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
    missing = [k for k in own if k not in compatible]
    head = _classifier_path(model)[0]
    unexpected = [k for k in missing if not k.startswith(head + ".") and "num_batches_tracked" not in k]
    if unexpected:
        raise WeightsError(
            f"weights {weights!r} do not fit {name}: {len(unexpected)} tensors missing or of another shape, "
            f"e.g. {unexpected[:3]}"
        )
    model.load_state_dict(compatible, strict=False)


def build_model(name: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A torchvision classification model with ``num_classes`` outputs, optionally with loaded weights."""
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"unknown model {name!r}; `adderconvert list` shows the {len(available)} available")
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = resize_classifier(torchvision.models.get_model(name, weights=None, **kwargs), num_classes)
    if weights:
        load_weights(model, name, weights)
    return model
