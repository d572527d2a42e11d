"""BatchNorm statistics after a layer swap: :func:`fit_norm_statistics` (one pass that keeps what the inserted norms
compute) and :func:`reestimate_batchnorm` (plain averages over training batches, also run before every
evaluation during fine-tuning).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from adderconvert.conversion.plan import ConversionReport, takes_targets

__all__ = ["fit_norm_statistics", "reestimate_batchnorm"]


def _inserted_norms(model: nn.Module, report: ConversionReport) -> list[nn.modules.batchnorm._BatchNorm]:
    return [model.get_submodule(f"{d.name}.1") for d in report.converted if d.insert_bn]


@contextlib.contextmanager
def _averaging(model: nn.Module):
    """``model`` in training mode with every tracking BatchNorm's statistics reset to a plain (cumulative) average
    of the batches run inside; the momenta and the model's mode come back afterwards, whatever happened. Dropout
    stays off (a BatchNorm after it, as in DeepLab's head, takes the statistics of the model as it evaluates). A
    model holding a detector (:func:`takes_targets`: in training mode it would ask for targets) runs in eval mode
    with its BatchNorms alone in training mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    if any(takes_targets(m) for m in model.modules()):
        model.eval()
        for m in norms:
            m.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):  # statistics of the model as it evaluates (DeepLab's heads)
            m.eval()
    try:
        yield
    finally:
        model.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


@torch.no_grad()
def fit_norm_statistics(model: nn.Module, report: ConversionReport, images: torch.Tensor, init: str = "sign") -> None:
    """Re-estimate every BatchNorm's statistics on ``images`` after
    :func:`~adderconvert.conversion.swap_layers`, keeping what the BatchNorms it inserted compute.

    One forward pass in training mode: each BatchNorm's running statistics become those of its input on
    ``images`` (after a conversion they are the CNN's, for outputs on another scale). An inserted norm set
    to give the conv's output scale (the ``sign`` init) would lose that scale to batch statistics; just
    before it runs, its eval-mode mapping ``a * x + c`` is folded into its weight and bias for the batch's
    statistics, so that in training mode on such data, in eval mode and after any later re-estimation it
    computes the same thing (``init`` is the one the swap used: other inits leave inserted norms to
    learn their scale, as before). A norm the model runs more than once (after a detection head's conv, on each
    pyramid level) is folded last for the averages of its runs, which its running statistics hold. Call it once,
    after the layer swap and before any training step; a longer re-estimation may follow
    (:func:`reestimate_batchnorm`).
    """
    inserted = set(_inserted_norms(model, report)) if init == "sign" else set()

    # Each inserted norm's eval-mode mapping a * x + c, taken before the statistics are reset.
    mappings = {}
    for m in inserted:
        if m.affine:
            a = m.weight / torch.sqrt(m.running_var + m.eps)
            mappings[m] = (a, m.bias - a * m.running_mean)

    runs = dict.fromkeys(mappings, 0)

    def fold(module, inputs):
        x = inputs[0].transpose(0, 1).flatten(1)
        mean, var = x.mean(1), x.var(1, correction=0)
        a, c = mappings[module]
        module.weight.copy_(a * torch.sqrt(var + module.eps))
        module.bias.copy_(a * mean + c)
        runs[module] += 1

    hooks = [m.register_forward_pre_hook(fold) for m in mappings]
    try:
        with _averaging(model):
            model(images)
    finally:
        for h in hooks:
            h.remove()
    for m, count in runs.items():
        if count > 1:  # run on several inputs (a head on each pyramid level): folded for the averages of them all
            a, c = mappings[m]
            m.weight.copy_(a * torch.sqrt(m.running_var + m.eps))
            m.bias.copy_(a * m.running_mean + c)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches, steps: int, device: str | torch.device = "cpu") -> None:
    """Re-estimate every BatchNorm's running statistics as plain averages over the first ``steps`` of
    ``batches`` (``(images, labels)`` pairs).

    Adder weights move fast under the adaptive learning rate, so the running averages kept during
    training trail the current weights; evaluating (and checkpointing) after this pass uses statistics
    that match them.
    """
    if steps <= 0 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    with _averaging(model):
        for step, (images, _) in enumerate(batches):
            if step >= steps:
                break
            model(images.to(device))
