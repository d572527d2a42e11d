"""Conversion of a trained CNN into an adder model: :func:`convert` is the one call; its steps, in order, are
public here too.

* :func:`plan_conversion` (``plan.py``): which convs become adder layers, measured on calibration images;
* :func:`swap_layers` (``swap.py``): the layer swap with an init (:func:`restore` uses it alone);
* :func:`fit_norm_statistics` and :func:`reestimate_batchnorm` (``norms.py``): BatchNorm statistics;
* :func:`reconstruct` (``reconstruction.py``): each adder layer refitted to the CNN's output.

``calibration.py`` turns what :func:`convert` accepts (images, a DataLoader, a forward loop) into images;
:class:`RangeObserver` (``observers.py``) measures the value ranges that planning, INT8 calibration and the
saturation diagnostics read.
"""

from adderconvert.conversion.calibration import CALIBRATION_IMAGES, Calibration, calibration_images
from adderconvert.conversion.norms import fit_norm_statistics, reestimate_batchnorm
from adderconvert.conversion.observers import RangeObserver
from adderconvert.conversion.plan import (
    DEFAULT_INPUT_SIZES,
    KEEP_KINDS,
    ConversionReport,
    LayerDecision,
    norms_after_adders,
    plan_conversion,
    prediction_convs,
    run_hooked,
)
from adderconvert.conversion.recipe import (
    CEILING_BASES,
    DEFAULT_KEEP,
    DEFAULT_KEEP_CEILING,
    DEFAULT_RECONSTRUCT,
    DEPLOYMENT_SIZE,
    GROUPED_BASES,
    PLAN_IMAGES,
    Conversion,
    convert,
    default_bases,
    run_conversion,
    takes_ceiling_bases,
)
from adderconvert.conversion.reconstruction import RECONSTRUCT_METHODS, ReconstructionResult, reconstruct
from adderconvert.conversion.swap import (
    DEFAULT_INIT,
    INIT_CHOICES,
    SIGN_MARGIN,
    SIGN_MIN_GAP,
    restore,
    sign_edges,
    swap_layers,
)

__all__ = [
    "CALIBRATION_IMAGES",
    "DEFAULT_INIT",
    "DEFAULT_INPUT_SIZES",
    "DEFAULT_KEEP",
    "DEFAULT_KEEP_CEILING",
    "DEFAULT_RECONSTRUCT",
    "CEILING_BASES",
    "DEPLOYMENT_SIZE",
    "GROUPED_BASES",
    "INIT_CHOICES",
    "KEEP_KINDS",
    "PLAN_IMAGES",
    "RECONSTRUCT_METHODS",
    "SIGN_MARGIN",
    "SIGN_MIN_GAP",
    "Calibration",
    "Conversion",
    "ConversionReport",
    "LayerDecision",
    "RangeObserver",
    "ReconstructionResult",
    "calibration_images",
    "convert",
    "default_bases",
    "fit_norm_statistics",
    "norms_after_adders",
    "plan_conversion",
    "prediction_convs",
    "reconstruct",
    "reestimate_batchnorm",
    "restore",
    "run_conversion",
    "run_hooked",
    "sign_edges",
    "swap_layers",
    "takes_ceiling_bases",
]
