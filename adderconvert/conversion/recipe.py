"""The one call that converts a trained CNN: :func:`convert` runs the default recipe's steps in order.

1. :func:`~adderconvert.conversion.plan_conversion` on calibration images: which convs become adder layers,
   and each one's input range;
2. :func:`~adderconvert.conversion.swap_layers` on a copy, with the ``sign`` init: every adder weight just past
   its inputs, so that each layer computes its conv's binary-weight twin (plus a constant);
3. :func:`~adderconvert.conversion.fit_norm_statistics`, then :func:`~adderconvert.conversion.reestimate_batchnorm`
   over all calibration images: BatchNorm statistics for the adder layers' outputs;
4. :func:`~adderconvert.conversion.reconstruct`: each adder layer refitted to the CNN's output of that layer.

The result keeps the CNN's function (on the recipe benchmark's families, 91-99% of its top-1 before any
training step) and is ready to evaluate, fine-tune or export.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adderconvert.conversion.calibration import CALIBRATION_IMAGES, Calibration, calibration_images
from adderconvert.conversion.norms import fit_norm_statistics, reestimate_batchnorm
from adderconvert.conversion.plan import ConversionReport, plan_conversion
from adderconvert.conversion.reconstruction import RECONSTRUCT_METHODS, ReconstructionResult, reconstruct
from adderconvert.conversion.swap import DEFAULT_INIT, INIT_CHOICES, SIGN_MARGIN, swap_layers

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_KEEP_CEILING",
    "DEPLOYMENT_SIZE",
    "DEFAULT_RECONSTRUCT",
    "CEILING_BASES",
    "GROUPED_BASES",
    "NORM_BATCH",
    "PLAN_IMAGES",
    "RECONSTRUCT_BYTES",
    "Conversion",
    "convert",
    "default_bases",
    "run_conversion",
    "takes_ceiling_bases",
]

# The first calibration images planning measures input ranges on (and the norms are fitted and the layers
# refitted on): a few hundred find each layer's range.
PLAN_IMAGES = 256
# BatchNorm statistics are re-estimated over all calibration images, in batches of this many.
NORM_BATCH = 128
DEFAULT_RECONSTRUCT = "signs"
# Kinds of conv the recipe keeps multiplicative (plan_conversion's ``keep``). A depthwise 3x3 channel has nine
# weights: their binary copy loses most of its function, and on MobileNetV3-Large trained to 92.5% the default
# epoch ended 2.5 pt short of its CNN with them converted (docs/results/recipes_cpu_converged.md). Squeeze-
# excitation convs act on pooled vectors: 0.7% of its MACs at 224 px. Networks without them are unaffected.
DEFAULT_KEEP = ("depthwise", "squeeze_excitation")
# At most this share of the conv MACs stays multiplicative (the stem and the kept kinds together), counted at
# DEPLOYMENT_SIZE px: on MobileNetV3-Small the stem and the kept kinds are 24% of the MACs at 224 px, and the
# kinds give way (the ones binary weights fit best per MAC are converted) until 85% are converted (on MNASNet-0.5 and
# the ConvNeXts too), and a stem that alone passes it is converted (ShuffleNet-V2 x0.5, SqueezeNet 1.0); on the other
# families in docs/results/recipes_cpu_converged.md everything kept is 6-15% and the ceiling changes nothing.
DEFAULT_KEEP_CEILING = 0.15
# The input size the MAC shares are counted at: ImageNet's, which torchvision's models are built for.
DEPLOYMENT_SIZE = 224
# Reconstruction keeps the CNN's output and input of every converted layer, and the adder model's, for each
# image it fits on: it fits on as many of the planning images as that takes within this many bytes (at least
# RECONSTRUCT_MIN_IMAGES; a fit reads at most reconstruction.MAX_SAMPLES positions per layer anyway).
RECONSTRUCT_BYTES = 2 * 2**30
RECONSTRUCT_MIN_IMAGES = 8
# Binary bases per adder layer (AdderConv2d's ``bases``) of a network with grouped convs, depthwise ones included;
# other networks get one. A second base doubles the additions of every inference. On 8-epoch teachers one base holds
# ResNet-18 within 1 pt of its CNN after one epoch, but the grouped families end 0.9-1.3 pt short (MobileNetV3-Small
# still 1.09 after two epochs); with two bases MobileNetV3-Large, RegNet-Y-400MF, EfficientNet-B0 and MobileNetV2 end
# one epoch 0.32-0.82 pt short (docs/results/recipes_cpu_converged.md).
GROUPED_BASES = 2
# Bases of a network whose plan converts what the recipe keeps multiplicative where the keep ceiling lets it: a
# depthwise conv, or a stem that alone passes the ceiling. Those are the small mobile networks measured
# (MobileNetV3-Small, MNASNet-0.5, ShuffleNet-V2 x0.5), whose binary pointwise convs fit worst, SqueezeNet 1.0 and the
# ConvNeXts. On 8-epoch teachers two bases ended the three mobile ones one epoch 1.4-1.7 pt short of their CNNs, three
# 0.5-1.5; four keep 99% at zero steps and end 0.50-0.84 short on all nine runs (three seeds each), and SqueezeNet
# 1.0, held out, 0.91-0.92 (docs/results/recipes_cpu_converged.md): for twice the additions of two.
CEILING_BASES = 4


def takes_ceiling_bases(report: ConversionReport) -> bool:
    """Whether the plan ``report`` converts a depthwise conv or a stem past the keep ceiling: what gives a model
    :data:`CEILING_BASES` by default."""
    return any(decision.depthwise or decision.stem_over_ceiling for decision in report.converted)


def default_bases(model: nn.Module, report: ConversionReport | None = None) -> int:
    """The binary bases per adder layer the recipe gives ``model``: :data:`CEILING_BASES` where its plan
    (``report``) converts a depthwise conv or a stem past the keep ceiling (:func:`takes_ceiling_bases`), else
    :data:`GROUPED_BASES` where it has a conv of more than one group (depthwise ones included), else 1."""
    if report is not None and takes_ceiling_bases(report):
        return CEILING_BASES
    grouped = any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    return GROUPED_BASES if grouped else 1


@dataclass
class Conversion:
    """What :func:`run_conversion` made: the adder ``model``, the ``report`` of the plan it followed (saved with
    checkpoints; :func:`~adderconvert.conversion.restore` rebuilds the structure from it) and the
    ``reconstruction``'s per-layer fits (None when it did not run)."""

    model: nn.Module
    report: ConversionReport
    reconstruction: ReconstructionResult | None


def _reconstruction_images(report: ConversionReport, images: torch.Tensor) -> torch.Tensor:
    """The first ``images`` whose layer activations fit in :data:`RECONSTRUCT_BYTES`."""
    outputs = sum(d.macs // max(1, d.in_channels // d.groups * math.prod(d.kernel_size)) for d in report.converted)
    per_image = 3 * 4 * max(outputs, 1)  # three float32 tensors per layer output
    return images[: max(RECONSTRUCT_MIN_IMAGES, min(len(images), RECONSTRUCT_BYTES // per_image))]


def run_conversion(
    model: nn.Module,
    calibration: Calibration | None,
    *,
    init: str = DEFAULT_INIT,
    reconstruct_method: str | None = DEFAULT_RECONSTRUCT,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    keep_stem: bool = True,
    keep_classifier: bool = True,
    keep: Sequence[str] = DEFAULT_KEEP,
    keep_ceiling: float = DEFAULT_KEEP_CEILING,
    mac_size: int | None = DEPLOYMENT_SIZE,
    keep_mac_budget: float = 0.0,
    sign_margin: float = SIGN_MARGIN,
    inside: bool = False,
    bases: int | None = None,
    max_images: int = CALIBRATION_IMAGES,
    log: Callable[[str], None] | None = None,
) -> Conversion:
    """The adder model of the trained CNN ``model``, made by the whole default recipe (the module's docstring),
    with the plan's report and the reconstruction's fits (:class:`Conversion`); ``model`` itself is left as it was.

    ``calibration`` is training data, normalised as in training: a tensor of images (N, C, H, W), an iterable of
    batches (a ``DataLoader``; batches or ``(images, labels)`` pairs are read until ``max_images`` images) or a
    callable ``forward_loop(model)`` that runs the model on data (its inputs are recorded). About 1,024 images
    (``max_images``, the default) are enough. ``None`` is refused with the default init: without data the adder
    weights cannot be placed (``init="fresh"`` with ``None`` gives an adder model to train from scratch).

    ``init`` (:data:`~adderconvert.conversion.INIT_CHOICES`; other inits than ``sign`` skip reconstruction),
    ``reconstruct_method`` (``"signs"``, ``"affine"`` or None), the rules ``include``/``exclude`` (wildcards on
    conv names), ``keep_stem``, ``keep_classifier``, ``keep`` (kinds of conv kept multiplicative:
    :data:`DEFAULT_KEEP` by default, ``()`` converts them too), ``keep_ceiling`` and ``mac_size`` (at most
    :data:`DEFAULT_KEEP_CEILING` of the conv MACs at :data:`DEPLOYMENT_SIZE` px kept) and ``keep_mac_budget`` (see
    :func:`~adderconvert.conversion.plan_conversion`), ``sign_margin`` (see
    :func:`~adderconvert.conversion.sign_edges`) and ``inside`` (see
    :func:`~adderconvert.conversion.reconstruct`) choose the steps; ``bases`` (1 or more) gives every adder layer
    that many binary bases (:class:`~adderconvert.nn.AdderConv2d`), the extra ones fitted by the reconstruction to
    what the first leaves (2: twice the additions, for a closer fit); None, the default, is
    :func:`default_bases`: 4 where the plan converts a depthwise conv or a stem past the keep ceiling, 2 for a
    network with grouped or depthwise convs, else 1 (the main job gives segmentation and detection models 2
    whatever their convs, detectors with depthwise convs 4: on the built-in scenes LR-ASPP keeps 92% of its CNN's
    mIoU at zero steps instead of 77%, docs/results/dense_cpu.md; docs/usage.md "Bases"). ``log`` receives a line
    per step (the plan's table, the reconstruction's summary).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (the trained CNN), got {type(model).__name__}")
    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES}, got {init!r}")
    if bases is not None and (isinstance(bases, bool) or not isinstance(bases, int) or bases < 1):
        raise ValueError(f"bases must be None or a positive integer, got {bases!r}")
    if reconstruct_method not in (None, *RECONSTRUCT_METHODS):
        raise ValueError(f"reconstruct_method must be None or one of {RECONSTRUCT_METHODS}, got {reconstruct_method!r}")
    if calibration is None and init == "sign":
        raise ValueError(
            "convert needs calibration data for the default (sign) init: pass about 1,024 training images, "
            "normalised as in training (a tensor N x C x H x W), a DataLoader of training batches, or a callable "
            "forward_loop(model). Without data the result would be a random adder model; for one to train from "
            "scratch pass init='fresh' explicitly."
        )
    say = log or (lambda message: None)
    data = calibration_images(model, calibration, max_images) if calibration is not None else None
    planning = data[:PLAN_IMAGES] if data is not None else None
    rules = dict(include=include, exclude=exclude, keep_stem=keep_stem, keep_classifier=keep_classifier)
    report = plan_conversion(
        model,
        planning,
        **rules,
        keep=keep,
        keep_ceiling=keep_ceiling,
        mac_size=mac_size,
        keep_mac_budget=keep_mac_budget,
    )
    if not report.converted:
        raise ValueError(
            f"nothing to convert: no Conv2d of {type(model).__name__} becomes an adder layer under these rules "
            "(include, exclude, keep_stem, keep_classifier, keep, keep_mac_budget); see plan_conversion(...).table()"
        )
    bases = default_bases(model, report) if bases is None else bases
    for decision in report.converted:
        decision.bases = bases
    say(report.table())
    adder = swap_layers(copy.deepcopy(model), None, init=init, report=report, sign_margin=sign_margin)
    if data is None:
        return Conversion(adder, report, None)
    fit_norm_statistics(adder, report, planning, init)
    # Batches of (nearly) equal size: never a last batch of one image, which BatchNorm cannot train on.
    batches = [(batch, None) for batch in data.tensor_split(math.ceil(len(data) / NORM_BATCH))]
    reestimate_batchnorm(adder, batches, len(batches), data.device)
    if init != "sign" or reconstruct_method is None:
        return Conversion(adder, report, None)
    fit_images = _reconstruction_images(report, planning)
    fitted = reconstruct(model, adder, report, fit_images, reconstruct_method, inside=inside)
    changed = sum(layer.kept != "none" for layer in fitted.layers)
    say(
        f"reconstruction ({reconstruct_method}): {changed} of {len(fitted.layers)} adder layers refitted to the "
        f"CNN's outputs on {len(fit_images)} calibration images in {fitted.seconds:.0f}s"
    )
    return Conversion(adder, report, fitted)


def convert(model: nn.Module, calibration: Calibration | None, **options) -> nn.Module:
    """The adder model of the trained CNN ``model``, made by the whole default recipe (the module's docstring);
    ``model`` itself is left as it was.

    ``calibration`` is training data, normalised as in training: a tensor of images (N, C, H, W), an iterable of
    batches (a ``DataLoader``) or a callable ``forward_loop(model)``; about 1,024 images are enough. ``options``
    choose the steps (``init``, ``reconstruct_method``, ``include``, ``exclude``, ``keep_stem``,
    ``keep_classifier``, ``keep``, ``keep_ceiling``, ``mac_size``, ``keep_mac_budget``, ``sign_margin``,
    ``inside``, ``bases``, ``max_images``, ``log``): see :func:`run_conversion`, which also returns the plan's report.
    """
    return run_conversion(model, calibration, **options).model
