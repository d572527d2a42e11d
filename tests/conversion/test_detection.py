"""Detection: ``adderconvert.convert`` on torchvision's FCOS (a feature pyramid with no norm after its convs, a head
with GroupNorm after its convs), trained here for a few seconds on synthetic scenes and then made to look like a
pretrained torchvision detector (FrozenBatchNorm2d in the backbone, its first layers frozen), keeps the CNN's
function before any step, calibrated by a forward loop that gives the model lists of images and targets.

Measured at one thread (seed 0, 60 steps, 64 px, 64 calibration images): cosine similarity of the head's raw
outputs on 64 test scenes 0.999 (class logits), 0.992 (box regression), 0.989 (centerness); all 99 of the CNN's
detections above score 0.5 found by the adder model (same label, IoU > 0.5, score > 0.3), the CNN finding 112 of
the 128 rectangles; 17 of 21 convs (93% of the MACs) converted. The thresholds leave room for other machines'
arithmetic."""

import onnx
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from adderconvert.conversion import calibration_images, plan_conversion, run_conversion
from adderconvert.deploy.export import export_onnx
from adderconvert.nn import AdderConv2d
from tests.conversion._dense import freeze_like_pretrained, scenes, small_fcos

SIZE = 64
STEPS = 60
FROZEN = ("backbone.body.stem", "backbone.body.layer1")


@pytest.fixture(scope="module")
def trained():
    """A small FCOS trained 60 steps on 512 scenes at 64 px and frozen as pretrained detectors are, its conversion
    on 64 of them, and 64 test scenes."""
    torch.manual_seed(0)
    images, _, targets = scenes(512, SIZE, seed=0)
    cnn = small_fcos(SIZE)
    optimizer = torch.optim.SGD(cnn.parameters(), lr=0.01, momentum=0.9)
    cnn.train()
    for _ in range(STEPS):
        index = torch.randint(0, len(images), (16,))
        losses = cnn(list(images[index]), [targets[int(i)] for i in index])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    cnn.eval()
    freeze_like_pretrained(cnn, FROZEN)

    def forward_loop(model):
        for start in range(0, 64, 32):
            model(list(images[start : start + 32]), targets[start : start + 32])

    return cnn, run_conversion(cnn, forward_loop, max_images=64), scenes(64, SIZE, seed=1)


def _run(model: nn.Module, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The head's raw outputs and the detections of ``model`` on ``images``."""
    raw = {}
    hook = model.head.register_forward_hook(lambda module, inputs, output: raw.update(output))
    try:
        with torch.no_grad():
            detections = model.eval()(list(images))
    finally:
        hook.remove()
    return raw, detections


def _found(reference: list[dict], other: list[dict]) -> tuple[int, int]:
    """How many of ``reference``'s detections above score 0.5 ``other`` finds (same label, IoU > 0.5, its score
    above 0.3), of how many."""
    found = total = 0
    for want, got in zip(reference, other):
        keep, candidates = want["scores"] > 0.5, got["scores"] > 0.3
        total += int(keep.sum())
        if keep.any() and candidates.any():
            overlap = box_iou(want["boxes"][keep], got["boxes"][candidates]) > 0.5
            same = want["labels"][keep][:, None] == got["labels"][candidates][None]
            found += int((overlap & same).any(1).sum())
    return found, total


def test_the_adder_model_keeps_the_cnns_function_before_any_step(trained):
    cnn, conversion, (images, _, targets) = trained
    want, want_detections = _run(cnn, images)
    got, got_detections = _run(conversion.model, images)
    for key in ("cls_logits", "bbox_regression", "bbox_ctrness"):
        cosine = float(nn.functional.cosine_similarity(want[key].flatten(), got[key].flatten(), 0))
        assert cosine >= 0.95, (key, cosine)
    # The CNN learned the task: it finds most of the rectangles.
    truth = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))} for t in targets]
    learned, rectangles = _found(truth, want_detections)
    assert learned >= 0.5 * rectangles, (learned, rectangles)
    found, total = _found(want_detections, got_detections)
    assert total > 20 and found >= 0.9 * total, (found, total)


def test_every_kind_of_norm_after_a_conv_keeps_the_function(trained):
    """FrozenBatchNorm2d becomes the BatchNorm2d it stands for; a BatchNorm is inserted before GroupNorm (the head)
    and where nothing follows the conv (the feature pyramid)."""
    conversion = trained[1]
    adder, decisions = conversion.model, {d.name: d for d in conversion.report.layers}
    assert decisions["backbone.body.layer2.0"].norm == "backbone.body.layer2.1"
    assert type(adder.get_submodule("backbone.body.layer2.1")) is nn.BatchNorm2d
    assert isinstance(adder.get_submodule("backbone.body.stem.1"), FrozenBatchNorm2d)  # after the kept stem
    for name in ("backbone.fpn.layer_blocks.0.0", "head.classification_head.conv.0"):
        assert decisions[name].insert_bn and decisions[name].norm is None, name
        pair = adder.get_submodule(name)
        assert isinstance(pair[0], AdderConv2d) and isinstance(pair[1], nn.BatchNorm2d), name
    assert isinstance(adder.get_submodule("head.classification_head.conv.1"), nn.GroupNorm)  # after the inserted one


def test_a_frozen_layer_is_converted_and_trained(trained):
    """Pretrained detectors freeze their first backbone layers: a converted one is trained (the report says it was
    frozen), and what stays a conv stays frozen."""
    cnn, conversion, _ = trained
    decision = next(d for d in conversion.report.layers if d.name == "backbone.body.layer1.0")
    assert decision.convert and decision.frozen
    assert "frozen in the CNN: trained" in conversion.report.table()
    adder = conversion.model
    for name in ("backbone.body.layer1.0", "backbone.body.layer1.1"):
        assert all(p.requires_grad for p in adder.get_submodule(name).parameters()), name
    assert not any(p.requires_grad for p in adder.get_submodule("backbone.body.stem").parameters())
    assert not any(p.requires_grad for p in cnn.get_submodule("backbone.body.layer1").parameters())  # CNN unchanged


def test_prediction_convs_stay_multiplicative(trained):
    cnn, conversion, (images, _, _) = trained
    kept = {d.name for d in conversion.report.layers if not d.convert}
    predictions = {
        "head.classification_head.cls_logits",
        "head.regression_head.bbox_reg",
        "head.regression_head.bbox_ctrness",
    }
    assert kept == {"backbone.body.stem.0"} | predictions
    for name in predictions:
        assert type(conversion.model.get_submodule(name)) is nn.Conv2d
    excluded = plan_conversion(cnn, images[:4], exclude=["head.regression_head.*"])
    assert {d.name for d in excluded.converted if d.name.startswith("head.regression_head.")} == set()


def test_detection_batches_calibrate_as_lists_of_images(trained):
    cnn, _, (images, _, targets) = trained
    loader = [(list(images[:3]), targets[:3]), list(images[3:5])]
    assert torch.equal(calibration_images(cnn, loader), images[:5])
    with pytest.raises(ValueError, match="images of 2 sizes"):
        calibration_images(cnn, [[images[0], images[1, :, :32]]])


def test_the_backbone_exports_with_its_batchnorms_folded(trained, tmp_path):
    """The inserted and converted BatchNorms fold into FusedAdderConv (the detector's post-processing is exported
    by a later step)."""
    backbone = trained[1].model.backbone
    path = export_onnx(backbone, tmp_path / "backbone.onnx", trained[2][0][:2])
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert ops.count("FusedAdderConv") == sum(isinstance(m, AdderConv2d) for m in backbone.modules())
    assert "AdderConv" not in ops


@pytest.mark.slow  # 7 s at one thread
def test_a_faster_rcnn_converts_and_runs():
    """torchvision's Faster R-CNN (MobileNetV3 with an FPN, untrained, at 64 px): the RPN's conv (no norm before its
    ReLU) gets a BatchNorm, its class logits and box regression stay convs, the RoI heads' Linear layers stay, and
    the norm passes run without targets."""
    from adderconvert.architectures.dense import build_dense_model

    torch.manual_seed(0)
    cnn = build_dense_model("fasterrcnn_mobilenet_v3_large_320_fpn", 3, SIZE).eval()
    images = scenes(8, SIZE, seed=4)[0]
    conversion = run_conversion(cnn, [list(images[:4]), list(images[4:])], max_images=8)
    decisions = {d.name: d for d in conversion.report.layers}
    assert decisions["rpn.head.conv.0.0"].convert and decisions["rpn.head.conv.0.0"].insert_bn
    assert not decisions["rpn.head.cls_logits"].convert and not decisions["rpn.head.bbox_pred"].convert
    adder = conversion.model
    assert isinstance(adder.rpn.head.conv[0][0][0], AdderConv2d)
    with torch.no_grad():
        detections = adder.eval()(list(images[:2]))
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "labels", "scores"}
