"""Small detectors for the export tests and examples, and the redrawn prediction convs that give an untrained detector
detections above 0.3 (tests/deploy/test_dense_export.py says why)."""

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD

# The prediction convs of RetinaNet and FCOS, and SSD's (their last conv: SSDlite's is a Sequential).
_PREDICTIONS = ("cls_logits", "bbox_reg", "bbox_ctrness", *(f"module_list.{i}" for i in range(8)),
                *(f"module_list.{i}.1" for i in range(8)))  # fmt: skip


def score_spread(model: nn.Module) -> nn.Module:
    """Redraw the prediction convs of an untrained detector (``_PREDICTIONS``) so that a few dozen anchors per image
    score above 0.3 with boxes of some size: class logits of unit variance about -3 (SSD: the background's 3 above
    the others'), box regressions of standard deviation 0.5 (about 1 for FCOS: its regression is a distance)."""
    torch.manual_seed(1)
    head = model.head.classification_head
    classes = head.num_columns if isinstance(model, SSD) else head.num_classes
    for name, conv in model.head.named_modules():
        if not (isinstance(conv, nn.Conv2d) and name.endswith(_PREDICTIONS)):
            continue
        logits = name.startswith("classification_head")
        nn.init.normal_(conv.weight, 0, (1.0 if logits else 0.5) * conv.weight[0].numel() ** -0.5)
        if conv.bias is not None:
            # FCOS's box regression goes through a ReLU: about 1 (an anchor's size each side), not 0 (no area)
            distance = isinstance(model, FCOS) and name.endswith("bbox_reg")
            nn.init.normal_(conv.bias, -3.0 if logits else float(distance), 1.0 if logits else 0.0)
            if logits and isinstance(model, SSD):  # softmax over the classes, the background first of each anchor's
                conv.bias.data += 3.0 * (torch.arange(len(conv.bias)) % classes == 0)
    return model.eval()


def small_ssd(size: int, num_classes: int = 11) -> SSD:
    """torchvision's SSD on a 3-conv backbone with two feature maps (strides 4 and 8), its transform at ``size``."""

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
            self.layer1 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU())
            self.layer2 = nn.Sequential(nn.Conv2d(24, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())

        def forward(self, x):
            first = self.layer1(self.stem(x))
            return OrderedDict([("0", first), ("1", self.layer2(first))])

    return SSD(Backbone(), DefaultBoxGenerator([[2], [2]]), (size, size), num_classes, [0.5] * 3, [0.25] * 3)
