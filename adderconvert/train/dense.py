"""Fine-tuning segmentation and detection models: their :class:`~adderconvert.train.loop.Task` for :func:`fit`.

- **Segmentation** (``(image, mask)`` batches): per-pixel cross-entropy on the model's ``out`` logits, pixels of
  the ignore index (255) left out, plus :data:`AUX_WEIGHT` times the auxiliary classifier's where the model has one
  (FCN, DeepLabV3), as torchvision's reference training does; distillation of the CNN's ``out`` logits per pixel
  (KL at the config's temperature, weight ``kd_alpha``: :func:`~adderconvert.train.distill.distillation_loss`).
  Metric: mIoU, with pixel accuracy beside it (:mod:`adderconvert.metrics`).
- **Detection** (``(images, targets)`` lists, :func:`adderconvert.data.collate_detection`): the sum of the
  detector's own loss dictionary in training mode (classification, box regression, objectness, ...). Metric: COCO
  mAP@[.5:.95], with mAP@.5 beside it (pycocotools).
- **Feature distillation** (both, weight ``feature_kd`` times :data:`FEATURE_SCALE`): the backbone's outputs (a
  segmentation backbone's feature maps, a detector's FPN levels or SSD's feature maps) matched to the CNN's,
  :func:`feature_map_loss`.

Metrics are in percent, as top-1 is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adderconvert.conversion.plan import is_depthwise
from adderconvert.conversion.recipe import CEILING_BASES
from adderconvert.data import IGNORE_INDEX, collate_detection
from adderconvert.metrics import coco_map, confusion_matrix, segmentation_scores
from adderconvert.train.distill import distillation_loss, feature_map_loss
from adderconvert.train.loop import CLASSIFICATION, Task, TrainConfig

__all__ = [
    "AUX_WEIGHT",
    "DENSE_BASES",
    "DETECTION",
    "FEATURE_SCALE",
    "SEGMENTATION",
    "BackboneDistillation",
    "DetectionTask",
    "SegmentationTask",
    "segmentation_loss",
    "training_task",
]

AUX_WEIGHT = 0.5  # the auxiliary classifier's loss weight, torchvision's reference training's
# The backbone maps' distillation weight is TrainConfig.feature_kd (0 by default: off) times this. Matched hard,
# the maps of a CNN trained briefly hold the adder model back: lraspp_mobilenet_v3_large at 64 px on the scenes (CNN
# 44.16% mIoU after 2 epochs, adder model 25.27% at zero steps, 150 steps of batch 32, 256 test scenes) ended at
# 34.80% mIoU with weight 5.0, 38.85% with 0.5, 40.15% with 0 and 40.01% without any distillation (one seed each,
# Intel Xeon, 2026-12-06). A longer-trained CNN may want more: --feature-kd sets it.
FEATURE_SCALE = 0.1


def segmentation_loss(
    outputs: dict[str, torch.Tensor],
    masks: torch.Tensor,
    teacher_outputs: dict[str, torch.Tensor] | None,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """The loss of a segmentation model's ``outputs`` (``out`` logits, ``aux`` where it has an auxiliary
    classifier) for ``masks``: :func:`distillation_loss` of ``out`` with the teacher's ``out`` logits (per pixel,
    plain cross-entropy without a teacher), plus :data:`AUX_WEIGHT` times the cross-entropy of ``aux``; pixels of
    the ignore index count in neither."""
    teacher_logits = teacher_outputs["out"].float() if teacher_outputs is not None else None
    loss = distillation_loss(outputs["out"].float(), masks, teacher_logits, alpha, temperature, IGNORE_INDEX)
    if outputs.get("aux") is not None:
        loss = loss + AUX_WEIGHT * F.cross_entropy(outputs["aux"].float(), masks, ignore_index=IGNORE_INDEX)
    return loss


class BackboneDistillation:
    """Records the outputs of ``student.backbone`` (in training forwards only, with gradients) and of
    ``teacher.backbone`` through forward hooks; :meth:`loss` is :func:`feature_map_loss` of the last pair."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}

        def record(store: dict, needs_grad: bool):
            def hook(module, inputs, output):
                if needs_grad and not torch.is_grad_enabled():
                    return  # evaluation and BatchNorm re-estimation
                store.clear()
                store.update(output if isinstance(output, dict) else {"0": output})

            return hook

        self._hooks = [
            student.backbone.register_forward_hook(record(self._student, True)),
            teacher.backbone.register_forward_hook(record(self._teacher, False)),
        ]

    def loss(self) -> torch.Tensor:
        """:func:`feature_map_loss` of the features recorded by the last student and teacher forwards."""
        if not self._student or not self._teacher:
            raise RuntimeError("feature distillation: the student's or the teacher's backbone did not run")
        loss = feature_map_loss(self._student, self._teacher)
        self._student.clear()
        self._teacher.clear()
        return loss

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


# A per-pixel or per-box output needs more of each layer's function than an argmax over classes: with two binary
# bases LR-ASPP keeps 92% of its CNN's mIoU at zero steps (77% with one) and ends one epoch 0.60 below it (2.80),
# SSDlite 83% of its mAP (48%) and 4.20 below it (10.21) (docs/results/dense_cpu.md), for twice the additions.
DENSE_BASES = 2


class _DenseTask(Task):
    """What segmentation and detection share: the backbone maps' distillation, and a smaller batch."""

    feature_scale = FEATURE_SCALE
    # A scene's loss is over thousands of pixels or a few boxes: one epoch of few large batches leaves the adder
    # model far from its CNN. lraspp_mobilenet_v3_large at 64 px, one epoch on the cpu budget's 5,000 scenes (CNN
    # 48.86% mIoU): batch 128 (39 steps) 41.64%, 32 44.59%, 16 46.27%, 8 46.50% (docs/results/dense_cpu.md).
    batch_size = 16

    def bases(self, model: nn.Module) -> int | None:
        """:data:`DENSE_BASES`."""
        return DENSE_BASES

    def features(self, model: nn.Module, teacher: nn.Module) -> BackboneDistillation:
        return BackboneDistillation(model, teacher)


class SegmentationTask(_DenseTask):
    """torchvision's segmentation models (the module's docstring)."""

    metric = "miou"
    # The adder weights keep the larger step classifiers had until 2026-12-06: LR-ASPP at 64 px, batch 16, kd_alpha
    # 0.8, one epoch: at 5x the lr 46.22% mIoU, at 2.5x (the classifiers' default) 45.35%. Detection keeps 2.5x:
    # SSDlite (16-epoch CNN) 31.75% mAP at 2.5x, 31.28% at 5x (docs/results/dense_cpu.md).
    adder_lr_scale = 5.0

    def step(
        self, net: nn.Module, batch: Any, teacher: nn.Module | None, config: TrainConfig, device: torch.device
    ) -> tuple[torch.Tensor, int, float | None]:
        images, masks = batch[0].to(device), batch[1].to(device)
        with torch.no_grad():
            teacher_outputs = teacher(images) if (teacher is not None and config.kd) else None
        outputs = net(images)
        loss = segmentation_loss(outputs, masks, teacher_outputs, config.kd_alpha, config.kd_temperature)
        return loss, len(images), None

    def batch_result(self, model: nn.Module, batch: Any, device: str | torch.device) -> torch.Tensor:
        """The batch's confusion matrix."""
        images, masks = batch
        logits = model(images.to(device))["out"]
        return confusion_matrix(logits.argmax(1).cpu(), masks, logits.shape[1])

    def scores(self, results: list[torch.Tensor]) -> dict[str, float]:
        """``{"miou", "pixel_accuracy"}`` (%) of the summed confusion matrices."""
        if not results:
            raise ValueError("segmentation: the test set is empty")
        return {name: 100.0 * value for name, value in segmentation_scores(sum(results)).items()}


class DetectionTask(_DenseTask):
    """torchvision's detection models (the module's docstring)."""

    metric = "map"
    collate_fn = staticmethod(collate_detection)
    # A detector keeps every conv of the kept kinds (depthwise, squeeze-excitation): no keep ceiling. SSDlite at
    # four bases on a 16-epoch CNN (41.10 mAP, 64 px scenes): with its depthwise convs kept it keeps 98% at zero steps
    # (97% with the ceiling converting them) and ends one epoch 0.71 / 1.19 short on two data orders (0.89 / 1.42),
    # converting 80% of its conv MACs at 320 px instead of 87% (docs/results/dense_cpu.md).
    keep_ceiling = 1.0
    # The adder weights nearly still, the CNN's layers at TrainConfig.lr whatever the bases: the adder weights' step
    # is what cost SSDlite its epoch: at the classifiers' four-base step (lr 0.001 x 2.5) it ended 2.09 short, 1.22
    # with its depthwise convs kept; at lr 0.002 x 0.05 0.89 and 0.56 (the same data order); with nothing learning
    # it keeps zero steps.
    lr = TrainConfig.lr
    adder_lr_scale = 0.05

    def bases(self, model: nn.Module) -> int | None:
        """:data:`~adderconvert.conversion.CEILING_BASES` for a detector with depthwise convs (SSDlite, Faster R-CNN
        on MobileNetV3), else :data:`DENSE_BASES`. SSDlite with its depthwise convs kept: two bases keep 94% of its
        mAP at zero steps and end one epoch 1.95 short, four 98% and 0.56 (the same data order)."""
        depthwise = any(isinstance(m, nn.Conv2d) and is_depthwise(m) for m in model.modules())
        return CEILING_BASES if depthwise else DENSE_BASES

    def images(self, batch: Any) -> torch.Tensor:
        return torch.stack(list(batch[0]))

    def step(
        self, net: nn.Module, batch: Any, teacher: nn.Module | None, config: TrainConfig, device: torch.device
    ) -> tuple[torch.Tensor, int, float | None]:
        images = [image.to(device) for image in batch[0]]
        targets = [{key: value.to(device) for key, value in target.items()} for target in batch[1]]
        if teacher is not None and config.kd and config.feature_kd > 0:  # its features only: no detections
            with torch.no_grad():
                teacher.backbone(teacher.transform(images)[0].tensors)
        losses = net(images, targets)
        return sum(losses.values()), len(images), None

    def batch_result(self, model: nn.Module, batch: Any, device: str | torch.device) -> tuple[list, list]:
        """The batch's detections (on the CPU) and targets."""
        images, targets = batch
        outputs = model([image.to(device) for image in images])
        return [{key: value.cpu() for key, value in output.items()} for output in outputs], list(targets)

    def scores(self, results: list[tuple[list, list]]) -> dict[str, float]:
        """``{"map", "map_50"}`` (%) of all the batches' detections (:func:`adderconvert.metrics.coco_map`)."""
        predictions = [p for batch, _ in results for p in batch]
        truth = [t for _, batch in results for t in batch]
        return {name: 100.0 * value for name, value in coco_map(predictions, truth).items()}


SEGMENTATION = SegmentationTask()
DETECTION = DetectionTask()


def training_task(task: str) -> Task:
    """The :class:`~adderconvert.train.loop.Task` of ``task`` (``classification``, ``segmentation``,
    ``detection``)."""
    tasks = {"classification": CLASSIFICATION, "segmentation": SEGMENTATION, "detection": DETECTION}
    if task not in tasks:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(tasks)}")
    return tasks[task]
