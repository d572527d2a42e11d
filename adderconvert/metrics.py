"""The metrics of segmentation and detection, as fractions in [0, 1].

- **Segmentation:** mIoU and pixel accuracy from a confusion matrix summed over the test set. Pixels whose truth is
  the ignore index (255) count in neither. A class absent from both the predictions and the truth of the whole set
  has no IoU and is left out of the mean.
- **Detection:** COCO's mAP@[.5:.95] and mAP@.5, computed by pycocotools (COCO's own evaluation code: 101-point
  interpolated precision, up to 100 detections per image, every area), not by code of ours. Boxes are torchvision's
  ``x1, y1, x2, y2``; labels are the model's (0 is the background, never a class).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import torch

from adderconvert.data import IGNORE_INDEX

__all__ = ["METRIC_NAMES", "coco_map", "confusion_matrix", "segmentation_scores"]

# How the scores are named in what is printed (the keys are those of summary.json, in percent there).
METRIC_NAMES = {"top1": "top-1", "miou": "mIoU", "pixel_accuracy": "pixel accuracy", "map": "mAP", "map_50": "mAP@.5"}


def confusion_matrix(
    prediction: torch.Tensor, truth: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """The ``(num_classes, num_classes)`` int64 counts of pixels of true class ``i`` (row) predicted ``j``
    (column). ``prediction`` holds class indices (an argmax), ``truth`` the same shape with class indices or
    ``ignore_index``; sum the matrices of batches for a whole set. A true or predicted value out of the classes is
    a ``ValueError``."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} differ in shape")
    kept = truth != ignore_index
    truth, prediction = truth[kept].long(), prediction[kept].long()
    for name, values in (("truth", truth), ("prediction", prediction)):
        outside = values[(values < 0) | (values >= num_classes)]
        if outside.numel():
            raise ValueError(f"{name} holds class {int(outside[0])}, outside the {num_classes} classes")
    counts = torch.bincount(truth * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float]:
    """``{"miou", "pixel_accuracy"}`` of a confusion matrix (:func:`confusion_matrix`): the mean over the classes
    present in truth or prediction of ``TP / (TP + FP + FN)``, and the share of counted pixels predicted right."""
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    if not present.any():
        raise ValueError("no pixel to score: the truth is all ignore index")
    return {
        "miou": float((true_positive[present] / union[present]).mean()),
        "pixel_accuracy": float(true_positive.sum() / confusion.sum()),
    }


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    boxes = boxes.detach().double().cpu().reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()


def coco_map(
    predictions: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]]
) -> dict[str, float]:
    """``{"map", "map_50"}``: COCO's mAP@[.5:.95] and mAP@.5 of ``predictions`` (per image ``boxes``, ``scores``,
    ``labels``, a detector's eval-mode output) against ``targets`` (per image ``boxes``, ``labels``), by pycocotools.
    An image without predictions counts its objects as missed; a set without any true object is a ``ValueError``."""
    from pycocotools.coco import COCO  # only evaluating a detector needs it (CLI start-up)
    from pycocotools.cocoeval import COCOeval  # as above

    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    images, annotations, detections, labels = [], [], [], set()
    for image_id, (prediction, target) in enumerate(zip(predictions, targets)):
        images.append({"id": image_id})
        for box, label in zip(_xywh(target["boxes"]), target["labels"].tolist()):
            number = len(annotations) + 1  # pycocotools takes id 0 for no match
            annotations.append(
                {"id": number, "image_id": image_id, "category_id": label, "bbox": box}
                | {"area": box[2] * box[3], "iscrowd": 0}
            )
            labels.add(label)
        scores, classes = prediction["scores"].tolist(), prediction["labels"].tolist()
        for box, score, label in zip(_xywh(prediction["boxes"]), scores, classes):
            detections.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})
            labels.add(label)
    if not annotations:
        raise ValueError("no true object in the targets: mAP is undefined")
    if not detections:
        return {"map": 0.0, "map_50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and its table
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in labels]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # stats[0], stats[1]: AP at IoU .50:.95 and .50, all areas, 100 detections per image
    return {"map": float(evaluation.stats[0]), "map_50": float(evaluation.stats[1])}
