"""Knowledge distillation from the CNN teacher (Hinton et al.; PKKD uses it to lift AdderNet ResNet-50)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adderconvert.conversion import norms_after_adders

__all__ = ["KD_ALPHA", "KD_TEMPERATURE", "FeatureDistillation", "distillation_loss", "feature_map_loss"]

# The recipe's logit-distillation defaults (TrainConfig takes them). Temperature 4.0 until 2026-12-03 (the screen
# that chose 2.0: docs/results/archive/recipe_history.md). Alpha 0.5 until 2026-12-05, then 0.2, chosen on one-epoch
# teachers that their students beat (docs/results/archive/recipes_cpu_amd_alpha02.md); since 2026-12-06 0.8, chosen on
# teachers trained 8 epochs: RegNet-Y-400MF 89.11% at 0.2, 89.60% at 0.5, 89.64% at 0.8, 89.62% at 1.0,
# MobileNetV3-Small 89.79%, 89.96%, 90.20% (docs/results/recipes_cpu_converged.md). A converged CNN's soft labels
# carry more than the true ones.
KD_ALPHA = 0.8
KD_TEMPERATURE = 2.0
_EPS = 1e-5  # the smallest variance a feature map is divided by


def distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    alpha: float = KD_ALPHA,
    temperature: float = KD_TEMPERATURE,
    ignore_index: int = -100,
) -> torch.Tensor:
    """``(1 - alpha) * CE(student, y) + alpha * T^2 * KL(teacher_T || student_T)``; plain CE without a teacher.

    Logits are ``(N, C)`` (a classifier's) or ``(N, C, H, W)`` (a segmentation model's, ``targets`` ``(N, H, W)``):
    both terms are means over the images or the pixels, and a pixel whose target is ``ignore_index`` counts in
    neither."""
    if not (targets != ignore_index).any():  # nothing counts (a batch of ignored pixels): a zero loss, not NaN
        return student_logits.sum() * 0.0
    ce = F.cross_entropy(student_logits, targets, ignore_index=ignore_index)
    if teacher_logits is None or alpha == 0:
        return ce
    t = temperature
    log_student = F.log_softmax(student_logits / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits / t, dim=1)
    if student_logits.dim() == 2:
        kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    else:  # per position, over the positions the cross-entropy counts
        per_position = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(1)
        kl = per_position[targets != ignore_index].mean()
    return (1 - alpha) * ce + alpha * t * t * kl


def feature_map_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the feature maps of ``teacher`` (name -> ``(N, C, ...)``) of the student's mean squared difference
    from each, divided by the teacher map's variance (per channel over the batch and positions, averaged over the
    channels), so that one weight suits every map whatever its scale: a BatchNorm's learned scale or an FPN level's.
    A per-map, not per-channel, scale keeps a channel that hardly varies (a dead one) from weighing more than the
    others."""
    terms = []
    for name, target in teacher.items():
        target = target.detach().float()
        dims = [0, *range(2, target.dim())]
        variance = target.var(dim=dims, unbiased=False).mean().clamp_min(_EPS)
        terms.append(F.mse_loss(student[name].float(), target) / variance)
    return torch.stack(terms).mean()


class FeatureDistillation:
    """Matches the student's normalised features to the teacher's, layer by layer.

    The pairs are the normalisation layers that directly follow an adder layer in the student, as
    :func:`adderconvert.conversion.norms_after_adders` finds them (one forward pass of the student on
    ``example_input`` or a default input). A norm the CNN had is matched to the same-named layer of the
    teacher; a BatchNorm the conversion inserted (conv ``name`` became ``name.0``, its norm ``name.1``) is
    matched to the teacher's conv ``name``, standardised per channel over the batch as an untrained
    BatchNorm would. Forward hooks record both outputs; :meth:`loss` is the mean over pairs of their mean
    squared difference over the teacher's variance (:func:`feature_map_loss`): a norm's learned scale sets its output's,
    and EfficientNet-B0's reach a variance of 30 where MobileNetV3's and ResNet's stay near 1.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, example_input: torch.Tensor | None = None) -> None:
        teacher_modules = dict(teacher.named_modules())
        pairs = []  # (student norm, teacher module, standardise the teacher's output)
        for adder, norm in norms_after_adders(student, example_input).items():
            conv = adder.removesuffix(".0")
            if norm in teacher_modules:
                pairs.append((norm, norm, False))
            elif norm == f"{conv}.1" and isinstance(teacher_modules.get(conv), nn.Conv2d):
                pairs.append((norm, conv, True))
        if not pairs:
            raise ValueError("feature distillation found no BatchNorm after an adder layer to match")
        self.names = [norm for norm, _, _ in pairs]
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        student_modules = dict(student.named_modules())
        # The student's features count only in a training forward, not in evaluation or BatchNorm
        # re-estimation (both run without gradients); the teacher always runs without them.
        self._hooks = [
            student_modules[norm].register_forward_hook(_recorder(self._student, norm, needs_grad=True))
            for norm, _, _ in pairs
        ]
        self._hooks += [
            teacher_modules[source].register_forward_hook(
                _recorder(self._teacher, norm, needs_grad=False, standardise=standardise)
            )
            for norm, source, standardise in pairs
        ]

    def loss(self) -> torch.Tensor:
        """:func:`feature_map_loss` of the features recorded by the last student and teacher forwards."""
        loss = feature_map_loss({n: self._student[n] for n in self.names}, {n: self._teacher[n] for n in self.names})
        self._student.clear()
        self._teacher.clear()
        return loss

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _recorder(store: dict, name: str, needs_grad: bool, standardise: bool = False):
    def hook(module, inputs, output):
        if needs_grad and not torch.is_grad_enabled():
            return
        if standardise:  # per channel over the batch and positions, as BatchNorm2d in training
            store[name] = F.batch_norm(output, None, None, training=True)
        else:
            store[name] = output.clone()  # the model may change its output in place (a residual add, ReLU)

    return hook
