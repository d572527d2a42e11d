"""QuantizedAdderConv in ONNX Runtime's CPU provider: bit-exact integer sums against a NumPy reference of the
op's contract (written here, independent of the kernel), the float epilogue, threads, W as a graph input,
and malformed nodes refused with a clear status."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from adderconvert.deploy import ops, runtime
from adderconvert.nn import _kernels

RNG = np.random.default_rng(17)
ERRORS = (
    ort.capi.onnxruntime_pybind11_state.Fail,
    ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ort.capi.onnxruntime_pybind11_state.RuntimeException,
    ort.capi.onnxruntime_pybind11_state.InvalidGraph,
)


def quantize(x: np.ndarray, x_scale: float, zero_point: int) -> np.ndarray:
    """qx = clamp(round_half_even(x * float32(1 / x_scale)) + zero_point, 0, 255); NaN -> zero_point."""
    inv = np.float32(1.0) / np.float32(x_scale)
    with np.errstate(over="ignore", invalid="ignore"):
        v = x.astype(np.float32) * inv
        r = np.rint(v.astype(np.float64))
    r = np.where(np.isnan(r), 0.0, r)
    return np.clip(r + zero_point, 0, 255).astype(np.int64)


def reference_sums(x, w, x_scale, zero_point, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """S[n, m, oh, ow] = sum |qx - W| with padded taps at the zero point, in int64."""
    q = quantize(x, x_scale, zero_point)
    q = np.pad(q, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=zero_point)
    n, c, hp, wp = q.shape
    m, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    oh = (hp - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wp - (dw * (kw - 1) + 1)) // sw + 1
    rows = m // group
    out = np.zeros((n, m, oh, ow), np.int64)
    for g in range(group):
        qg = q[:, g * cg : (g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = qg[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
                wg = w[g * rows : (g + 1) * rows, :, i, j].astype(np.int64)  # (rows, cg)
                out[:, g * rows : (g + 1) * rows] += np.abs(patch[:, None] - wg[None, :, :, None, None]).sum(axis=2)
    return out


def model(x_shape, w, alpha, beta, w_as_input=False, w_dtype=TensorProto.UINT8, **attrs) -> onnx.ModelProto:
    node = helper.make_node(
        "QuantizedAdderConv", ["X", "W", "alpha", "beta"], ["Y"], domain="com.adderconvert", **attrs
    )
    inits = [
        numpy_helper.from_array(np.asarray(alpha, np.float32), "alpha"),
        numpy_helper.from_array(np.asarray(beta, np.float32), "beta"),
    ]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))]
    if w_as_input:
        inputs.append(helper.make_tensor_value_info("W", w_dtype, list(w.shape)))
    else:
        inits.append(numpy_helper.from_array(w, "W"))
    graph = helper.make_graph(
        [node], "quantized", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.adderconvert", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def session(m: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(runtime.get_library_path())
    return ort.InferenceSession(m.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


# (x shape, w shape, strides, pads, dilations, group)
CASES = [
    ((1, 64, 9, 9), (64, 64, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((2, 72, 7, 10), (40, 72, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),  # K = 648, not a multiple of 64
    ((1, 128, 7, 7), (24, 128, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    ((1, 96, 5, 5), (33, 96, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((3, 40, 6, 6), (20, 40, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ((1, 3, 17, 17), (16, 3, 7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1),  # stem: 3 channels
    ((2, 32, 9, 9), (32, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 32),  # depthwise
    ((1, 1, 9, 9), (3, 1, 3, 3), (1, 1), (0, 2, 1, 0), (1, 1), 1),  # one channel, asymmetric pads
    ((1, 16, 10, 12), (17, 16, 3, 2), (1, 2), (2, 0, 1, 3), (2, 1), 1),  # dilation
    ((2, 48, 8, 8), (96, 12, 3, 3), (2, 1), (1, 0, 0, 1), (1, 1), 4),  # groups of 12 channels
    ((2, 6, 11, 8), (9, 2, 2, 3), (2, 1), (0, 2, 1, 0), (2, 1), 3),
    ((1, 8, 1, 1), (5, 8, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
]


def _case_inputs(case):
    x_shape, w_shape, strides, pads, dilations, group = case
    x = (RNG.normal(size=x_shape) * 2).astype(np.float32)
    w = RNG.integers(0, 256, size=w_shape, dtype=np.uint8)
    attrs = dict(strides=list(strides), pads=list(pads), dilations=list(dilations), group=group)
    return x, w, attrs


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"x{c[0]}-w{c[1]}-g{c[5]}")
def test_integer_sums_are_bit_exact(case):
    x, w, attrs = _case_inputs(case)
    x_scale, zero_point = float(RNG.uniform(0.005, 0.05)), int(RNG.integers(0, 256))
    m = w.shape[0]
    sess = session(model(x.shape, w, np.ones(m), np.zeros(m), x_scale=x_scale, x_zero_point=zero_point, **attrs))
    got = sess.run(None, {"X": x})[0]
    expected = reference_sums(x, w, x_scale, zero_point, **attrs)
    assert expected.max() < 2**24
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    # The op's schema (adderconvert.deploy.ops) infers the shape the kernel gives.
    ops.register_schemas()
    m_model = model(x.shape, w, np.ones(m), np.zeros(m), x_scale=x_scale, x_zero_point=zero_point, **attrs)
    inferred = onnx.shape_inference.infer_shapes(m_model, strict_mode=True).graph.output[0].type.tensor_type.shape
    assert tuple(d.dim_value for d in inferred.dim) == got.shape


@pytest.mark.parametrize("relu", [0, 1])
def test_epilogue_alpha_s_plus_beta(relu):
    x, w, attrs = _case_inputs(CASES[1])
    m = w.shape[0]
    alpha = RNG.uniform(-0.01, 0.01, m).astype(np.float32)
    beta = RNG.normal(size=m).astype(np.float32) * 20
    sess = session(model(x.shape, w, alpha, beta, x_scale=0.02, x_zero_point=100, relu=relu, **attrs))
    got = sess.run(None, {"X": x})[0]
    s = reference_sums(x, w, 0.02, 100, **attrs)
    expected = alpha[None, :, None, None].astype(np.float64) * s + beta[None, :, None, None]
    if relu:
        expected = np.maximum(expected, 0)
        assert (got >= 0).all() and (got == 0).any()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("zero_point", [0, 1, 128, 255])
def test_rounding_and_clamping_edges(zero_point):
    # x * (1 / 0.5) lands on halves (round to even), on huge values and infinities (clamped), and NaN
    # (the zero point). W = 0 and a 1x1 kernel: S is qx itself.
    values = [0.0, -0.0, 0.25, 0.75, 1.25, -0.25, -0.75, -1.25, 63.75, 64.25, -64.25, 127.25, 127.75, -127.25]
    values += [1e30, -1e30, np.inf, -np.inf, np.nan, 1e-40, 3.0, -3.0]
    x = np.array(values, np.float32).reshape(1, 1, 1, -1)
    w = np.zeros((1, 1, 1, 1), np.uint8)
    got = session(model(x.shape, w, [1.0], [0.0], x_scale=0.5, x_zero_point=zero_point)).run(None, {"X": x})[0]
    expected = quantize(x, 0.5, zero_point)
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    # Spot values written out: 0.25 -> 0.5 -> 0, 0.75 -> 1.5 -> 2, 1.25 -> 2.5 -> 2 (halves to even).
    assert list(expected[0, 0, 0, 2:5] - zero_point) == [
        min(0, 255 - zero_point),
        min(2, 255 - zero_point),
        min(2, 255 - zero_point),
    ]
    assert expected[0, 0, 0, values.index(np.inf)] == 255 and expected[0, 0, 0, values.index(-np.inf)] == 0
    assert expected[0, 0, 0, 18] == zero_point  # NaN


def test_thread_counts_agree_bit_for_bit():
    x = RNG.normal(size=(2, 64, 14, 14)).astype(np.float32)
    w = RNG.integers(0, 256, size=(96, 64, 3, 3), dtype=np.uint8)
    m = model(x.shape, w, RNG.normal(size=96) * 1e-3, RNG.normal(size=96), x_scale=0.03, x_zero_point=90, pads=[1] * 4)
    one, two = session(m, 1).run(None, {"X": x})[0], session(m, 2).run(None, {"X": x})[0]
    np.testing.assert_array_equal(one, two)


def test_constant_w_over_batches_and_w_as_graph_input():
    w = RNG.integers(0, 256, size=(12, 8, 3, 3), dtype=np.uint8)
    const = session(model(("N", 8, 6, 5), w, np.ones(12), np.zeros(12), x_scale=0.05, x_zero_point=7, pads=[1] * 4))
    fed = session(
        model(("N", 8, 6, 5), w, np.ones(12), np.zeros(12), w_as_input=True, x_scale=0.05, x_zero_point=7, pads=[1] * 4)
    )
    for batch in (1, 3, 1):
        x = RNG.normal(size=(batch, 8, 6, 5)).astype(np.float32)
        expected = reference_sums(x, w, 0.05, 7, pads=(1, 1, 1, 1)).astype(np.float32)
        np.testing.assert_array_equal(const.run(None, {"X": x})[0], expected)
        other = RNG.integers(0, 256, size=w.shape, dtype=np.uint8)
        got = fed.run(None, {"X": x, "W": other})[0]
        np.testing.assert_array_equal(got, reference_sums(x, other, 0.05, 7, pads=(1, 1, 1, 1)).astype(np.float32))


def test_empty_batch():
    w = RNG.integers(0, 256, size=(4, 3, 3, 3), dtype=np.uint8)
    sess = session(model(("N", 3, 8, 8), w, np.ones(4), np.zeros(4), x_scale=0.1))
    assert sess.run(None, {"X": np.zeros((0, 3, 8, 8), np.float32)})[0].shape == (0, 4, 6, 6)


def _refused(m, feeds, match):
    with pytest.raises(ERRORS, match=match):
        session(m).run(None, feeds)


W = RNG.integers(0, 256, size=(4, 3, 3, 3), dtype=np.uint8)
X = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
GOOD = dict(x_scale=0.1, x_zero_point=3)


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        (dict(x_scale=0.0), "x_scale must be positive"),
        (dict(x_scale=-0.5), "x_scale must be positive"),
        (dict(x_scale=float("inf")), "x_scale must be positive"),
        (dict(x_scale=float("nan")), "x_scale must be positive"),
        (dict(x_scale=1e-45), "1/x_scale finite"),
        (dict(x_scale=0.1, x_zero_point=256), "x_zero_point must be in 0..255"),
        (dict(x_scale=0.1, x_zero_point=-1), "x_zero_point must be in 0..255"),
        (dict(x_scale=0.1, relu=2), "'relu' must be 0 or 1"),
        (dict(x_zero_point=3), "'x_scale' \\(float\\) is required"),
        (dict(GOOD, pads=[1, 1]), "'pads' must have 4 values"),
        (dict(GOOD, strides=[0, 1]), "strides must be positive"),
    ],
)
def test_malformed_attributes_are_refused(attrs, match):
    _refused(model(X.shape, W, np.ones(4), np.zeros(4), **attrs), {"X": X}, match)


def test_malformed_inputs_are_refused_and_the_library_still_works():
    _refused(model(X.shape[1:], W, np.ones(4), np.zeros(4), **GOOD), {"X": X[0]}, "QuantizedAdderConv: X must be 4-D")
    x5 = RNG.normal(size=(1, 5, 8, 8)).astype(np.float32)
    _refused(model(x5.shape, W, np.ones(4), np.zeros(4), **GOOD), {"X": x5}, "X has 5 channels but W expects 3")
    x6 = RNG.normal(size=(1, 6, 8, 8)).astype(np.float32)
    _refused(model(x6.shape, W, np.ones(4), np.zeros(4), group=4, **GOOD), {"X": x6}, "divisible by group")
    _refused(model((1, 3, 2, 8), W, np.ones(4), np.zeros(4), **GOOD), {"X": X[:, :, :2]}, "larger than the padded")
    _refused(model(X.shape, W, np.ones(5), np.zeros(4), **GOOD), {"X": X}, "alpha must have shape \\(4,\\)")
    _refused(model(X.shape, W, np.ones(4), np.zeros((2, 2)), **GOOD), {"X": X}, "beta must have shape \\(4,\\)")
    # W of the wrong type (float32 where uint8 is declared) is refused by ORT's type check.
    _refused(
        model(X.shape, W, np.ones(4), np.zeros(4), w_as_input=True, w_dtype=TensorProto.FLOAT, **GOOD),
        {"X": X, "W": W.astype(np.float32)},
        "Type 'tensor\\(float\\)' of input parameter \\(W\\)",
    )
    w_rank3 = RNG.integers(0, 256, size=(4, 3, 9), dtype=np.uint8)
    _refused(model(X.shape, w_rank3, np.ones(4), np.zeros(4), **GOOD), {"X": X}, "W must be 4-D")
    good = session(model(X.shape, W, np.ones(4), np.zeros(4), **GOOD)).run(None, {"X": X})[0]
    np.testing.assert_array_equal(good, reference_sums(X, W, 0.1, 3).astype(np.float32))


def _c_api_forward(
    x, w, alpha, beta, x_scale, zero_point, relu=0, strides=(1, 1), pads=(0,) * 4, dilations=(1, 1), group=1, threads=1
):
    """The CPU library's entry point through its one ctypes declaration: (status, y, error message)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (x, w, alpha, beta)]
        y = _kernels.cpu_quantized_forward(*tensors, strides, pads, dilations, group, x_scale, zero_point, relu)
    except RuntimeError as e:
        return 1, None, str(e)
    finally:
        torch.set_num_threads(previous)
    return 0, y.numpy(), ""


def test_c_api_entry_matches_the_reference_and_refuses_bad_scales():
    x, w, attrs = _case_inputs(CASES[9])
    m = w.shape[0]
    alpha, beta = np.ones(m, np.float32), np.zeros(m, np.float32)
    args = dict(
        strides=tuple(attrs["strides"]),
        pads=tuple(attrs["pads"]),
        dilations=tuple(attrs["dilations"]),
        group=attrs["group"],
    )
    status, y, error = _c_api_forward(x, w, alpha, beta, 0.03, 77, threads=2, **args)
    assert status == 0, error
    np.testing.assert_array_equal(y, reference_sums(x, w, 0.03, 77, **attrs).astype(np.float32))
    status, _, error = _c_api_forward(x, w, alpha, beta, -1.0, 77, **args)
    assert status == 1 and "x_scale must be positive" in error
