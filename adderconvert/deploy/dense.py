"""Segmentation and detection models in ONNX: what :func:`adderconvert.deploy.export.export_onnx` exports of them.

- **Segmentation** (torchvision's FCN, DeepLabV3, LR-ASPP): input ``images`` ``(N, 3, H, W)``, output ``logits``
  ``(N, C, H, W)``, the model's ``"out"`` (the auxiliary head is left out of the graph).
- **Detection** (torchvision's RetinaNet, FCOS, SSD and SSDlite): one graph from image to detections. Input ``images``
  ``(N, 3, S, S)`` float32: what the PyTorch model takes as ``model(list(images))``, at the size ``S`` its transform
  keeps (``min_size = max_size = S``, as ``architectures.dense.build_dense_model`` builds it); the graph does the
  transform's normalisation and padding itself, not its resizing. Outputs ``boxes`` ``(K, 4)`` float32
  ``x1, y1, x2, y2`` in input pixels, ``scores`` ``(K,)`` float32, ``labels`` ``(K,)`` int64 and ``image_index``
  ``(K,)`` int64 (the image of the batch each detection is in), grouped by image and by score, highest first.

Detection's post-processing does not trace through ``torch.export`` (torchvision's NMS and its score filters make
shapes that depend on the data: ``GuardOnDataDependentSymNode`` in ``batched_nms``; open upstream as pytorch/vision
#9306 and #9462). So the exported PyTorch part
(:class:`DetectionHeads`) stops at every anchor's decoded, clipped box and class scores (torchvision's own
``box_coder`` and ``clip_boxes_to_image``, the anchors a constant of the image size), and
:func:`append_detection_postprocess` adds the rest as standard ONNX ops, as torchvision's
``postprocess_detections`` does it: scores above ``score_thresh``; the ``topk_candidates`` best of each pyramid level
(RetinaNet, FCOS) or each class (SSD); ``NonMaxSuppression`` per class at ``nms_thresh``; the
``detections_per_img`` best of each image.

The two-stage R-CNNs (Faster, Mask and Keypoint R-CNN: region proposals, then RoI pooling of each) export through the
TorchScript exporter instead (:class:`RCNNDetections`), whose trace takes torchvision's own ONNX paths for its
post-processing; its graph takes the example's batch size only (``run_dense`` runs other batches in pieces of it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torchvision.models import detection, segmentation
from torchvision.ops import boxes as box_ops

from adderconvert_ort import DETECTION_OUTPUTS  # the runtime package's run_dense reads them too

__all__ = [
    "DETECTION_OUTPUTS",
    "DetectionHeads",
    "RCNNDetections",
    "SegmentationLogits",
    "append_detection_postprocess",
    "model_task",
]

IMAGES = "images"
LOGITS = "logits"
# The outputs of the traced part of a detector, inputs of the post-processing graph.
RAW_BOXES, RAW_SCORES = "anchor_boxes", "anchor_scores"
_SEGMENTATION = (segmentation.FCN, segmentation.DeepLabV3, segmentation.LRASPP)
_ONE_STAGE = (detection.RetinaNet, detection.FCOS, detection.ssd.SSD)


def model_task(model: nn.Module) -> str:
    """``"segmentation"`` or ``"detection"`` for torchvision's models of these tasks, else ``"classification"``."""
    if isinstance(model, _SEGMENTATION):
        return "segmentation"
    if isinstance(model, (*_ONE_STAGE, detection.generalized_rcnn.GeneralizedRCNN)):
        return "detection"
    return "classification"


class SegmentationLogits(nn.Module):
    """A torchvision segmentation model's ``"out"`` as a tensor: what ONNX exports (the auxiliary output, unused,
    leaves the graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["out"]


def _kept_size(model: nn.Module, image_size: tuple[int, int]) -> torch.Tensor:
    """The batch of two zero images of ``image_size`` as the detector's transform makes it; ``ValueError`` where the
    transform resizes that size (the graph does not resize)."""
    with torch.no_grad():
        # two images: a GroupNorm of one value per group (a 1x1 map) refuses a batch of one
        images, _ = model.transform([torch.zeros(3, *image_size)] * 2)
    if tuple(images.image_sizes[0]) != tuple(image_size):
        raise ValueError(
            f"the model's transform resizes {image_size[0]}x{image_size[1]} images to "
            f"{images.image_sizes[0][0]}x{images.image_sizes[0][1]}: export at the size it keeps (build it "
            "for the data's size: architectures.dense.build_dense_model)"
        )
    return images


class RCNNDetections(nn.Module):
    """A two-stage R-CNN (Faster, Mask and Keypoint R-CNN) from a batch of images to :data:`DETECTION_OUTPUTS`, with
    torchvision's own post-processing: for the TorchScript exporter (``torch.onnx.export(dynamo=False)``), which
    traces torchvision's ONNX paths (``RoiAlign``, ``NonMaxSuppression``) where ``torch.export`` cannot. The trace
    unrolls the loop over the images, so the graph takes the example's batch size only. Masks and keypoints are not
    among the outputs."""

    def __init__(self, model: nn.Module, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.image_size = tuple(int(v) for v in image_size)
        _kept_size(model, self.image_size)

    def postprocess_settings(self) -> dict[str, Any]:
        """The post-processing's settings, as the model holds them (written to the ONNX metadata)."""
        heads, rpn = self.model.roi_heads, self.model.rpn
        return {
            "architecture": type(self.model).__name__,
            "score_thresh": float(heads.score_thresh),
            "nms_thresh": float(heads.nms_thresh),
            "detections_per_img": int(heads.detections_per_img),
            "rpn_pre_nms_top_n": int(rpn._pre_nms_top_n["testing"]),
            "rpn_post_nms_top_n": int(rpn._post_nms_top_n["testing"]),
            "rpn_nms_thresh": float(rpn.nms_thresh),
            "image_size": list(self.image_size),
        }

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.model(list(images.unbind(0)))
        index = [torch.full_like(d["labels"], i) for i, d in enumerate(found)]
        return (*(torch.cat([d[key] for d in found]) for key in DETECTION_OUTPUTS[:3]), torch.cat(index))


class DetectionHeads(nn.Module):
    """The traced part of a one-stage detector at one image size: normalisation and padding as its transform does
    them, backbone, head, and for every anchor the decoded box clipped to the image, ``(N, M, 4)``, and the class
    scores flattened in the order of the post-processing's candidate groups, ``(N, M * C)`` (:attr:`groups`).

    ``image_size`` ``(H, W)`` must be a size the model's transform keeps (it would resize other sizes, which the
    graph does not do): ``ValueError`` otherwise. The two-stage R-CNNs are refused with ``NotImplementedError``.
    """

    def __init__(self, model: nn.Module, image_size: tuple[int, int]) -> None:
        super().__init__()
        if not isinstance(model, _ONE_STAGE):
            raise NotImplementedError(
                f"{type(model).__name__} is not a one-stage detector (RetinaNet, FCOS, SSD): export the R-CNNs with "
                "RCNNDetections"
            )
        self.model = model
        self.image_size = tuple(int(v) for v in image_size)
        images = _kept_size(model, self.image_size)
        with torch.no_grad():
            self.padded = tuple(images.tensors.shape[-2:])
            features = self._features(images.tensors)
            anchors = model.anchor_generator(images, features)[0]
            head = model.head(features)
        self.register_buffer("anchors", anchors, persistent=False)
        self.num_classes = int(head["cls_logits"].shape[-1])
        anchors_per_position = len(anchors) // sum(f.shape[-2] * f.shape[-1] for f in features)
        self.level_sizes = [int(f.shape[-2] * f.shape[-1] * anchors_per_position) for f in features]

    @property
    def ssd(self) -> bool:
        return isinstance(self.model, detection.ssd.SSD)

    @property
    def groups(self) -> list[tuple[int, int]]:
        """The candidate groups, ranges of the flattened scores: each pyramid level (RetinaNet, FCOS: anchor-major,
        ``anchor * C + class``) or each class but the background (SSD: class-major, ``class * M + anchor``)."""
        if self.ssd:
            count = len(self.anchors)
            return [(label * count, (label + 1) * count) for label in range(1, self.num_classes)]
        ends = np.cumsum([0, *self.level_sizes]) * self.num_classes
        return [(int(start), int(end)) for start, end in zip(ends[:-1], ends[1:])]

    def postprocess_settings(self) -> dict[str, Any]:
        """The post-processing's settings, as the model holds them (written to the ONNX metadata)."""
        model = self.model
        return {
            "architecture": type(model).__name__,
            "score_thresh": float(model.score_thresh),
            "nms_thresh": float(model.nms_thresh),
            "detections_per_img": int(model.detections_per_img),
            "topk_candidates": int(model.topk_candidates),
            "topk_per": "class" if self.ssd else "level",
            "image_size": list(self.image_size),
        }

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model.backbone(x)
        return [features] if isinstance(features, torch.Tensor) else list(features.values())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        x = model.transform.normalize(images)
        pad = (0, self.padded[1] - self.image_size[1], 0, self.padded[0] - self.image_size[0])
        if any(pad):
            x = F.pad(x, pad)  # the transform's batch_images: zeros right and bottom
        head = model.head(self._features(x))
        logits, regression = head["cls_logits"], head["bbox_regression"]
        if isinstance(model, detection.FCOS):
            boxes = model.box_coder.decode(regression, self.anchors)
            scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(head["bbox_ctrness"]))
        else:
            anchors = self.anchors.expand(regression.shape[0], -1, -1).reshape(-1, 4)
            boxes = model.box_coder.decode_single(regression.reshape(-1, 4), anchors).reshape(regression.shape)
            scores = torch.softmax(logits, -1).transpose(1, 2) if self.ssd else torch.sigmoid(logits)
        boxes = box_ops.clip_boxes_to_image(boxes, self.image_size)
        return boxes, scores.flatten(1)


def _constant(graph: onnx.GraphProto, name: str, value: Any, dtype: type = np.int64) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name


def append_detection_postprocess(model: onnx.ModelProto, heads: DetectionHeads) -> None:
    """Turn the graph of :class:`DetectionHeads` (outputs ``anchor_boxes``, ``anchor_scores``) into image ->
    detections, in place: the score threshold, the best ``topk_candidates`` of each candidate group, per-class
    ``NonMaxSuppression`` and the ``detections_per_img`` best of each image, with standard ONNX ops (opset 13 or
    later). The outputs are :data:`DETECTION_OUTPUTS` (the module's docstring)."""
    graph, settings = model.graph, heads.postprocess_settings()
    p = "postprocess_"
    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], outputs: list[str] | str, **attrs: Any) -> str:
        outputs = [outputs] if isinstance(outputs, str) else outputs
        nodes.append(helper.make_node(op, inputs, [p + o for o in outputs], name=p + outputs[0], **attrs))
        return p + outputs[0]

    made: set[str] = set()

    def const(name: str, value: Any, dtype: type = np.int64) -> str:
        if p + name not in made:  # one initializer per name
            made.add(p + name)
            _constant(graph, p + name, value, dtype)
        return p + name

    classes, anchors = heads.num_classes, len(heads.anchors)
    # Candidates: every score above the threshold (the others become -1), the best of each group.
    above = node("Greater", [RAW_SCORES, const("score_thresh", settings["score_thresh"], np.float32)], "above")
    masked = node("Where", [above, RAW_SCORES, const("minus_one", -1.0, np.float32)], "masked")
    values, indices = [], []
    for number, (start, end) in enumerate(heads.groups):
        bounds = [const(f"start{number}", [start]), const(f"end{number}", [end]), const("axis1", [1])]
        group = node("Slice", [masked, *bounds], f"group{number}")
        k = const(f"k{number}", [min(settings["topk_candidates"], end - start)])
        values.append(node("TopK", [group, k], [f"top{number}", f"where{number}"], axis=1))
        indices.append(node("Add", [p + f"where{number}", const(f"offset{number}", start)], f"index{number}"))
    score = node("Concat", values, "candidate_score", axis=1)  # (N, K)
    flat = node("Concat", indices, "candidate_flat", axis=1)
    if heads.ssd:  # class * M + anchor
        count = const("anchors", anchors)
        label, anchor = node("Div", [flat, count], "candidate_label"), node("Mod", [flat, count], "candidate_anchor")
    else:  # anchor * C + class
        count = const("classes", classes)
        anchor, label = node("Div", [flat, count], "candidate_anchor"), node("Mod", [flat, count], "candidate_label")
    anchor_column = node("Unsqueeze", [anchor, const("axis_last", [-1])], "candidate_anchor_column")
    boxes = node("GatherND", [RAW_BOXES, anchor_column], "candidate_boxes", batch_dims=1)  # (N, K, 4)
    # NonMaxSuppression per class: each candidate's score in its class's row, -1 (never selected) elsewhere.
    valid = node("Greater", [score, const("minus_half", -0.5, np.float32)], "candidate_valid")
    class_rows = const("class_rows", np.arange(classes).reshape(1, classes, 1))
    own = node("Equal", [node("Unsqueeze", [label, const("axis1", [1])], "label_row"), class_rows], "own_class")
    own = node("And", [own, node("Unsqueeze", [valid, p + "axis1"], "valid_row")], "own_valid")
    row_scores = node("Unsqueeze", [score, p + "axis1"], "score_row")
    nms_scores = node("Where", [own, row_scores, p + "minus_one"], "nms_scores")  # (N, C, K)
    candidates = const("max_per_class", [sum(min(settings["topk_candidates"], e - s) for s, e in heads.groups)])
    iou = const("iou", [settings["nms_thresh"]], np.float32)
    selected = node("NonMaxSuppression", [boxes, nms_scores, candidates, iou, p + "minus_half"], "selected")
    # (S, 3) rows of [image, class, candidate]: gather the detections.
    pair = node("Gather", [selected, const("image_and_candidate", [0, 2])], "pair", axis=1)
    image = node("Gather", [selected, const("zero", 0)], "image", axis=1)
    kept_score = node("GatherND", [score, pair], "kept_score")
    kept_label = node("GatherND", [label, pair], "kept_label")
    kept_boxes = node("GatherND", [boxes, pair], "kept_boxes")
    # Order by image, then by score, highest first: the key image * 4 - score, ascending (float64, exact).
    image_f64 = node("Cast", [image], "image_f64", to=TensorProto.DOUBLE)
    image_key = node("Mul", [image_f64, const("four", 4.0, np.float64)], "image_key")
    key = node("Sub", [image_key, node("Cast", [kept_score], "score_f64", to=TensorProto.DOUBLE)], "key")
    count = node("Shape", [key], "count")
    node("TopK", [key, count], ["sorted_key", "order"], axis=0, largest=0, sorted=1)
    order = p + "order"
    image = node("Gather", [image, order], "image_sorted")
    # Rank within its image: position - where its image starts; keep the first detections_per_img.
    batch = node("Gather", [node("Shape", [RAW_BOXES], "raw_shape"), p + "zero"], "batch")
    images = node("Range", [p + "zero", batch, const("one", 1)], "images")
    members = node("Equal", [node("Unsqueeze", [image, p + "axis1"], "image_column"), images], "members")  # (S, N)
    members = node("Cast", [members], "members_i64", to=TensorProto.INT64)
    per_image = node("ReduceSum", [members, const("axis0", [0])], "per_image", keepdims=0)
    starts = node("CumSum", [per_image, p + "zero"], "starts", exclusive=1)
    position = node("Range", [p + "zero", node("Squeeze", [count, p + "axis0"], "count_scalar"), p + "one"], "position")
    rank = node("Sub", [position, node("Gather", [starts, image], "start")], "rank")
    limit = const("detections_per_img", settings["detections_per_img"])
    kept = node("Squeeze", [node("NonZero", [node("Less", [rank, limit], "in_top")], "kept_2d"), p + "axis0"], "kept")
    final = node("Gather", [order, kept], "final")
    outputs = dict(zip(DETECTION_OUTPUTS, (kept_boxes, kept_score, kept_label, image)))
    for name, source in outputs.items():
        index = final if source != image else kept
        nodes.append(helper.make_node("Gather", [source, index], [name], name=p + "out_" + name, axis=0))
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["detections", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["detections"]),
            helper.make_tensor_value_info("labels", TensorProto.INT64, ["detections"]),
            helper.make_tensor_value_info("image_index", TensorProto.INT64, ["detections"]),
        ]
    )
