"""Metrics against independent references: hand-computed tiny cases, and for mIoU a per-class loop over pixels."""

import pytest
import torch

from adderconvert.data import IGNORE_INDEX
from adderconvert.metrics import coco_map, confusion_matrix, segmentation_scores


def _brute_force(prediction, truth, num_classes):
    """mIoU and pixel accuracy by counting each class's pixels, one class at a time."""
    kept = truth != IGNORE_INDEX
    ious = []
    for c in range(num_classes):
        intersection = int(((prediction == c) & (truth == c) & kept).sum())
        union = int((((prediction == c) | (truth == c)) & kept).sum())
        if union:
            ious.append(intersection / union)
    return sum(ious) / len(ious), int(((prediction == truth) & kept).sum()) / int(kept.sum())


def test_a_perfect_segmentation_scores_one():
    truth = torch.tensor([[0, 1], [2, IGNORE_INDEX]])
    scores = segmentation_scores(confusion_matrix(truth.clamp(max=2), truth, 3))
    assert scores == {"miou": 1.0, "pixel_accuracy": 1.0}


def test_hand_computed_segmentation():
    truth, prediction = torch.tensor([0, 0, 1, 1, IGNORE_INDEX]), torch.tensor([0, 1, 1, 1, 0])
    confusion = confusion_matrix(prediction, truth, 5)  # classes 2-4 appear nowhere: not in the mean
    assert confusion[:2, :2].tolist() == [[1, 1], [0, 2]] and confusion.sum() == 4
    scores = segmentation_scores(confusion)
    assert scores["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)  # class 0: 1 of 2 pixels; class 1: 2 of 3
    assert scores["pixel_accuracy"] == pytest.approx(3 / 4)
    # a class only predicted counts (IoU 0); one only ignored does not
    scores = segmentation_scores(confusion_matrix(torch.tensor([2, 0]), torch.tensor([0, 0]), 3))
    assert scores["miou"] == pytest.approx(1 / 4)


@pytest.mark.parametrize("seed", range(5))
def test_miou_matches_a_per_class_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    classes = 6
    truth = torch.randint(0, classes - 1, (3, 17, 19), generator=generator)  # the last class never true
    truth[torch.rand(truth.shape, generator=generator) < 0.1] = IGNORE_INDEX
    prediction = torch.where(torch.rand(truth.shape, generator=generator) < 0.6, truth, 0).clamp(max=classes - 2)
    prediction[torch.rand(truth.shape, generator=generator) < 0.2] = torch.randint(0, classes, (), generator=generator)
    # a whole set is the sum of its batches' matrices
    confusion = sum(confusion_matrix(p, t, classes) for p, t in zip(prediction, truth))
    scores = segmentation_scores(confusion)
    miou, accuracy = _brute_force(prediction, truth, classes)
    assert scores["miou"] == pytest.approx(miou) and scores["pixel_accuracy"] == pytest.approx(accuracy)


def test_segmentation_values_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="truth holds class 7, outside the 3 classes"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="prediction holds class -1, outside the 3 classes"):
        confusion_matrix(torch.tensor([-1, 2]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="prediction holds class 3"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(torch.zeros(2), torch.zeros(3), 3)
    with pytest.raises(ValueError, match="all ignore index"):
        segmentation_scores(confusion_matrix(torch.zeros(2), torch.full((2,), IGNORE_INDEX), 3))


def _target(*boxes, labels=None):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def _prediction(*boxes, scores, labels):
    return _target(*boxes, labels=labels) | {"scores": torch.tensor(scores)}


def test_perfect_detections_score_one():
    targets = [_target([0, 0, 10, 10], [20, 20, 40, 30], labels=[1, 2]), _target([5, 5, 50, 60], labels=[1])]
    predictions = [t | {"scores": torch.ones(len(t["labels"]))} for t in targets]
    assert coco_map(predictions, targets) == pytest.approx({"map": 1.0, "map_50": 1.0})


def test_a_shifted_box_counts_at_the_thresholds_it_passes():
    # shifted by 2 px: IoU 8/12 = 0.667, a hit at .50, .55, .60 and .65 of COCO's ten thresholds
    scores = coco_map([_prediction([2, 0, 12, 10], scores=[0.9], labels=[1])], [_target([0, 0, 10, 10], labels=[1])])
    assert scores == pytest.approx({"map": 0.4, "map_50": 1.0})
    # IoU 0.4: no hit
    scores = coco_map([_prediction([0, 0, 10, 4], scores=[0.9], labels=[1])], [_target([0, 0, 10, 10], labels=[1])])
    assert scores == pytest.approx({"map": 0.0, "map_50": 0.0})


def test_misses_false_positives_and_wrong_labels():
    truth = [_target([0, 0, 10, 10], [30, 30, 40, 40], labels=[1, 1])]
    # one of two found: precision 1 up to recall .5, on 51 of COCO's 101 recall points
    found_one = [_prediction([0, 0, 10, 10], scores=[0.9], labels=[1])]
    assert coco_map(found_one, truth) == pytest.approx({"map": 51 / 101, "map_50": 51 / 101})
    one_truth = [_target([0, 0, 10, 10], labels=[1])]
    # a false positive scored below the hit costs nothing; above it, halves the precision
    below = [_prediction([0, 0, 10, 10], [50, 50, 60, 60], scores=[0.9, 0.5], labels=[1, 1])]
    above = [_prediction([0, 0, 10, 10], [50, 50, 60, 60], scores=[0.5, 0.9], labels=[1, 1])]
    assert coco_map(below, one_truth)["map"] == pytest.approx(1.0)
    assert coco_map(above, one_truth)["map"] == pytest.approx(0.5)
    wrong_label = [_prediction([0, 0, 10, 10], scores=[0.9], labels=[2])]
    assert coco_map(wrong_label, one_truth) == pytest.approx({"map": 0.0, "map_50": 0.0})
    nothing = [_prediction(scores=[], labels=[])]
    assert coco_map(nothing, one_truth) == {"map": 0.0, "map_50": 0.0}


def test_classes_average_and_empty_images_count():
    # class 1 found, class 2 missed: the mean over the two classes is 0.5; an image without objects and without
    # detections changes nothing
    targets = [_target([0, 0, 10, 10], [20, 20, 30, 30], labels=[1, 2]), _target(labels=[])]
    predictions = [_prediction([0, 0, 10, 10], scores=[0.8], labels=[1]), _prediction(scores=[], labels=[])]
    assert coco_map(predictions, targets) == pytest.approx({"map": 0.5, "map_50": 0.5})


def test_detection_input_errors():
    with pytest.raises(ValueError, match="no true object"):
        coco_map([_prediction([0, 0, 1, 1], scores=[1.0], labels=[1])], [_target(labels=[])])
    with pytest.raises(ValueError, match="1 predictions for 2 images"):
        coco_map([_prediction(scores=[], labels=[])], [_target(labels=[])] * 2)
