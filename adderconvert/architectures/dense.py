"""torchvision's segmentation and detection models: building them for the data's classes and size, the layers whose
shapes follow the classes, and the part of the model (backbone, neck, head) each layer belongs to.

Sizes. A segmentation model takes any size. A detector resizes its images itself: torchvision's R-CNNs, FCOS and
RetinaNet to a shorter side of 800 px (``min_size``, at most 1,333: ``max_size``), SSD to its fixed 300 or 320 px.
Built here, a detector's transform takes the data's size instead: ``min_size = max_size = image_size``, so a square
image of that size keeps it (a longer one is scaled until its long side fits), and SSD's fixed size is the image
size. A 128 px scene is then seen at 128 px, not blown up to 800.
"""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models import detection, segmentation

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "DETECTION_MODELS",
    "SEGMENTATION_MODELS",
    "build_dense_model",
    "class_heads",
    "model_part",
]

SEGMENTATION_MODELS = tuple(torchvision.models.list_models(module=segmentation))
DETECTION_MODELS = tuple(torchvision.models.list_models(module=detection))
# The input size of segmentation and detection models when none is given: a CPU budget's scene, not ImageNet's.
DEFAULT_IMAGE_SIZE = 128

# The layers whose shapes follow the number of classes, per model class: weights of another number of classes
# load into everything else.
_CLASS_HEADS: dict[type, tuple[str, ...]] = {
    segmentation.FCN: ("classifier.4", "aux_classifier.4"),
    segmentation.DeepLabV3: ("classifier.4", "aux_classifier.4"),
    segmentation.LRASPP: ("classifier.low_classifier", "classifier.high_classifier"),
    detection.MaskRCNN: ("roi_heads.box_predictor", "roi_heads.mask_predictor.mask_fcn_logits"),
    detection.KeypointRCNN: ("roi_heads.box_predictor",),
    detection.FasterRCNN: ("roi_heads.box_predictor",),
    detection.FCOS: ("head.classification_head.cls_logits",),
    detection.RetinaNet: ("head.classification_head.cls_logits",),
    detection.ssd.SSD: ("head.classification_head",),
}


def build_dense_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """torchvision's segmentation or detection model ``name`` with fresh weights, ``num_classes`` classes (as the
    builder counts them: a detector's include its background class), the auxiliary classifier of FCN and
    DeepLabV3 (as their pretrained weights have it) and, for a detector, its input transform set to
    ``image_size`` (the module's docstring)."""
    if name not in SEGMENTATION_MODELS + DETECTION_MODELS:
        raise ValueError(f"{name!r} is not one of torchvision's segmentation or detection models")
    options = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if name.startswith(("fcn_", "deeplabv3_")):
        options["aux_loss"] = True  # as torchvision's pretrained ones, whose weights then load
    ssd = name.startswith("ssd")
    if name in DETECTION_MODELS and not ssd:
        options.update(min_size=image_size, max_size=image_size)
    model = torchvision.models.get_model(name, **options)
    if ssd:  # its size is fixed in the builder: set on the transform it made
        model.transform.min_size, model.transform.max_size = (image_size,), image_size
        model.transform.fixed_size = (image_size, image_size)
    return model


def class_heads(model: nn.Module) -> tuple[str, ...] | None:
    """The names of the layers of ``model`` whose shapes follow its number of classes, or None where ``model`` is
    none of torchvision's segmentation or detection models."""
    found = next((heads for kind, heads in _CLASS_HEADS.items() if isinstance(model, kind)), None)
    if found is None:
        return None
    names = dict(model.named_modules())
    return tuple(name for name in found if names.get(name) is not None)


def model_part(name: str) -> str:
    """The part of a segmentation or detection model the layer ``name`` belongs to: ``backbone`` (the CNN the
    features come from), ``neck`` (a detector's feature pyramid, SSD's extra layers) or ``head`` (everything after:
    a segmentation model's classifier, region proposals, RoI heads, a detection head)."""
    if name.startswith(("backbone.fpn.", "backbone.extra.")):
        return "neck"
    return "backbone" if name.startswith("backbone.") else "head"
