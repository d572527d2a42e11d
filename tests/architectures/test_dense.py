"""torchvision's segmentation and detection models: known by task, built for the data's classes and size, their
class-dependent layers and parts, and the conversion plan of each (prediction convs kept)."""

import pytest
import torch
import torchvision
from torch import nn

from adderconvert.architectures.cnn import list_cnn_models
from adderconvert.architectures.dense import build_dense_model, class_heads, model_part
from adderconvert.architectures.registry import TASKS, build, head_names, models_by_task, part_of, task_of
from adderconvert.conversion import plan_conversion


def test_models_are_known_by_task():
    tasks = models_by_task()
    assert tuple(tasks) == TASKS
    assert tasks["classification"] == list_cnn_models()
    assert {"fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"} <= set(
        tasks["segmentation"]
    )
    assert {
        "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_320_fpn",
        "fcos_resnet50_fpn", "retinanet_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large",
        "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn",
    } <= set(tasks["detection"])  # fmt: skip
    assert task_of("resnet18") == "classification" and task_of("deeplabv3_resnet50") == "segmentation"
    assert task_of("ssd300_vgg16") == "detection"
    assert part_of("resnet18") is None and part_of("fcos_resnet50_fpn") is model_part
    with pytest.raises(ValueError, match="unknown model 'fcn_resnet5'"):
        task_of("fcn_resnet5")


def _input_size_seen(model: nn.Module, size: int) -> tuple[int, int]:
    """The size of the images a detector's backbone gets from a ``size`` x ``size`` image."""
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    try:
        with torch.no_grad():
            model.eval()([torch.rand(3, size, size)])
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large"])
def test_a_detectors_transform_follows_the_image_size(name):
    """A 96 px scene reaches the backbone at 96 px, not at the 800 px (R-CNN) or 320 px (SSDlite) of the builders'
    defaults."""
    model = build_dense_model(name, 4, 96)
    assert _input_size_seen(model, 96) == (96, 96)


def test_heads_follow_the_number_of_classes():
    fcn = build("fcn_resnet50", 4, 64)
    assert fcn.classifier[4].out_channels == 4 and fcn.aux_classifier[4].out_channels == 4  # aux as pretrained
    assert class_heads(fcn) == ("classifier.4", "aux_classifier.4") == head_names(fcn)
    detector = build("fasterrcnn_mobilenet_v3_large_320_fpn", 3, 64)
    assert detector.roi_heads.box_predictor.cls_score.out_features == 3
    assert head_names(detector) == ("roi_heads.box_predictor",)
    assert head_names(build("ssdlite320_mobilenet_v3_large", 3, 64)) == ("head.classification_head",)
    assert class_heads(torchvision.models.resnet18()) is None and head_names(torchvision.models.resnet18()) == ("fc",)


def test_each_layer_belongs_to_a_part():
    parts = {
        "backbone.body.layer1.0.conv1": "backbone",
        "backbone.features.0.0": "backbone",
        "backbone.fpn.layer_blocks.0.0": "neck",
        "backbone.extra.0.1": "neck",
        "rpn.head.conv.0.0": "head",
        "roi_heads.mask_head.0.0": "head",
        "head.classification_head.conv.0": "head",
        "classifier.0.convs.1.0": "head",
        "aux_classifier.0": "head",
    }
    assert {name: model_part(name) for name in parts} == parts


# The prediction convs of each model, which the plan keeps multiplicative (found by data flow, not by name).
_PREDICTIONS = {
    "lraspp_mobilenet_v3_large": {"classifier.low_classifier", "classifier.high_classifier"},
    "fcn_resnet50": {"classifier.4", "aux_classifier.4"},
    "deeplabv3_mobilenet_v3_large": {"classifier.4", "aux_classifier.4"},
    "fasterrcnn_mobilenet_v3_large_320_fpn": {"rpn.head.cls_logits", "rpn.head.bbox_pred"},
    "fasterrcnn_resnet50_fpn_v2": {"rpn.head.cls_logits", "rpn.head.bbox_pred"},
    "maskrcnn_resnet50_fpn": {"rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.mask_predictor.mask_fcn_logits"},
    "keypointrcnn_resnet50_fpn": {"rpn.head.cls_logits", "rpn.head.bbox_pred"},
    "fcos_resnet50_fpn": {
        "head.classification_head.cls_logits", "head.regression_head.bbox_reg", "head.regression_head.bbox_ctrness",
    },
    "retinanet_resnet50_fpn": {"head.classification_head.cls_logits", "head.regression_head.bbox_reg"},
    "ssdlite320_mobilenet_v3_large": {
        f"head.{kind}_head.module_list.{i}.1" for kind in ("classification", "regression") for i in range(6)
    },
    "ssd300_vgg16": {
        f"head.{kind}_head.module_list.{i}" for kind in ("classification", "regression") for i in range(6)
    },
}  # fmt: skip
_FAST = ("lraspp_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")


@pytest.mark.parametrize(
    "name", [n if n in _FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(_PREDICTIONS)]
)
def test_the_plan_keeps_the_prediction_convs(name):
    size = 300 if name == "ssd300_vgg16" else 64  # its extra layers take 300 px, no less
    torch.manual_seed(0)
    model = build(name, 3, size).eval()
    if hasattr(model, "roi_heads"):
        model.roi_heads.detections_per_img = 2  # the mask and keypoint heads run on 2 boxes per image, not 100
    report = plan_conversion(model, torch.rand(2, 3, size, size))
    kept = {d.name for d in report.layers if d.rule.endswith("(keep_classifier)")}
    assert kept == _PREDICTIONS[name]
    assert all(
        d.convert for d in report.layers if d.supported and d.name not in kept and d.rule != "stem kept (keep_stem)"
    )
    assert "backbone" in {model_part(d.name) for d in report.converted}  # SSD's head is prediction convs only
