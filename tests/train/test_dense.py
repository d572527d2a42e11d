"""Training segmentation and detection models (train/dense.py): the losses and the feature distillation against
references written out here, the evaluation against direct computations, and fit() on a segmentation task."""

import copy
import csv
import math

import numpy as np
import pytest
import torch
from torch import nn

from adderconvert.data import IGNORE_INDEX
from adderconvert.nn import AdderConv2d
from adderconvert.train import TrainConfig, fit
from adderconvert.train.dense import (
    AUX_WEIGHT,
    DETECTION,
    SEGMENTATION,
    BackboneDistillation,
    segmentation_loss,
    training_task,
)
from adderconvert.train.loop import CLASSIFICATION


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _reference(student, masks, teacher, alpha, t, aux=None):
    """The loss written out per pixel in float64: cross-entropy and KL(teacher_T || student_T), means over the
    pixels whose mask is not the ignore index, and the auxiliary head's cross-entropy times 0.5."""
    s, y = student.double().numpy(), masks.numpy()
    kept = y != IGNORE_INDEX
    picked = np.where(kept, y, 0)

    def ce(logits):
        nll = -np.take_along_axis(_log_softmax(logits), picked[:, None], axis=1)[:, 0]
        return nll[kept].mean()

    loss = ce(s)
    if teacher is not None:
        log_s, log_t = _log_softmax(s / t), _log_softmax(teacher.double().numpy() / t)
        kl = (np.exp(log_t) * (log_t - log_s)).sum(axis=1)[kept].mean()
        loss = (1 - alpha) * loss + alpha * t * t * kl
    if aux is not None:
        loss += 0.5 * ce(aux.double().numpy())
    return loss


@pytest.mark.parametrize("with_teacher", [True, False])
@pytest.mark.parametrize("with_aux", [True, False])
def test_segmentation_loss_against_a_per_pixel_reference(with_teacher, with_aux):
    gen = torch.Generator().manual_seed(0)
    student, teacher, aux = (torch.randn(2, 4, 5, 6, generator=gen) * 3 for _ in range(3))
    masks = torch.randint(0, 4, (2, 5, 6), generator=gen)
    masks[0, :2] = IGNORE_INDEX  # padding and unlabelled pixels count in no term
    outputs = {"out": student, **({"aux": aux} if with_aux else {})}
    teacher_outputs = {"out": teacher} if with_teacher else None
    loss = segmentation_loss(outputs, masks, teacher_outputs, alpha=0.3, temperature=2.0)
    expected = _reference(student, masks, teacher if with_teacher else None, 0.3, 2.0, aux if with_aux else None)
    assert AUX_WEIGHT == 0.5
    assert math.isclose(float(loss), expected, rel_tol=1e-5)


class _Segmenter(nn.Module):
    """A tiny segmentation model as torchvision's: ``backbone`` gives a dict of maps, the model ``{"out", "aux"}``."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.classifier = nn.Conv2d(8, classes, 1)
        self.aux_classifier = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        features = self.backbone(x)
        return {"out": self.classifier(features["out"]), "aux": self.aux_classifier(features["aux"])}


class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(AdderConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        aux = self.stem(x)
        return {"out": self.body(aux), "aux": aux}


def _scenes(n: int = 24, size: int = 8, classes: int = 3, seed: int = 0):
    """(image, mask) pairs whose mask follows the image: class = the pixel's brightness band."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=gen)
    masks = (images.mean(1) * classes).long().clamp(max=classes - 1)
    return list(zip(images, masks))


def test_backbone_distillation_matches_the_backbones_in_training_forwards_only():
    teacher = _Segmenter().eval()
    student = copy.deepcopy(teacher).train()
    features = BackboneDistillation(student, teacher)
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        teacher(images)
    student.eval()
    with torch.no_grad():  # evaluation and BatchNorm re-estimation: not recorded
        student(images)
    with pytest.raises(RuntimeError, match="did not run"):
        features.loss()
    with torch.no_grad():
        teacher(images)
    student(images)  # with gradients, in eval mode: the maps are the teacher's
    assert float(features.loss().detach()) == 0.0
    features.remove()
    assert not student.backbone._forward_hooks and not teacher.backbone._forward_hooks


def test_segmentation_evaluate_against_direct_counts():
    scenes = _scenes(n=10)
    model = _Segmenter().eval()
    scores = SEGMENTATION.evaluate(model, scenes, batch_size=4)
    with torch.no_grad():
        prediction = model(torch.stack([i for i, _ in scenes]))["out"].argmax(1).numpy()
    truth = torch.stack([m for _, m in scenes]).numpy()
    ious = []
    for c in range(3):
        tp = ((prediction == c) & (truth == c)).sum()
        union = ((prediction == c) | (truth == c)).sum()
        if union:
            ious.append(tp / union)
    assert math.isclose(scores["miou"], 100 * np.mean(ious), rel_tol=1e-9)
    assert math.isclose(scores["pixel_accuracy"], 100 * (prediction == truth).mean(), rel_tol=1e-9)
    assert list(scores) == ["miou", "pixel_accuracy"] and SEGMENTATION.metric == "miou"


class _Detector(nn.Module):
    """Stands for a torchvision detector: in eval mode it gives each image's ``answer`` (boxes, scores, labels), in
    training mode a loss dictionary."""

    def __init__(self, answers):
        super().__init__()
        self.answers = answers
        self.weight = nn.Parameter(torch.tensor(2.0))
        self.seen = 0

    def forward(self, images, targets=None):
        assert isinstance(images, list)
        if self.training:
            return {"loss_a": self.weight * len(images), "loss_b": self.weight**2}
        out = self.answers[self.seen : self.seen + len(images)]
        self.seen += len(images)
        return out


def _detection_samples():
    boxes = [torch.tensor([[2.0, 2.0, 10.0, 12.0]]), torch.tensor([[1.0, 1.0, 5.0, 5.0], [6.0, 6.0, 15.0, 14.0]])]
    labels = [torch.tensor([1]), torch.tensor([2, 3])]
    return [(torch.zeros(3, 16, 16), {"boxes": b, "labels": y}) for b, y in zip(boxes, labels)]


def test_detection_evaluate_scores_right_and_wrong_detections():
    samples = _detection_samples()
    right = [{**t, "scores": torch.ones(len(t["labels"]))} for _, t in samples]
    assert DETECTION.evaluate(_Detector(right), samples, batch_size=1) == pytest.approx({"map": 100, "map_50": 100})
    wrong = [{**t, "labels": t["labels"] % 3 + 1, "scores": torch.ones(len(t["labels"]))} for _, t in samples]
    assert DETECTION.evaluate(_Detector(wrong), samples, batch_size=2) == {"map": 0.0, "map_50": 0.0}


def test_detection_step_sums_the_loss_dictionary():
    detector = _Detector([]).train()
    batch = DETECTION.collate_fn(_detection_samples())
    loss, count, right = DETECTION.step(detector, batch, None, TrainConfig(), torch.device("cpu"))
    assert float(loss.detach()) == 2.0 * 2 + 4.0 and count == 2 and right is None
    assert DETECTION.images(batch).shape == (2, 3, 16, 16)


def test_training_task_by_name():
    assert training_task("classification") is CLASSIFICATION and training_task("detection") is DETECTION
    with pytest.raises(ValueError, match="unknown task"):
        training_task("keypoints")


def test_fit_on_a_segmentation_task_distils_and_writes_its_metric(tmp_path):
    """The teacher's logits and backbone maps are distilled: with them the loss is another, and the student moves
    toward the teacher (KL 0.59 -> 0.39), where the same student trained on the labels alone moves away (1.17)."""
    from adderconvert.checkpoint import CheckpointMeta

    torch.manual_seed(0)
    teacher = _Segmenter()
    config = TrainConfig(epochs=1, batch_size=4, progress=False, log=False, batchnorm_batches=2, kd=False)
    fit(teacher, _scenes(), _scenes(8, seed=1), config, task=SEGMENTATION)
    teacher.classifier.weight.data *= 20  # confident: its distribution is far from a fresh model's
    torch.manual_seed(1)
    start = _Segmenter()  # other weights than the teacher's
    test = _scenes(8, seed=1)

    def trained(kd: bool, output=None):
        student = copy.deepcopy(start)
        config = TrainConfig(
            epochs=2,
            batch_size=4,
            lr=0.1,
            progress=False,
            log=False,
            batchnorm_batches=2,
            kd=kd,
            kd_alpha=1.0,
            feature_kd=1.0,
        )
        meta = CheckpointMeta(model_name="tiny", num_classes=3)
        history = fit(student, _scenes(), test, config, teacher=teacher, output=output, meta=meta, task=SEGMENTATION)
        return student, history

    def gap(model: nn.Module) -> float:
        """KL(teacher || model) of the per-pixel class distributions on the test scenes."""
        images = torch.stack([image for image, _ in test])
        with torch.no_grad():
            log_t, log_m = (m.eval()(images)["out"].log_softmax(1) for m in (teacher, model))
        return float((log_t.exp() * (log_t - log_m)).sum(1).mean())

    distilled, history = trained(True, output=tmp_path)
    plain, plain_history = trained(False)
    assert [r.train_loss for r in history] != [r.train_loss for r in plain_history]
    assert gap(distilled) < min(0.8 * gap(start), 0.5 * gap(plain)), (gap(distilled), gap(start), gap(plain))
    assert [r.train_top1 for r in history] == [None, None]
    assert all(0 <= r.test_top1 <= 100 and math.isfinite(r.train_loss) for r in history)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["test_miou"]) for r in rows] == [r.test_top1 for r in history]
    assert "train_top1" not in rows[0] and "test_top1" not in rows[0]


def test_the_divergence_guard_stops_a_dense_run(tmp_path):
    from adderconvert.checkpoint import CheckpointMeta
    from adderconvert.train import TrainingDiverged

    scenes = _scenes(n=16)
    scenes[5] = (torch.full((3, 8, 8), math.nan), scenes[5][1])  # its batch's loss is not finite
    config = TrainConfig(epochs=1, batch_size=4, progress=False, log=False, kd=False)
    meta = CheckpointMeta(model_name="tiny", num_classes=3)
    with pytest.raises(TrainingDiverged, match="the loss became nan at epoch 1, step"):
        fit(_Segmenter(), scenes, scenes, config, output=tmp_path, meta=meta, task=SEGMENTATION)
    assert not (tmp_path / "last.pt").exists()
