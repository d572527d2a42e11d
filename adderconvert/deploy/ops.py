"""The ``com.adderconvert`` ONNX ops: schemas and a NumPy reference (an ``onnx.reference`` OpRun).

``AdderConv(X, W, B?)`` (version 1), float32, attributes named as ONNX ``Conv``'s::

    Y[n, m, h, w] = -sum_{c, i, j} |Xpad[n, g*Cg + c, h*s0 + i*d0, w*s1 + j*d1] - W[m, c, i, j]| + B[m]

with zero padding (``pads`` = [top, left, bottom, right]; a padded tap contributes -|W|), ``group`` g
splitting channels as in ``Conv``. ``FusedAdderConv(X, W, scale, shift)`` is the inference form with a
folded BatchNorm and optional ReLU applied in FP32 in the kernel's epilogue::

    Y = relu?(scale[m] * AdderConv(X, W)[n, m, h, w] + shift[m])

The C++ and CUDA kernels in ``custom_ops/`` implement exactly this (see ``custom_ops/adder_conv.h``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.defs import OpSchema
from onnx.reference.op_run import OpRun

from adderconvert.nn.geometry import output_length

__all__ = [
    "DOMAIN",
    "OPSET_VERSION",
    "AdderConv",
    "FusedAdderConv",
    "adder_conv_reference",
    "register_schemas",
    "single_node_model",
]

DOMAIN = "com.adderconvert"
OPSET_VERSION = 1

_ATTRIBUTES = [
    OpSchema.Attribute("strides", helper.make_attribute("strides", [1, 1]), "Stride along each spatial axis"),
    OpSchema.Attribute("pads", helper.make_attribute("pads", [0, 0, 0, 0]), "Zero padding [top, left, bottom, right]"),
    OpSchema.Attribute("dilations", helper.make_attribute("dilations", [1, 1]), "Dilation along each spatial axis"),
    OpSchema.Attribute("group", helper.make_attribute("group", 1), "Number of channel groups"),
]
_T = [("T", ["tensor(float)"], "float32 tensors; accumulation is float32")]


def _param(name: str, doc: str, optional: bool = False) -> OpSchema.FormalParameter:
    option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name, "T", doc, param_option=option)


def _infer_shape(ctx) -> None:
    """Y's element type always; its shape when X and W have known static shapes."""
    x_type, w_type = ctx.get_input_type(0), ctx.get_input_type(1)
    out = onnx.TypeProto()
    out.tensor_type.elem_type = TensorProto.FLOAT
    x_dims = x_type.tensor_type.shape.dim if x_type is not None else []
    w_dims = w_type.tensor_type.shape.dim if w_type is not None else []
    if len(x_dims) == 4 and len(w_dims) == 4:
        attrs = {name: ctx.get_attribute(name) for name in ("strides", "pads", "dilations")}
        strides = list(attrs["strides"].ints) if attrs["strides"] else [1, 1]
        pads = list(attrs["pads"].ints) if attrs["pads"] else [0, 0, 0, 0]
        dilations = list(attrs["dilations"].ints) if attrs["dilations"] else [1, 1]
        shape = out.tensor_type.shape
        shape.dim.add().CopyFrom(x_dims[0])
        shape.dim.add().CopyFrom(w_dims[0])
        for axis in range(2):
            dim = shape.dim.add()
            x, k = x_dims[2 + axis], w_dims[2 + axis]
            if x.HasField("dim_value") and k.HasField("dim_value"):
                dim.dim_value = output_length(
                    x.dim_value, k.dim_value, strides[axis], pads[axis], pads[axis + 2], dilations[axis]
                )
    ctx.set_output_type(0, out)


def _schema(name: str, doc: str, inputs: list[OpSchema.FormalParameter], extra_attrs=()) -> OpSchema:
    schema = OpSchema(
        name,
        DOMAIN,
        OPSET_VERSION,
        doc,
        inputs=inputs,
        outputs=[_param("Y", "Output (N, M, H_out, W_out)")],
        type_constraints=_T,
        attributes=[*_ATTRIBUTES, *extra_attrs],
    )
    schema.set_type_and_shape_inference_function(_infer_shape)
    return schema


ADDER_CONV_SCHEMA = _schema(
    "AdderConv",
    "Adder convolution: Y = -sum |X - W| (+ B) with zero padding.",
    [
        _param("X", "Input (N, C, H, W)"),
        _param("W", "Weights (M, C/group, kH, kW)"),
        _param("B", "Optional bias (M)", optional=True),
    ],
)
FUSED_ADDER_CONV_SCHEMA = _schema(
    "FusedAdderConv",
    "Adder convolution with a per-channel affine epilogue (folded BatchNorm) and optional ReLU.",
    [
        _param("X", "Input (N, C, H, W)"),
        _param("W", "Weights (M, C/group, kH, kW)"),
        _param("scale", "Per-channel scale (M)"),
        _param("shift", "Per-channel shift (M)"),
    ],
    [OpSchema.Attribute("relu", helper.make_attribute("relu", 0), "Apply ReLU after the affine epilogue")],
)


def register_schemas() -> None:
    """Make onnx (checker, shape inference) aware of the ops; safe to call more than once."""
    for schema in (ADDER_CONV_SCHEMA, FUSED_ADDER_CONV_SCHEMA):
        if not onnx.defs.has(schema.name, DOMAIN):
            onnx.defs.register_schema(schema)


def single_node_model(x_shape, w, *, bias=None, scale=None, shift=None, relu=0, **attrs) -> onnx.ModelProto:
    """A model of one node, ``AdderConv`` (or ``FusedAdderConv`` when ``scale``/``shift`` are given), on input
    ``X`` of ``x_shape`` (names allowed for dynamic axes) with ``W`` and the other inputs as initializers.

    IR version 10 keeps it loadable by ONNX Runtime 1.31 (onnx 1.23 writes 14 by default).
    """
    inits = [numpy_helper.from_array(np.asarray(w, np.float32), "W")]
    inputs = ["X", "W"]
    if scale is not None:
        op = "FusedAdderConv"
        inits += [
            numpy_helper.from_array(np.asarray(scale, np.float32), "scale"),
            numpy_helper.from_array(np.asarray(shift, np.float32), "shift"),
        ]
        inputs += ["scale", "shift"]
        attrs["relu"] = relu
    else:
        op = "AdderConv"
        if bias is not None:
            inits.append(numpy_helper.from_array(np.asarray(bias, np.float32), "B"))
            inputs.append("B")
    node = helper.make_node(op, inputs, ["Y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [node],
        op,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, OPSET_VERSION)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def adder_conv_reference(
    x: np.ndarray,
    w: np.ndarray,
    strides=(1, 1),
    pads=(0, 0, 0, 0),
    dilations=(1, 1),
    group: int = 1,
) -> np.ndarray:
    """``-sum |Xpad - W|`` computed with NumPy in float64, one output channel at a time.

    Infinities follow from ``|x - w|``: an infinite x or w gives ``-inf``, unless x and w are the same
    infinity (``inf - inf``: NaN); NaN stays NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    m, cg, kh, kw = w.shape
    span = (dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1)
    windows = np.lib.stride_tricks.sliding_window_view(xp, span, axis=(2, 3))
    windows = windows[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]  # N, C, Ho, Wo, kh, kw
    mg = m // group
    y = np.empty((x.shape[0], m, windows.shape[2], windows.shape[3]))
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, as intended
        for o in range(m):
            g = o // mg
            patch = windows[:, g * cg : (g + 1) * cg]
            y[:, o] = -np.abs(patch - w[o][None, :, None, None]).sum(axis=(1, 4, 5))
    return y


def _attrs(strides, pads, dilations, group):
    return (
        tuple(strides) if strides is not None else (1, 1),
        tuple(pads) if pads is not None else (0, 0, 0, 0),
        tuple(dilations) if dilations is not None else (1, 1),
        int(group) if group is not None else 1,
    )


class AdderConv(OpRun):
    """``onnx.reference`` implementation of ``com.adderconvert::AdderConv``."""

    op_domain = DOMAIN

    def _run(self, X, W, B=None, strides=None, pads=None, dilations=None, group=None):
        y = adder_conv_reference(X, W, *_attrs(strides, pads, dilations, group))
        if B is not None:
            y = y + np.asarray(B, dtype=np.float64)[None, :, None, None]
        return (y.astype(X.dtype),)


class FusedAdderConv(OpRun):
    """``onnx.reference`` implementation of ``com.adderconvert::FusedAdderConv``."""

    op_domain = DOMAIN

    def _run(self, X, W, scale, shift, strides=None, pads=None, dilations=None, group=None, relu=None):
        y = adder_conv_reference(X, W, *_attrs(strides, pads, dilations, group))
        y = y * np.asarray(scale, np.float64)[None, :, None, None] + np.asarray(shift, np.float64)[None, :, None, None]
        if relu:
            y = np.maximum(y, 0.0)
        return (y.astype(X.dtype),)
