"""adderconvert: turn torchvision CNNs into AdderNets, fine-tune them and deploy them with ONNX Runtime.

Public API: :func:`convert` and :func:`plan_conversion` (model surgery), :class:`AdderConv2d` and
:func:`scale_adder_gradients_` (the layer and its adaptive learning rate), :func:`load` (rebuild a
checkpoint), :func:`quantize` (INT8 adder layers calibrated on batches), :func:`export_onnx` (ONNX with the
``com.adderconvert`` ops) and :mod:`adderconvert.deploy.runtime`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import version

__version__ = version("adderconvert")  # adderconvert_ort/_version.py owns it (both wheels read it)

from adderconvert.conversion import convert, plan_conversion  # noqa: E402
from adderconvert.nn import AdderConv2d, scale_adder_gradients_  # noqa: E402

# Heavier parts (onnx, onnxscript, torchvision) load on first use.
_LAZY = {
    "load": "adderconvert.checkpoint",
    "export_onnx": "adderconvert.deploy.export",
    "quantize": "adderconvert.quantization",
}

__all__ = [
    "AdderConv2d",
    "__version__",
    "convert",
    "export_onnx",
    "load",
    "plan_conversion",
    "quantize",
    "scale_adder_gradients_",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adderconvert' has no attribute {name!r}")
