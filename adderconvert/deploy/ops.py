"""The ``com.adderconvert`` ONNX ops: schemas and a NumPy reference (an ``onnx.reference`` OpRun).

``AdderConv(X, W, B?)`` (version 1), float32, attributes named as ONNX ``Conv``'s::

    Y[n, m, h, w] = -sum_{c, i, j} |Xpad[n, g*Cg + c, h*s0 + i*d0, w*s1 + j*d1] - W[m, c, i, j]| + B[m]

with zero padding (``pads`` = [top, left, bottom, right]; a padded tap contributes -|W|), ``group`` g
splitting channels as in ``Conv``. ``FusedAdderConv(X, W, scale, shift)`` is the inference form with a
folded BatchNorm and optional ReLU applied in FP32 in the kernel's epilogue::

    Y = relu?(scale[m] * AdderConv(X, W)[n, m, h, w] + shift[m])

The C++ and CUDA kernels in ``custom_ops/`` implement exactly this (see ``custom_ops/adder_conv.h``).

``QuantizedAdderConv(X, W, alpha, beta)`` (version 1) is the INT8 adder layer: float32 X, uint8 W on the
grid of the attributes ``x_scale`` (float > 0) and ``x_zero_point`` (0..255), float32 ``alpha``, ``beta`` (M)::

    qx = clamp(round_half_even(X * float32(1 / x_scale)) + x_zero_point, 0, 255)   (NaN -> x_zero_point)
    S  = sum over the taps of |qx - W|    (exact integers; a padded tap reads x_zero_point)
    Y  = relu?(alpha[m] * S + beta[m])

The CPU kernel is ``custom_ops/cpu/quantized_adder_conv_cpu.cc`` (``custom_ops/quantized_adder_conv.h``).
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
    "QuantizedAdderConv",
    "adder_conv_reference",
    "quantized_adder_conv_reference",
    "quantized_node_model",
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


def _schema(
    name: str, doc: str, inputs: list[OpSchema.FormalParameter], extra_attrs=(), type_constraints=_T
) -> OpSchema:
    schema = OpSchema(
        name,
        DOMAIN,
        OPSET_VERSION,
        doc,
        inputs=inputs,
        outputs=[_param("Y", "Output (N, M, H_out, W_out)")],
        type_constraints=type_constraints,
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
QUANTIZED_ADDER_CONV_SCHEMA = _schema(
    "QuantizedAdderConv",
    "INT8 adder convolution: S = sum |quantize(X) - W| on one uint8 grid, Y = alpha * S + beta, optional ReLU.",
    [
        _param("X", "Input (N, C, H, W), float32, quantised in the kernel"),
        OpSchema.FormalParameter("W", "TW", "Weights (M, C/group, kH, kW) on the grid, uint8"),
        _param("alpha", "Per-channel factor of S (M)"),
        _param("beta", "Per-channel offset (M)"),
    ],
    [
        OpSchema.Attribute("x_scale", OpSchema.AttrType.FLOAT, "The grid's step (> 0)", required=True),
        OpSchema.Attribute("x_zero_point", helper.make_attribute("x_zero_point", 0), "Integer of 0 (0..255)"),
        OpSchema.Attribute("relu", helper.make_attribute("relu", 0), "Apply ReLU after the epilogue"),
    ],
    type_constraints=[*_T, ("TW", ["tensor(uint8)"], "uint8 weights on the layer's grid")],
)
SCHEMAS = (ADDER_CONV_SCHEMA, FUSED_ADDER_CONV_SCHEMA, QUANTIZED_ADDER_CONV_SCHEMA)


def register_schemas() -> None:
    """Make onnx (checker, shape inference) aware of the ops; safe to call more than once."""
    for schema in SCHEMAS:
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


def quantized_node_model(
    x_shape, w, alpha, beta, *, x_scale: float, x_zero_point: int = 0, relu: int = 0, **attrs
) -> onnx.ModelProto:
    """A model of one ``QuantizedAdderConv`` node on input ``X`` of ``x_shape`` with uint8 ``W``, ``alpha`` and
    ``beta`` as initializers (IR version 10, as :func:`single_node_model`)."""
    inits = [
        numpy_helper.from_array(np.asarray(w, np.uint8), "W"),
        numpy_helper.from_array(np.asarray(alpha, np.float32), "alpha"),
        numpy_helper.from_array(np.asarray(beta, np.float32), "beta"),
    ]
    node = helper.make_node(
        "QuantizedAdderConv",
        ["X", "W", "alpha", "beta"],
        ["Y"],
        domain=DOMAIN,
        x_scale=float(x_scale),
        x_zero_point=int(x_zero_point),
        relu=int(relu),
        **attrs,
    )
    graph = helper.make_graph(
        [node],
        "QuantizedAdderConv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None] * 4)],
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


def _check_quantized(X, W, alpha, beta, x_scale, x_zero_point, relu, group) -> None:
    if x_scale is None:
        raise ValueError("QuantizedAdderConv: attribute 'x_scale' (float) is required")
    with np.errstate(over="ignore", divide="ignore"):
        inv = np.float32(1.0) / np.float32(x_scale)
    if not (np.float32(x_scale) > 0 and np.isfinite(np.float32(x_scale)) and np.isfinite(inv)):
        raise ValueError(
            f"QuantizedAdderConv: x_scale must be positive and finite with 1/x_scale finite, got {x_scale}"
        )
    if not 0 <= int(x_zero_point) <= 255:
        raise ValueError(f"QuantizedAdderConv: x_zero_point must be in 0..255, got {x_zero_point}")
    if int(relu) not in (0, 1):
        raise ValueError(f"QuantizedAdderConv: attribute 'relu' must be 0 or 1, got {relu}")
    if W.dtype != np.uint8 or W.ndim != 4:
        raise ValueError(f"QuantizedAdderConv: W must be a 4-D uint8 tensor, got {W.dtype} {list(W.shape)}")
    for name, t in (("alpha", alpha), ("beta", beta)):
        if np.shape(t) != (W.shape[0],):
            raise ValueError(f"QuantizedAdderConv: {name} must have shape ({W.shape[0]},), got {list(np.shape(t))}")
    if X.ndim != 4:
        raise ValueError(f"QuantizedAdderConv: X must be 4-D (N, C, H, W), got {list(X.shape)}")
    if group < 1 or W.shape[0] % group or X.shape[1] != W.shape[1] * group:
        raise ValueError(
            f"QuantizedAdderConv: X has {X.shape[1]} channels and W {list(W.shape)} with group={group}: "
            "C must be W.shape[1] * group and M divisible by group"
        )


def quantized_adder_conv_reference(
    x: np.ndarray,
    w: np.ndarray,
    x_scale: float,
    x_zero_point: int = 0,
    strides=(1, 1),
    pads=(0, 0, 0, 0),
    dilations=(1, 1),
    group: int = 1,
) -> np.ndarray:
    """``S = sum |qx - W|`` (float64 holding exact integers) of the op's contract, by NumPy."""
    inv = np.float32(1.0) / np.float32(x_scale)
    with np.errstate(over="ignore", invalid="ignore"):
        v = np.rint((np.asarray(x, np.float32) * inv).astype(np.float64))
    qx = np.clip(np.where(np.isnan(v), 0.0, v) + x_zero_point, 0, 255)
    # Shifted by the zero point, the zero padding of adder_conv_reference is the quantised 0.
    return -adder_conv_reference(
        qx - x_zero_point, np.asarray(w, np.float64) - x_zero_point, strides, pads, dilations, group
    )


class QuantizedAdderConv(OpRun):
    """``onnx.reference`` implementation of ``com.adderconvert::QuantizedAdderConv``."""

    op_domain = DOMAIN

    def _run(
        self,
        X,
        W,
        alpha,
        beta,
        strides=None,
        pads=None,
        dilations=None,
        group=None,
        x_scale=None,
        x_zero_point=None,
        relu=None,
    ):
        x_zero_point = 0 if x_zero_point is None else int(x_zero_point)
        relu = 0 if relu is None else int(relu)
        attrs = _attrs(strides, pads, dilations, group)
        _check_quantized(X, W, alpha, beta, x_scale, x_zero_point, relu, attrs[3])
        s = quantized_adder_conv_reference(X, W, x_scale, x_zero_point, *attrs)
        y = np.asarray(alpha, np.float64)[None, :, None, None] * s + np.asarray(beta, np.float64)[None, :, None, None]
        if relu:
            y = np.maximum(y, 0.0)
        return (y.astype(np.float32),)
