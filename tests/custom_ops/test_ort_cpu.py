"""The ONNX Runtime CPU kernel: parity with the NumPy reference, threads, and bad input refused cleanly."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from adderconvert.deploy.ops import AdderConv, FusedAdderConv, adder_conv_reference
from adderconvert.deploy.runtime import make_session
from tests._onnx_models import CASES, FORMS, case_model, one_node
from tests._special_values import GEOMETRIES, assert_same_specials, special_inputs

RNG = np.random.default_rng(0)


def _session(model: onnx.ModelProto, tmp_path, **options):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return make_session(path, providers=["CPUExecutionProvider"], **options)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("form", FORMS)
def test_matches_numpy_reference(case, form, tmp_path):
    model, x = case_model(case, form, RNG)
    got = _session(model, tmp_path).run(None, {"X": x})[0]
    ref = onnx.reference.ReferenceEvaluator(model, new_ops=[AdderConv, FusedAdderConv])
    expected = ref.run(None, {"X": x})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * max(np.abs(expected).max(), 1e-6)


def test_thread_counts_agree(tmp_path):
    x = RNG.normal(size=(4, 32, 16, 16)).astype(np.float32)
    model = one_node(x.shape, RNG.normal(size=(48, 32, 3, 3)), pads=[1, 1, 1, 1])
    one = _session(model, tmp_path, intra_op_num_threads=1).run(None, {"X": x})[0]
    two = _session(model, tmp_path, intra_op_num_threads=2).run(None, {"X": x})[0]
    np.testing.assert_array_equal(one, two)


def _refused(model, x, tmp_path, match):
    with pytest.raises(
        (
            ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.RuntimeException,
            ort.capi.onnxruntime_pybind11_state.InvalidGraph,
        ),
        match=match,
    ):
        _session(model, tmp_path).run(None, {"X": x})


def test_bad_inputs_are_refused_without_a_crash(tmp_path):
    w = RNG.normal(size=(4, 3, 3, 3))
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    _refused(one_node((3, 8, 8), w), x[0], tmp_path, "X must be 4-D")
    _refused(
        one_node((1, 5, 8, 8), w),
        RNG.normal(size=(1, 5, 8, 8)).astype(np.float32),
        tmp_path,
        "X has 5 channels but W expects 3",
    )
    _refused(one_node((1, 3, 2, 8), w), x[:, :, :2], tmp_path, "larger than the padded input")
    _refused(one_node(x.shape, w, bias=np.ones(5)), x, tmp_path, "B must have shape \\(4,\\)")
    _refused(one_node(x.shape, w, scale=np.ones(4), shift=np.ones(3)), x, tmp_path, "shift must have shape")
    _refused(one_node(x.shape, w, pads=[1, 1]), x, tmp_path, "'pads' must have 4 values")
    _refused(one_node(x.shape, w, strides=[0, 1]), x, tmp_path, "strides must be positive")
    _refused(
        one_node((1, 6, 8, 8), RNG.normal(size=(4, 3, 3, 3)), group=4),
        RNG.normal(size=(1, 6, 8, 8)).astype(np.float32),
        tmp_path,
        "divisible by group",
    )
    # The session survives and still computes.
    good = _session(one_node(x.shape, w), tmp_path).run(None, {"X": x})[0]
    assert good.shape == (1, 4, 6, 6)


def test_empty_batch(tmp_path):
    x = np.zeros((0, 3, 8, 8), np.float32)
    y = _session(one_node(("N", 3, 8, 8), RNG.normal(size=(4, 3, 3, 3))), tmp_path).run(None, {"X": x})[0]
    assert y.shape == (0, 4, 6, 6)


@pytest.mark.parametrize(("x_shape", "w_shape", "pads"), GEOMETRIES)
@pytest.mark.parametrize("form", ["plain", "fused_relu"])
def test_infinities_and_nan_as_the_reference(x_shape, w_shape, pads, form, tmp_path):
    x, w = special_inputs(x_shape, w_shape)
    expected = adder_conv_reference(x, w, pads=pads)
    extra = {}
    if form == "fused_relu":
        scale, shift = np.full(w_shape[0], 0.5), np.linspace(-2, 2, w_shape[0])
        extra = dict(scale=scale, shift=shift, relu=1)
        with np.errstate(invalid="ignore"):
            expected = np.maximum(expected * scale[None, :, None, None] + shift[None, :, None, None], 0)
    got = _session(one_node(x.shape, w, pads=list(pads), **extra), tmp_path).run(None, {"X": x})[0]
    if form == "plain":
        assert_same_specials(got, expected, rtol=1e-5)
    else:  # ReLU turns -inf into 0; NaN stays NaN
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4 * np.nanmax(np.abs(expected)))


def _fused_reference(x, w, scale, shift):
    y = adder_conv_reference(x, w, pads=(1, 1, 1, 1)) * scale[None, :, None, None] + shift[None, :, None, None]
    return np.maximum(y, 0.0)


@pytest.mark.parametrize("size", [2, 9])
def test_initializer_weights_laid_out_once_serve_every_run(size, tmp_path):
    # The kernel keeps W's layouts across runs; batches 1 to 100 tile differently (by image, by position)
    # and so need different layouts of the same W.
    w = RNG.normal(size=(20, 16, 3, 3)) * 3
    scale, shift = RNG.uniform(0.1, 0.5, 20), RNG.normal(size=20) * 20
    session = _session(one_node(("N", 16, size, size), w, scale=scale, shift=shift, relu=1, pads=[1] * 4), tmp_path)
    first = {}
    for batch in (1, 100, 3, 1, 100, 3, 1):
        x = RNG.normal(size=(batch, 16, size, size)).astype(np.float32)
        got = session.run(None, {"X": x})[0]
        expected = _fused_reference(x, w, scale, shift)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        # The same input again gives the same bits, whichever run laid W out.
        x0 = first.setdefault(batch, x)
        np.testing.assert_array_equal(session.run(None, {"X": x0})[0], session.run(None, {"X": x0})[0])


def _graph_input_w_model(x_shape, w_shape, w_default=None) -> onnx.ModelProto:
    """AdderConv(X, W, pads=1) with W a graph input; `w_default` also makes it an (overridable) initializer."""
    node = onnx.helper.make_node("AdderConv", ["X", "W"], ["Y"], domain="com.adderconvert", pads=[1] * 4)
    inits = [] if w_default is None else [onnx.numpy_helper.from_array(w_default.astype(np.float32), "W")]
    graph = onnx.helper.make_graph(
        [node],
        "w_input",
        [
            onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, list(x_shape)),
            onnx.helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, list(w_shape)),
        ],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid("com.adderconvert", 1)]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=10)


@pytest.mark.parametrize("with_default", [False, True])
def test_weights_fed_as_graph_input_are_followed(with_default, tmp_path):
    w_shape = (12, 8, 3, 3)
    w_default = RNG.normal(size=w_shape) if with_default else None
    session = _session(_graph_input_w_model(("N", 8, 5, 5), w_shape, w_default), tmp_path)
    for batch in (2, 1, 2):
        x = RNG.normal(size=(batch, 8, 5, 5)).astype(np.float32)
        w = RNG.normal(size=w_shape).astype(np.float32)
        got = session.run(None, {"X": x, "W": w})[0]
        expected = adder_conv_reference(x, w, pads=(1, 1, 1, 1))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        if with_default:  # not fed: the initializer's value
            expected = adder_conv_reference(x, w_default, pads=(1, 1, 1, 1))
            got = session.run(None, {"X": x})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
