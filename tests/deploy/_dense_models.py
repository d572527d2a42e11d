"""Small detectors for the export tests and examples, and the redrawn prediction convs that give an untrained detector
detections above 0.3 (tests/deploy/test_dense_export.py says why)."""

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.ssd import SSD
from torchvision.ops import MultiScaleRoIAlign

# The prediction convs of RetinaNet and FCOS, and SSD's (their last conv: SSDlite's is a Sequential).
_PREDICTIONS = ("cls_logits", "bbox_reg", "bbox_ctrness", *(f"module_list.{i}" for i in range(8)),
                *(f"module_list.{i}.1" for i in range(8)))  # fmt: skip


def score_spread(model: nn.Module, background: float = 5.0, rcnn_logits: float = 10.0) -> nn.Module:
    """Redraw the prediction convs of an untrained detector (``_PREDICTIONS``; an R-CNN's box predictor) so that a
    few dozen anchors per image score above 0.3 with boxes of some size: class logits of unit variance about -3 (SSD:
    the background's ``background`` above the others'; an R-CNN's: weights ``rcnn_logits`` times larger, on its box
    head's small features), box regressions of standard deviation 0.5 (about 1 for FCOS: its regression is a
    distance)."""
    torch.manual_seed(1)
    if isinstance(model, GeneralizedRCNN):  # the box head's Linear layers, before a softmax over the classes
        predictor = model.roi_heads.box_predictor
        for linear, deviation in ((predictor.cls_score, rcnn_logits), (predictor.bbox_pred, 0.5)):
            nn.init.normal_(linear.weight, 0, deviation * linear.in_features**-0.5)
            nn.init.zeros_(linear.bias)
        return model.eval()
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
                conv.bias.data += background * (torch.arange(len(conv.bias)) % classes == 0)
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


def small_faster_rcnn(size: int, num_classes: int = 11) -> FasterRCNN:
    """torchvision's Faster R-CNN on a 3-conv backbone (stride 8), RoI pooling of 5x5 and a box head of 64 features,
    its transform at ``size``."""
    body = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
    )  # fmt: skip
    body.out_channels = 32
    return FasterRCNN(
        body, None, min_size=size, max_size=size, image_mean=[0.5] * 3, image_std=[0.25] * 3,
        rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 5, 2), box_head=TwoMLPHead(32 * 25, 64),
        box_predictor=FastRCNNPredictor(64, num_classes),
    )  # fmt: skip
