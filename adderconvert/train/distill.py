"""Knowledge distillation from the CNN teacher (Hinton et al.; PKKD uses it to lift AdderNet ResNet-50)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adderconvert.nn import AdderConv2d

__all__ = ["FeatureDistillation", "distillation_loss"]


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


class FeatureDistillation:
    """Matches the student's normalised features to the teacher's, layer by layer.

    The pairs are the normalisation layers that directly follow an adder layer in the student (the
    BatchNorm the converted conv fed in the CNN) and the same-named layers in the teacher. Forward hooks
    record both outputs; :meth:`loss` is the mean over pairs of their mean squared difference. BatchNorm
    outputs have unit scale, so one weight suits every layer.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        names = _norms_after_adders(student)
        teacher_modules = dict(teacher.named_modules())
        self.names = [n for n in names if n in teacher_modules]
        if not self.names:
            raise ValueError("feature distillation found no BatchNorm after an adder layer to match")
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        student_modules = dict(student.named_modules())
        # The student's features count only in a training forward, not in evaluation or BatchNorm
        # re-estimation (both run without gradients); the teacher always runs without them.
        self._hooks = [
            student_modules[n].register_forward_hook(_recorder(self._student, n, needs_grad=True)) for n in self.names
        ]
        self._hooks += [
            teacher_modules[n].register_forward_hook(_recorder(self._teacher, n, needs_grad=False)) for n in self.names
        ]

    def loss(self) -> torch.Tensor:
        """Mean squared difference of the features recorded by the last student and teacher forwards."""
        terms = [F.mse_loss(self._student[n], self._teacher[n].detach()) for n in self.names]
        self._student.clear()
        self._teacher.clear()
        return torch.stack(terms).mean()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _recorder(store: dict, name: str, needs_grad: bool):
    def hook(module, inputs, output):
        if needs_grad and not torch.is_grad_enabled():
            return
        store[name] = output.clone()  # the model may change its output in place (a residual add, ReLU)

    return hook


def _norms_after_adders(model: nn.Module) -> list[str]:
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    return [
        name
        for (_, before), (name, module) in zip(leaves, leaves[1:])
        if isinstance(before, AdderConv2d) and isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
