"""The CNN architectures: torchvision classification models, classifier resizing and their input sizes."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

__all__ = [
    "build_model",
    "check_input_size",
    "classifier_path",
    "list_cnn_models",
    "resize_classifier",
]

# Classification models in torchvision that are not CNNs (adder layers would replace only their stem).
_NOT_CNN = ("vit_", "swin_", "maxvit_")


def list_cnn_models() -> list[str]:
    """torchvision's classification CNNs (transformers left out)."""
    return [n for n in torchvision.models.list_models(module=torchvision.models) if not n.startswith(_NOT_CNN)]


def classifier_path(model: nn.Module) -> tuple[str, nn.Module]:
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
    name, layer = classifier_path(model)
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


def build_model(name: str, num_classes: int) -> nn.Module:
    """A torchvision classification CNN with ``num_classes`` outputs and fresh weights."""
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"unknown model {name!r}; `adderconvert list` shows the {len(list_cnn_models())} CNNs")
    if name.startswith(_NOT_CNN):
        raise ValueError(
            f"{name} is a vision transformer, not a CNN: adder layers would replace only its patch embedding. "
            "`adderconvert list` shows the CNNs"
        )
    kwargs = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return resize_classifier(torchvision.models.get_model(name, weights=None, **kwargs), num_classes)


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
