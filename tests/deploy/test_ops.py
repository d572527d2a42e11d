"""The com.adderconvert ONNX ops: the NumPy reference by hand, the onnx.reference ops, schemas and shape inference."""

import numpy as np
import onnx
import pytest

from adderconvert.deploy.ops import AdderConv, FusedAdderConv, adder_conv_reference, register_schemas, single_node_model
from adderconvert.nn.geometry import output_size

RNG = np.random.default_rng(0)


def test_numpy_reference_hand_checked():
    # -(|1-0| + |2-3| + |0-(-1)| + |(-1)-2|) = -6, and with padding 1 a 1x1 input of 1 against a 3x3 kernel
    # of ones: centre |1-1| = 0 plus eight padded taps |0-1| = 1.
    x = np.array([[[[1.0, 2.0], [0.0, -1.0]]]])
    w = np.array([[[[0.0, 3.0], [-1.0, 2.0]]]])
    assert adder_conv_reference(x, w)[0, 0, 0, 0] == -6.0
    assert adder_conv_reference(np.ones((1, 1, 1, 1)), np.ones((1, 1, 3, 3)), pads=(1, 1, 1, 1)).item() == -8.0
    # Groups and stride: output channel 1 reads input channel 1 only, every second column.
    x = np.arange(2 * 4, dtype=float).reshape(1, 2, 1, 4)
    w = np.zeros((2, 1, 1, 1))
    np.testing.assert_array_equal(adder_conv_reference(x, w, strides=(1, 2), group=2)[0, 1, 0], [-4.0, -6.0])


def test_numpy_reference_infinities_by_hand():
    w = np.array([[[[1.0, -2.0]]]])
    cases = {(-np.inf, 0.0): -np.inf, (np.inf, 0.0): -np.inf, (np.nan, 0.0): np.nan, (0.0, 5.0): -8.0}
    for (a, b), expected in cases.items():
        got = adder_conv_reference(np.array([[[[a, b]]]]), w).item()
        assert got == expected or (np.isnan(expected) and np.isnan(got))
    # The same infinity in x and w: |inf - inf| is NaN.
    assert np.isnan(adder_conv_reference(np.array([[[[np.inf]]]]), np.array([[[[np.inf]]]])).item())


@pytest.mark.parametrize("form", ["plain", "bias", "fused", "fused_relu"])
def test_onnx_reference_ops_apply_bias_and_epilogue(form):
    x = RNG.normal(size=(2, 3, 6, 5)).astype(np.float32)
    w = RNG.normal(size=(4, 3, 3, 2))
    bias, scale, shift = RNG.normal(size=4), RNG.uniform(0.1, 1, 4), RNG.normal(size=4) * 5
    attrs = dict(strides=[2, 1], pads=[1, 0, 1, 1], dilations=[1, 2])
    y = adder_conv_reference(x, w.astype(np.float32), (2, 1), (1, 0, 1, 1), (1, 2))
    extra = {}
    if form == "bias":
        extra, y = dict(bias=bias), y + bias.astype(np.float32)[None, :, None, None]
    elif form.startswith("fused"):
        extra = dict(scale=scale, shift=shift, relu=int(form == "fused_relu"))
        y = y * scale.astype(np.float32)[None, :, None, None] + shift.astype(np.float32)[None, :, None, None]
        y = np.maximum(y, 0) if form == "fused_relu" else y
    model = single_node_model(x.shape, w, **extra, **attrs)
    got = onnx.reference.ReferenceEvaluator(model, new_ops=[AdderConv, FusedAdderConv]).run(None, {"X": x})[0]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, y, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "attrs",
    [{}, dict(strides=[2, 3], pads=[1, 0, 2, 1], dilations=[1, 2], group=2), dict(pads=[0, 0, 0, 0], strides=[1, 1])],
)
def test_shape_inference_uses_the_output_size_formula(attrs):
    register_schemas()
    x_shape, w = ("N", 4, 13, 11), RNG.normal(size=(6, 4 // attrs.get("group", 1), 3, 3))
    model = onnx.shape_inference.infer_shapes(single_node_model(x_shape, w, **attrs), strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    expected = output_size(
        (13, 11), (3, 3), attrs.get("strides", [1, 1]), attrs.get("pads", [0] * 4), attrs.get("dilations", [1, 1])
    )
    assert dims[0].dim_param == "N" and dims[1].dim_value == 6
    assert (dims[2].dim_value, dims[3].dim_value) == expected
    y = onnx.reference.ReferenceEvaluator(model, new_ops=[AdderConv]).run(
        None, {"X": RNG.normal(size=(2, 4, 13, 11)).astype(np.float32)}
    )[0]
    assert y.shape == (2, 6, *expected)


def test_register_schemas_twice():
    register_schemas()
    register_schemas()
    assert onnx.defs.has("AdderConv", "com.adderconvert") and onnx.defs.has("FusedAdderConv", "com.adderconvert")
