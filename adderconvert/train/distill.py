"""Knowledge distillation from the CNN teacher (Hinton et al.; PKKD uses it to lift AdderNet ResNet-50)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss"]


def distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    alpha: float = 0.5,
    temperature: float = 4.0,
) -> torch.Tensor:
    """``(1 - alpha) * CE(student, y) + alpha * T^2 * KL(teacher_T || student_T)``; plain CE without a teacher."""
    ce = F.cross_entropy(student_logits, targets)
    if teacher_logits is None or alpha == 0:
        return ce
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * ce + alpha * t * t * kl
