"""Small segmentation and detection networks built from torchvision's own classes, the trivial synthetic scenes they
learn in a few seconds, and the measures the tests compare a CNN and its adder model with."""

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.segmentation import DeepLabV3
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

# Two classes of rectangle (and the background): one reddish, one greenish, on noise.
_COLOURS = {1: (0.9, 0.1, 0.5), 2: (0.1, 0.9, 0.2)}


def scenes(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``count`` images (3, size, size) in [0, 1] of two rectangles each on noise: the images, their per-pixel
    labels (0 background, 1 and 2 the rectangles' classes; a later rectangle covers an earlier one) and their
    detection targets (boxes x1, y1, x2, y2 and labels)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.3
    masks = torch.zeros(count, size, size, dtype=torch.long)
    targets = []
    for i in range(count):
        boxes, labels = [], []
        for _ in range(2):
            label = int(torch.randint(1, 3, (1,), generator=generator))
            height, width = (int(v) for v in torch.randint(size // 5, size // 2, (2,), generator=generator))
            top, left = (int(v) for v in torch.randint(0, size - size // 2, (2,), generator=generator))
            images[i, :, top : top + height, left : left + width] = torch.tensor(_COLOURS[label])[:, None, None]
            masks[i, top : top + height, left : left + width] = label
            boxes.append([left, top, left + width, top + height])
            labels.append(label)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float), "labels": torch.tensor(labels)})
    return images, masks, targets


def _cbr(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


def small_deeplab(num_classes: int = 3) -> DeepLabV3:
    """torchvision's DeepLabV3 on a 4-conv backbone (output stride 4, dilated convs after), with an ASPP of
    dilations 2 and 4 (and its pooling branch), and FCN's auxiliary head."""
    body = nn.Sequential(
        OrderedDict(
            stem=_cbr(3, 16, stride=2),
            layer1=_cbr(16, 32, stride=2),
            layer2=_cbr(32, 32, dilation=2),
            layer3=_cbr(32, 48, dilation=4),
        )
    )
    head = nn.Sequential(
        ASPP(48, [2, 4], 32),
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, num_classes, 1),
    )
    return DeepLabV3(IntermediateLayerGetter(body, {"layer3": "out", "layer1": "aux"}), head, FCNHead(32, num_classes))


def small_fcos(size: int, num_classes: int = 3) -> FCOS:
    """torchvision's FCOS on a 4-conv backbone with a feature pyramid (no norm after its convs) on strides 8 and 16,
    P6 and P7, and FCOS's head (GroupNorm after its convs), its transform at ``size``."""
    body = nn.Sequential(
        OrderedDict(
            stem=_cbr(3, 16, stride=2), layer1=_cbr(16, 24, stride=2), layer2=_cbr(24, 32, stride=2),
            layer3=_cbr(32, 48, stride=2),
        )
    )  # fmt: skip
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1"}, [32, 48], 32, extra_blocks=LastLevelP6P7(32, 32))
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)
    return FCOS(
        backbone, num_classes, min_size=size, max_size=size, image_mean=[0.5] * 3, image_std=[0.25] * 3,
        anchor_generator=anchors,
    )  # fmt: skip


def freeze_like_pretrained(model: nn.Module, frozen: tuple[str, ...]) -> None:
    """What torchvision's pretrained detectors look like: every BatchNorm of the backbone a ``FrozenBatchNorm2d``
    with its statistics and affine, and the backbone layers ``frozen`` (``trainable_backbone_layers``) not trained."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.BatchNorm2d) and name.startswith("backbone."):
            frozen_norm = FrozenBatchNorm2d(module.num_features, module.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen_norm, key).copy_(getattr(module, key).detach())
            model.set_submodule(name, frozen_norm)
    for name in frozen:
        model.get_submodule(name).requires_grad_(False)


def mean_iou(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """The mean over classes of the intersection over union of ``predicted`` and ``labels`` (per-pixel classes)."""
    ious = []
    for c in range(num_classes):
        union = ((predicted == c) | (labels == c)).sum()
        if union > 0:
            ious.append(float(((predicted == c) & (labels == c)).sum() / union))
    return sum(ious) / len(ious)
