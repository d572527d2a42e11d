"""Segmentation and detection models in ONNX: PyTorch against ONNX Runtime (through ``run_dense``), for the CNN and its
adder model (``adderconvert.conversion.convert`` on a few built-in scenes), in every form (custom op with BatchNorms
folded, portable, INT8).

- Segmentation: the same argmax on at least 99.9% of the pixels.
- Detection (post-processing in the graph): the same detections above score 0.3, each matched with the same label,
  IoU >= 0.99 and a score within 1e-4. An untrained detector scores every anchor about its prior (0.01 for RetinaNet
  and FCOS, 1/C for SSD), below 0.3, and its boxes are specks, so the tests redraw the weights of its prediction
  convs (``score_spread``): a few dozen detections per image above 0.3, boxes of some pixels, well below the
  ``detections_per_img`` cut. Noise (std 0.05) is added to the scenes: on their black background many anchors would
  tie, and NMS may keep either of two tied boxes.

The default tier uses small models of torchvision's classes (tests/conversion/_dense.py; tests/deploy/_dense_models.py:
an SSD and a Faster R-CNN); the named torchvision models are the slow tier.
"""

import functools

import onnx
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

import adderconvert
from adderconvert.architectures.dense import build_dense_model
from adderconvert.conversion import convert, reestimate_batchnorm
from adderconvert.data import FASHION_MNIST_DIR
from adderconvert.data_scenes import load_scenes
from adderconvert.deploy.export import export_onnx, input_metadata, read_metadata
from adderconvert.deploy.ops import DOMAIN
from adderconvert.deploy.runtime import make_session, run_dense
from adderconvert.nn import AdderConv2d
from tests.conversion._dense import small_deeplab, small_fcos
from tests.deploy._dense_models import score_spread, small_faster_rcnn, small_ssd

pytestmark = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")

SIZE = 64
THRESHOLD, SCORE_TOLERANCE, MIN_IOU = 0.3, 1e-4, 0.99
# INT8: a float difference before a layer can move an input across an edge of its uint8 grid, one step of the grid,
# which the layers after it carry on: INT8 agrees within grid steps, not float rounding. Two boxes of a class whose IoU
# lies within nms_edge of the NMS threshold may then be kept on one side and suppressed on the other.
INT8_TOLERANCES = {"score_tolerance": 0.02, "min_iou": 0.9, "nms_edge": 0.05}
NMS_EDGE_SHARE = 0.05  # of the detections, at most, kept by NMS on one side only
BOX_TOLERANCE = 0.005  # of a box's length (at least 1 px), for boxes of no area (clipped to the edge): no IoU


def _scenes(task: str, count: int, size: int = SIZE, noise: float = 0.0) -> torch.Tensor:
    """The first ``count`` test scenes of ``task`` as one batch, with Gaussian ``noise`` added (seeded)."""
    data = load_scenes(task, image_size=size, counts={"train": 0, "test": count})
    images = torch.stack([data.test[i][0] for i in range(count)])
    return images + noise * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))


def _adder(model: nn.Module, calibration, **options) -> nn.Module:
    adder = convert(model, calibration, **options).eval()
    assert any(isinstance(m, AdderConv2d) for m in adder.modules())
    return adder


def _agreement(model: nn.Module, path, images: torch.Tensor) -> float:
    """The share of pixels whose argmax ONNX Runtime and PyTorch agree on."""
    with torch.no_grad():
        expected = model(images)["out"].argmax(1)
    got = run_dense(make_session(path, intra_op_num_threads=1), images)
    assert got.shape == (len(images), 11, *images.shape[-2:])
    return float((got.argmax(1) == expected).double().mean())


def _matched(
    expected: list[dict],
    got: list[dict],
    score_tolerance: float = SCORE_TOLERANCE,
    min_iou: float = MIN_IOU,
    nms_thresh: float | None = None,
    nms_edge: float = 0.0,
) -> int:
    """Assert that the detections above THRESHOLD of ``expected`` and ``got`` are the same (label, IoU >= MIN_IOU,
    score within SCORE_TOLERANCE; the other side's may lie just below THRESHOLD) and return how many there are. A box
    of no area (clipped to the image's edge: FCOS and RetinaNet keep them) matches one whose corners are within
    BOX_TOLERANCE of its length (at least 1 px), about what IoU >= 0.99 allows a box of that length. With ``nms_edge``,
    a box without a match may instead have, on the other side, a box of its class scored at least as high (within
    the tolerance) whose IoU with it lies within ``nms_edge`` of ``nms_thresh``: NMS kept it on one side only; such
    boxes may be at most NMS_EDGE_SHARE of the detections."""
    assert len(expected) == len(got)
    count = edges = 0
    for image, (first, second) in enumerate(zip(expected, got)):
        for side, (a, b) in enumerate(((first, second), (second, first))):
            above = (a["scores"] > THRESHOLD).nonzero().flatten().tolist()
            candidates = b["scores"] > THRESHOLD - score_tolerance
            ious = box_iou(a["boxes"], b["boxes"]) if len(b["boxes"]) else torch.zeros(len(a["boxes"]), 0)
            # a box clipped to no area has no IoU: its corners must agree instead, within a share of its length
            sides = (a["boxes"][:, 2:] - a["boxes"][:, :2]).amax(-1, keepdim=True).clamp(min=1.0)
            ious[(a["boxes"][:, None] - b["boxes"][None]).abs().amax(-1) <= BOX_TOLERANCE * sides] = 1.0
            used: set[int] = set()
            for i in above:
                fits = (
                    candidates
                    & (b["labels"] == a["labels"][i])
                    & ((b["scores"] - a["scores"][i]).abs() <= score_tolerance)
                    & (ious[i] >= min_iou)
                )
                match = next((j for j in fits.nonzero().flatten().tolist() if j not in used), None)
                if match is None and nms_edge > 0:
                    suppressor = (
                        (b["labels"] == a["labels"][i])
                        & (b["scores"] >= a["scores"][i] - score_tolerance)
                        & ((box_iou(a["boxes"][i : i + 1], b["boxes"])[0] - nms_thresh).abs() <= nms_edge)
                    )
                    if suppressor.any():
                        edges += 1
                        continue
                assert match is not None, f"image {image}: detection {i} {a['boxes'][i].tolist()} unmatched"
                used.add(match)
            count += len(above) if side == 0 else 0
    assert edges <= NMS_EDGE_SHARE * count, f"{edges} of {count} detections kept by NMS on one side only"
    return count


def _detection_parity(model: nn.Module, path, images: torch.Tensor, **tolerances: float) -> int:
    with torch.no_grad():
        expected = model(list(images))
    session = make_session(path, intra_op_num_threads=1)
    got = run_dense(session, images)
    assert all(d["labels"].dtype == torch.int64 and d["boxes"].shape[1:] == (4,) for d in got)
    return _matched(expected, got, nms_thresh=read_metadata(path)["postprocess"]["nms_thresh"], **tolerances)


# --- segmentation ---


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    cnn = small_deeplab(num_classes=11).eval()
    images = _scenes("segmentation", 12)
    return cnn, _adder(cnn, images[:8]), images[8:]


def test_segmentation_exports_logits_without_the_auxiliary_head(deeplab, tmp_path):
    cnn, _, images = deeplab
    metadata = input_metadata(image_size=SIZE, classes=[str(c) for c in range(11)], dataset="scenes")
    path = export_onnx(cnn, tmp_path / "cnn.onnx", images[:2], metadata=metadata)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    main = sum(isinstance(m, nn.Conv2d) for n, m in cnn.named_modules() if not n.startswith("aux_classifier"))
    assert convs == main  # the auxiliary classifier's convs are not in the graph
    metadata = read_metadata(path)
    assert metadata["task"] == "segmentation" and metadata["image_size"] == [SIZE, SIZE]
    assert _agreement(cnn, path, images) >= 0.999  # batch 4 through a batch-2 export


@pytest.mark.parametrize(
    "form", ["fused", *(pytest.param(f, marks=pytest.mark.slow) for f in ("unfused", "portable", "int8"))]
)
def test_segmentation_adder_model_parity(deeplab, tmp_path, form):
    _, adder, images = deeplab
    if form == "int8":
        adder = adderconvert.quantize(adder, images)
    path = export_onnx(
        adder, tmp_path / "adder.onnx", images[:2], fuse_bn=form != "unfused", portable=form == "portable"
    )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node if n.domain == DOMAIN}
    expected = {"fused": {"FusedAdderConv"}, "unfused": {"AdderConv"}, "portable": set()}
    assert ops == expected.get(form, {"QuantizedAdderConv"})
    assert _agreement(adder, path, images) >= 0.999


@pytest.mark.slow
def test_segmentation_dynamic_hw(deeplab, tmp_path):
    cnn, _, images = deeplab
    path = export_onnx(cnn, tmp_path / "cnn.onnx", images[:1], dynamic_hw=True)
    assert read_metadata(path)["dynamic_hw"] is True
    larger = _scenes("segmentation", 2, size=96)
    assert _agreement(cnn, path, larger) >= 0.999


# --- detection ---


class _Detector:
    """A detector of ``build`` with its scores spread, 4 test scenes, and its adder model converted on 8 other scenes
    (with ``options`` of ``convert``) when a test asks for it."""

    def __init__(self, build, **options) -> None:
        torch.manual_seed(0)
        self.cnn = score_spread(build())
        scenes = _scenes("detection", 12, noise=0.05)
        self.calibration, self.images = scenes[:8], scenes[8:]
        self.options = options

    @functools.cached_property
    def adder(self) -> nn.Module:
        return _adder(self.cnn, [list(self.calibration)], **self.options)


@pytest.fixture(scope="module")
def fcos():
    return _Detector(lambda: small_fcos(SIZE, num_classes=11))


@pytest.fixture(scope="module")
def ssd():
    return _Detector(lambda: small_ssd(SIZE))


def test_detection_graph_from_image_to_detections(fcos, tmp_path):
    cnn, images = fcos.cnn, fcos.images
    path = export_onnx(cnn, tmp_path / "cnn.onnx", list(images[:2]), metadata={"dataset": "scenes"})
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "image_index"]
    assert "NonMaxSuppression" in {n.op_type for n in proto.graph.node}
    metadata = read_metadata(path)
    assert metadata["task"] == "detection" and metadata["dataset"] == "scenes"
    assert metadata["postprocess"] == {
        "architecture": "FCOS",
        "score_thresh": pytest.approx(0.2),
        "nms_thresh": pytest.approx(0.6),
        "detections_per_img": 100,
        "topk_candidates": 1000,
        "topk_per": "level",
        "image_size": [SIZE, SIZE],
    }
    assert _detection_parity(cnn, path, images[:3]) > 10  # another batch size than the export's


@pytest.mark.slow  # the default tier has SSD's adder model
@pytest.mark.parametrize("form", ["fused", "portable", "int8"])
def test_detection_adder_model_parity(fcos, tmp_path, form):
    adder, images = fcos.adder, fcos.images
    if form == "int8":
        adder = adderconvert.quantize(adder, lambda model: model(list(images)))
    path = export_onnx(adder, tmp_path / "adder.onnx", images[:2], portable=form == "portable")
    tolerances = INT8_TOLERANCES if form == "int8" else {}
    assert _detection_parity(adder, path, images, **tolerances) > 10


@pytest.mark.parametrize("stage", [pytest.param("cnn", marks=pytest.mark.slow), "adder"])
def test_ssd_detection_parity(ssd, tmp_path, stage):
    """SSD takes the best candidates of each class (not of each level) and leaves out the background."""
    model = ssd.cnn if stage == "cnn" else ssd.adder
    path = export_onnx(model, tmp_path / "m.onnx", ssd.images[:2])
    assert read_metadata(path)["postprocess"]["topk_per"] == "class"
    assert _detection_parity(model, path, ssd.images) > 10


@pytest.mark.parametrize("case", ["few", pytest.param("none", marks=pytest.mark.slow)])
def test_detection_limits(ssd, tmp_path, case):
    """At most detections_per_img per image, highest first; none above a threshold no score reaches."""
    cnn, images = ssd.cnn, ssd.images
    settings = cnn.detections_per_img, cnn.nms_thresh, cnn.score_thresh
    cnn.detections_per_img, cnn.nms_thresh = 3, 0.3
    if case == "none":
        cnn.score_thresh = 0.9999
    try:
        path = export_onnx(cnn, tmp_path / "m.onnx", images[:2])
        got = run_dense(make_session(path), images)
        if case == "none":
            assert [d["boxes"].shape for d in got] == [(0, 4)] * len(images)
            return
        assert [len(d["scores"]) for d in got] == [3] * len(images)
        assert all(bool((d["scores"][:-1] >= d["scores"][1:]).all()) for d in got)  # highest first
        _detection_parity(cnn, path, images)
    finally:
        cnn.detections_per_img, cnn.nms_thresh, cnn.score_thresh = settings


def test_detection_export_refusals(fcos, tmp_path):
    cnn, images = fcos.cnn, fcos.images
    with pytest.raises(ValueError, match="resizes 32x32 images to 64x64"):
        export_onnx(cnn, tmp_path / "m.onnx", images[:2, :, :32, :32])
    with pytest.raises(ValueError, match="no dynamic_hw"):
        export_onnx(cnn, tmp_path / "m.onnx", images[:2], dynamic_hw=True)
    with pytest.raises(ValueError, match="metadata says task 'segmentation'"):
        export_onnx(cnn, tmp_path / "m.onnx", images[:2], metadata={"task": "segmentation"})
    session = make_session(export_onnx(nn.Sequential(nn.Conv2d(3, 2, 1)).eval(), tmp_path / "c.onnx", images[:1]))
    with pytest.raises(ValueError, match="not a segmentation or detection model"):
        run_dense(session, images)


def _faster_rcnn_of_shared_initializers() -> nn.Module:
    """The small Faster R-CNN with its box head's two biases alike: equal initializers, which the TorchScript
    exporter shares through Identity nodes."""
    model = small_faster_rcnn(SIZE)
    for linear in (model.roi_heads.box_head.fc6, model.roi_heads.box_head.fc7):
        nn.init.zeros_(linear.bias)
    return model


@pytest.fixture(scope="module")
def faster_rcnn():
    # Its 3-conv backbone's stem is most of its conv MACs: past the keep ceiling, the default would convert it with
    # conversion.CEILING_BASES, and FusedAdderConv folds single-base layers only.
    return _Detector(_faster_rcnn_of_shared_initializers, bases=1)


@pytest.mark.parametrize("form", [*(pytest.param(f, marks=pytest.mark.slow) for f in ("cnn", "int8")), "fused"])
def test_two_stage_detector_parity(faster_rcnn, tmp_path, form):
    """A Faster R-CNN through the TorchScript exporter: a graph of the example's batch size (2), which run_dense runs
    on 3 images as two batches, the second padded."""
    cnn, adder, images = faster_rcnn.cnn, faster_rcnn.adder, faster_rcnn.images
    model = cnn if form == "cnn" else adder
    if form == "int8":
        model = adderconvert.quantize(adder, lambda m: m(list(images)))
    path = export_onnx(model, tmp_path / "m.onnx", images[:2])
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "image_index"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    expected = {"cnn": set(), "fused": {"FusedAdderConv"}, "int8": {"QuantizedAdderConv"}}[form]
    assert {n.op_type for n in proto.graph.node if n.domain == DOMAIN} == expected
    assert "Identity" not in {n.op_type for n in proto.graph.node}  # the shared initializers read directly
    settings = read_metadata(path)["postprocess"]
    assert settings["architecture"] == "FasterRCNN" and settings["rpn_post_nms_top_n"] == 1000
    tolerances = INT8_TOLERANCES if form == "int8" else {}
    assert _detection_parity(model, path, images[:3], **tolerances) > 5


def test_two_stage_export_leaves_the_exporters_registry_as_it_was(faster_rcnn, tmp_path, monkeypatch):
    """The adder ops' TorchScript symbolics are registered for the export only: the exporter's registry is global."""
    registered = []
    register, unregister = torch.onnx.register_custom_op_symbolic, torch.onnx.unregister_custom_op_symbolic

    def spy_register(name, symbolic, opset):
        registered.append((name, opset))
        register(name, symbolic, opset)

    def spy_unregister(name, opset):
        registered.remove((name, opset))
        unregister(name, opset)

    monkeypatch.setattr(torch.onnx, "register_custom_op_symbolic", spy_register)
    monkeypatch.setattr(torch.onnx, "unregister_custom_op_symbolic", spy_unregister)
    for _ in range(2):
        export_onnx(faster_rcnn.adder, tmp_path / "m.onnx", faster_rcnn.images[:2])
        assert registered == []


def test_two_stage_detector_has_no_portable_form(faster_rcnn, tmp_path):
    with pytest.raises(ValueError, match="portable form of a two-stage R-CNN is not supported"):
        export_onnx(faster_rcnn.cnn, tmp_path / "m.onnx", faster_rcnn.images[:2], portable=True)


# --- torchvision's models (slow) ---


@pytest.mark.slow
@pytest.mark.parametrize(("name", "adder"), [("lraspp_mobilenet_v3_large", True), ("fcn_resnet50", False)])
def test_torchvision_segmentation_parity(name, adder, tmp_path):
    """fcn_resnet50's adder model is left out: the recipe's reconstruction takes minutes on a ResNet-50."""
    torch.manual_seed(0)
    cnn = build_dense_model(name, 11, SIZE).eval()
    images = _scenes("segmentation", 8)
    for stage, model in (("cnn", cnn), *((("adder", _adder(cnn, images[:4])),) if adder else ())):
        path = export_onnx(model, tmp_path / f"{stage}.onnx", images[4:6])
        assert _agreement(model, path, images[4:]) >= 0.999, stage


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn", "retinanet_resnet50_fpn"])
def test_torchvision_detection_parity(name, tmp_path):
    torch.manual_seed(0)
    cnn = score_spread(build_dense_model(name, 11, SIZE), background=3.0)  # SSDlite's logits spread less
    images = _scenes("detection", 8, noise=0.05)
    for stage, model in (("cnn", cnn), ("adder", _adder(cnn, [list(images[:4])]))):
        path = export_onnx(model, tmp_path / f"{stage}.onnx", images[4:6])
        assert _detection_parity(model, path, images[4:]) > 0, stage


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["fasterrcnn_mobilenet_v3_large_320_fpn", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"]
)
def test_torchvision_two_stage_detectors_export(name, tmp_path):
    """The CNN's detections agree (Mask and Keypoint R-CNN export their boxes, scores and labels, not their masks or
    keypoints); the adder model, converted without the reconstruction step (minutes on a ResNet-50; without it the
    adder model is too ill-conditioned for the parity bar), exports and runs. Untrained, the MobileNetV3 of
    fasterrcnn_mobilenet_v3_large_320_fpn with its BatchNorms' initial statistics (mean 0, variance 1) gives nearly
    constant maps at 64 px: every proposal is pooled alike and scored alike (0.11). Its statistics are estimated on
    12 scenes first; then its proposals differ, and with class weights 30 times larger about 20 of them score above
    0.3 (estimated on 4 scenes, a few maps stay large, and their scores differ by 3e-4 between the runtimes)."""
    torch.manual_seed(0)
    cnn = build_dense_model(name, 2 if name.startswith("keypoint") else 11, SIZE)
    images = _scenes("detection", 6, noise=0.05)
    if name.startswith("fasterrcnn"):
        reestimate_batchnorm(cnn, [(_scenes("detection", 12, noise=0.05), None)], 1)
    cnn = score_spread(cnn, rcnn_logits=30.0 if name.startswith("fasterrcnn") else 10.0)
    path = export_onnx(cnn, tmp_path / "cnn.onnx", images[4:6])
    assert _detection_parity(cnn, path, images[4:]) >= 5
    adder = _adder(cnn, [list(images[:4])], reconstruct_method=None)
    path = export_onnx(adder, tmp_path / "adder.onnx", images[4:6])
    # A one-base layer's norm folds into FusedAdderConv; a layer of more bases (the default for the MobileNetV3
    # backbone's grouped convs) adds its bases up in a grouped 1x1 Conv first, so its AdderConv keeps the norm apart.
    ops = {"AdderConv" if m.bases > 1 else "FusedAdderConv" for m in adder.modules() if isinstance(m, AdderConv2d)}
    assert {n.op_type for n in onnx.load(str(path)).graph.node if n.domain == DOMAIN} == ops
    got = run_dense(make_session(path, intra_op_num_threads=1), images[4:])
    assert len(got) == 2 and all(d["boxes"].shape == (len(d["scores"]), 4) for d in got)


def test_parity_helpers_catch_a_difference():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    first = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([1, 2])}]
    assert _matched(first, first) == 2
    for change in ({"labels": torch.tensor([1, 3])}, {"scores": torch.tensor([0.9, 0.501])}, {"boxes": boxes + 1}):
        with pytest.raises(AssertionError):
            _matched(first, [first[0] | change])
    near = [first[0] | {"scores": torch.tensor([0.9, 0.30004])}]  # above 0.3 on one side only, within 1e-4
    assert _matched(near, [first[0] | {"scores": torch.tensor([0.9, 0.29996])}]) == 2


def test_parity_helpers_let_nms_keep_a_box_on_one_side_only_near_its_threshold():
    """A box kept on one side and suppressed on the other by a box of its class at IoU near the NMS threshold (0.5
    here) passes with nms_edge, once in a hundred detections; not at IoU far from it, nor more often."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5.1]])  # IoU 0.51
    kept = {"boxes": boxes, "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([1, 1])}
    suppressed = {"boxes": boxes[:1], "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    many = {key: value.repeat(50, *[1] * (value.dim() - 1)) for key, value in suppressed.items()}
    many["boxes"] = many["boxes"] + 100 * torch.arange(50.0)[:, None]  # 50 boxes apart, each matched
    with pytest.raises(AssertionError, match="unmatched"):
        _matched([kept], [suppressed])
    assert _matched([kept, many], [suppressed, many], nms_thresh=0.5, nms_edge=0.05) == 52
    with pytest.raises(AssertionError, match="unmatched"):
        _matched([kept, many], [suppressed, many], nms_thresh=0.7, nms_edge=0.05)
    with pytest.raises(AssertionError, match="one side only"):
        _matched([kept], [suppressed], nms_thresh=0.5, nms_edge=0.05)
