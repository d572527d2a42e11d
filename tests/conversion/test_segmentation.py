"""Segmentation: ``adderconvert.convert`` on torchvision's DeepLabV3 (strided and dilated convs, an ASPP, FCN's
auxiliary head), trained here for a few seconds on synthetic scenes, keeps the CNN's function before any step;
prediction convs stay multiplicative; the result exports with every adder layer's BatchNorm folded.

Measured at one thread (seed 0, 100 steps, 32 px, 128 calibration images): per-pixel argmax agreement 96.8% on 128
test scenes, mIoU 0.813 against the CNN's 0.848 (ratio 0.96), 9 of 13 convs (97.5% of the MACs) converted. The
thresholds leave room for other machines' arithmetic."""

import onnx
import pytest
import torch
from torch import nn

from adderconvert.conversion import plan_conversion, run_conversion
from adderconvert.deploy.export import export_onnx
from adderconvert.nn import AdderConv2d
from tests.conversion._dense import mean_iou, scenes, small_deeplab

SIZE = 32


@pytest.fixture(scope="module")
def trained():
    """A small DeepLabV3 trained 100 steps on 1,024 scenes at 32 px, its conversion on 128 of them, and 128 test
    scenes with their labels."""
    torch.manual_seed(0)
    images, masks, _ = scenes(1024, SIZE, seed=0)
    cnn = small_deeplab()
    optimizer = torch.optim.SGD(cnn.parameters(), lr=0.05, momentum=0.9)
    cnn.train()
    for _ in range(100):
        index = torch.randint(0, len(images), (16,))
        out = cnn(images[index])
        loss = nn.functional.cross_entropy(out["out"], masks[index])
        loss = loss + 0.5 * nn.functional.cross_entropy(out["aux"], masks[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cnn.eval()
    test_images, test_masks, _ = scenes(128, SIZE, seed=1)
    return cnn, run_conversion(cnn, images[:128], max_images=128), (test_images, test_masks)


def _argmax(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)["out"].argmax(1)


def test_the_adder_model_keeps_the_cnns_function_before_any_step(trained):
    cnn, conversion, (images, masks) = trained
    want, got = _argmax(cnn, images), _argmax(conversion.model, images)
    cnn_iou, adder_iou = mean_iou(want, masks, 3), mean_iou(got, masks, 3)
    agreement = float((want == got).float().mean())
    assert cnn_iou > 0.6  # the CNN learned the task
    assert agreement >= 0.9 and adder_iou >= 0.9 * cnn_iou, (agreement, cnn_iou, adder_iou)


def test_strided_and_dilated_convs_become_adder_layers(trained):
    adder = trained[1].model
    layers = {
        "backbone.layer1.0": ((2, 2), (1, 1)),
        "backbone.layer3.0": ((1, 1), (4, 4)),
        "classifier.0.convs.2.0": ((1, 1), (4, 4)),  # the ASPP's dilation 4
    }
    for name, (stride, dilation) in layers.items():
        layer = adder.get_submodule(name)
        assert isinstance(layer, AdderConv2d) and (layer.stride, layer.dilation) == (stride, dilation), name


def test_prediction_convs_stay_multiplicative(trained):
    """The segmentation classifier's last conv and the auxiliary head's stay convs, as a classifier's Linear; the
    ASPP's pooling branch is a conv on a pooled vector (kept by default); the rest converts."""
    cnn, conversion, _ = trained
    rules = {d.name: d.rule for d in conversion.report.layers if not d.convert}
    assert rules == {
        "backbone.stem.0": "stem kept (keep_stem)",
        "classifier.0.convs.3.1": "squeeze-excitation kept (keep)",
        "classifier.4": "prediction conv kept (keep_classifier)",
        "aux_classifier.4": "classifier kept (keep_classifier)",  # the last one to run
    }
    for name in ("classifier.4", "aux_classifier.4"):
        assert type(conversion.model.get_submodule(name)) is nn.Conv2d
    # --convert-classifier converts them; --exclude decides over the same names.
    images = scenes(4, SIZE, seed=2)[0]
    converted = {d.name for d in plan_conversion(cnn, images, keep_classifier=False).converted}
    assert {"classifier.4", "aux_classifier.4"} <= converted
    excluded = plan_conversion(cnn, images, exclude=["aux_classifier.*"])
    assert [d.rule for d in excluded.layers if d.name == "aux_classifier.0"] == ["exclude 'aux_classifier.*'"]


def test_the_adder_model_exports_with_its_batchnorms_folded(trained, tmp_path):
    adder = trained[1].model
    path = export_onnx(adder, tmp_path / "deeplab.onnx", scenes(2, SIZE, seed=3)[0])
    ops = [node.op_type for node in onnx.load(path).graph.node]
    # The graph holds the model's "out": the auxiliary head's adder layer is not in it.
    in_graph = [m for name, m in adder.named_modules() if not name.startswith("aux_classifier")]
    assert ops.count("FusedAdderConv") == sum(isinstance(m, AdderConv2d) for m in in_graph)
    assert "AdderConv" not in ops
