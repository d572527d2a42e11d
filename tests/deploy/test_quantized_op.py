"""QuantizedAdderConv on the Python side: schema and shape inference, the onnx.reference op, export of quantized
models (BatchNorm and ReLU folded into alpha/beta, a layer without a BatchNorm), and three-way bit-exact integer
sums: ONNX Runtime's kernel, the onnx.reference op and the PyTorch simulation (QuantizedAdderConv2d), each
against an int64 loop reference of the contract (tests/nn/test_quantized.py's)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from adderconvert.deploy.export import export_onnx, fuse_batchnorm
from adderconvert.deploy.ops import (
    AdderConv,
    FusedAdderConv,
    QuantizedAdderConv,
    quantized_node_model,
    register_schemas,
)
from adderconvert.deploy.runtime import make_session
from adderconvert.nn import AdderConv2d
from adderconvert.nn.quantized import QuantizedAdderConv2d
from adderconvert.quantization import quantize
from tests.nn.test_quantized import CASES, int_sums

RNG = np.random.default_rng(23)
NEW_OPS = [AdderConv, FusedAdderConv, QuantizedAdderConv]


def _attrs(case):
    _, _, strides, pads, dilations, group = case
    return dict(strides=list(strides), pads=list(pads), dilations=list(dilations), group=group)


def _session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    path = f"/tmp/adderconvert_qtest_{id(model)}.onnx"
    onnx.save(model, path)
    return make_session(path, providers=["CPUExecutionProvider"], intra_op_num_threads=threads)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"x{c[0]}-w{c[1]}-g{c[5]}")
def test_three_way_bit_exact_integer_sums(case, tmp_path):
    x_shape, w_shape = case[:2]
    x = (RNG.normal(size=x_shape) * 2).astype(np.float32)
    w = RNG.integers(0, 256, size=w_shape, dtype=np.uint8)
    x_scale, zero_point = float(np.float32(RNG.uniform(0.005, 0.05))), int(RNG.integers(0, 256))
    m = w_shape[0]
    model = quantized_node_model(
        x_shape, w, np.ones(m), np.zeros(m), x_scale=x_scale, x_zero_point=zero_point, **_attrs(case)
    )
    register_schemas()
    onnx.checker.check_model(model)
    expected = int_sums(x, w, x_scale, zero_point, case[2], case[3], case[4], case[5]).astype(np.float32)
    reference = ReferenceEvaluator(model, new_ops=NEW_OPS).run(None, {"X": x})[0]
    np.testing.assert_array_equal(reference, expected)
    path = tmp_path / "q.onnx"
    onnx.save(model, path)
    for threads in (1, 2):
        got = make_session(path, providers=["CPUExecutionProvider"], intra_op_num_threads=threads).run(None, {"X": x})[
            0
        ]
        np.testing.assert_array_equal(got, expected)
    module = QuantizedAdderConv2d(
        torch.from_numpy(w), torch.ones(m), torch.zeros(m), stride=case[2], pads=case[3], dilation=case[4],
        groups=case[5], x_scale=x_scale, x_zero_point=zero_point,
    )  # fmt: skip
    np.testing.assert_array_equal(module(torch.from_numpy(x)).numpy(), expected)


def test_epilogue_within_float_rounding_of_the_simulation(tmp_path):
    x = RNG.normal(size=(2, 16, 9, 9)).astype(np.float32)
    w = RNG.integers(0, 256, size=(24, 16, 3, 3), dtype=np.uint8)
    alpha = (RNG.normal(size=24) * 1e-3).astype(np.float32)
    beta = RNG.normal(size=24).astype(np.float32)
    module = QuantizedAdderConv2d(
        torch.from_numpy(w), torch.from_numpy(alpha), torch.from_numpy(beta), pads=(1, 1, 1, 1), x_scale=0.02,
        x_zero_point=60, relu=True,
    )  # fmt: skip
    model = quantized_node_model(
        x.shape, w, alpha, beta, x_scale=module.x_scale, x_zero_point=60, relu=1, pads=[1, 1, 1, 1]
    )
    onnx.save(model, tmp_path / "q.onnx")
    got = make_session(tmp_path / "q.onnx", providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    simulated = module(torch.from_numpy(x)).numpy()
    assert (simulated == 0).any() and (simulated > 0).any()
    np.testing.assert_allclose(got, simulated, rtol=2e-7, atol=1e-7 * np.abs(simulated).max())
    assert (got == simulated).mean() > 0.99  # fmaf against one rounding from float64: nearly always equal


def test_shape_inference_static_and_dynamic():
    register_schemas()
    w = RNG.integers(0, 256, size=(8, 2, 3, 3), dtype=np.uint8)
    model = quantized_node_model(
        (2, 6, 11, 10), w, np.ones(8), np.zeros(8), x_scale=0.1, strides=[2, 1], pads=[1, 0, 1, 2], group=3
    )
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [2, 8, 6, 10]
    assert inferred.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dynamic = quantized_node_model(("N", 6, "H", 10), w, np.ones(8), np.zeros(8), x_scale=0.1, group=3)
    shape = onnx.shape_inference.infer_shapes(dynamic).graph.output[0].type.tensor_type.shape.dim
    assert shape[0].dim_param == "N" and shape[1].dim_value == 8 and not shape[2].HasField("dim_value")
    assert shape[3].dim_value == 8


def _with_attributes(model: onnx.ModelProto, **attrs) -> onnx.ModelProto:
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name not in attrs]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(k, v) for k, v in attrs.items() if v is not None])
    return model


W = RNG.integers(0, 256, size=(4, 3, 3, 3), dtype=np.uint8)
X = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        (dict(x_scale=0.0), "x_scale must be positive"),
        (dict(x_scale=-1.0), "x_scale must be positive"),
        (dict(x_scale=float("nan")), "x_scale must be positive"),
        (dict(x_scale=1e-45), "1/x_scale finite"),
        (dict(x_zero_point=256), "x_zero_point must be in 0..255"),
        (dict(x_zero_point=-3), "x_zero_point must be in 0..255"),
        (dict(relu=2), "'relu' must be 0 or 1"),
    ],
)
def test_malformed_attributes_are_refused_by_the_reference_and_by_ort(attrs, match, tmp_path):
    model = _with_attributes(quantized_node_model(X.shape, W, np.ones(4), np.zeros(4), x_scale=0.1), **attrs)
    with pytest.raises(ValueError, match=match):
        ReferenceEvaluator(model, new_ops=NEW_OPS).run(None, {"X": X})
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(Exception, match=match):  # ORT's Fail / InvalidArgument, never a crash
        make_session(tmp_path / "bad.onnx", providers=["CPUExecutionProvider"]).run(None, {"X": X})


def test_malformed_nodes_are_refused_by_the_checker_and_the_reference():
    register_schemas()
    model = quantized_node_model(X.shape, W, np.ones(4), np.zeros(4), x_scale=0.1)
    node = model.graph.node[0]
    no_scale = onnx.ModelProto()
    no_scale.CopyFrom(model)
    kept = [a for a in node.attribute if a.name != "x_scale"]
    del no_scale.graph.node[0].attribute[:]
    no_scale.graph.node[0].attribute.extend(kept)
    with pytest.raises(onnx.checker.ValidationError, match="x_scale"):
        onnx.checker.check_model(no_scale, full_check=True)
    with pytest.raises(ValueError, match="'x_scale' \\(float\\) is required"):
        ReferenceEvaluator(no_scale, new_ops=NEW_OPS).run(None, {"X": X})
    float_w = onnx.ModelProto()
    float_w.CopyFrom(model)
    float_w.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(W.astype(np.float32), "W"))
    with pytest.raises(
        onnx.shape_inference.InferenceError, match="W typestr: TW, has unsupported type: tensor\\(float\\)"
    ):
        onnx.checker.check_model(float_w, full_check=True)
    with pytest.raises(ValueError, match="alpha must have shape \\(4,\\)"):
        bad = quantized_node_model(X.shape, W, np.ones(5), np.zeros(4), x_scale=0.1)
        ReferenceEvaluator(bad, new_ops=NEW_OPS).run(None, {"X": X})
    with pytest.raises(ValueError, match="X has 5 channels"):
        x5 = RNG.normal(size=(1, 5, 8, 8)).astype(np.float32)
        ReferenceEvaluator(
            quantized_node_model(x5.shape, W, np.ones(4), np.zeros(4), x_scale=0.1), new_ops=NEW_OPS
        ).run(None, {"X": x5})


def _model() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        AdderConv2d(8, 16, 3, padding=1),  # -> BatchNorm -> ReLU: folded with relu=1
        nn.BatchNorm2d(16),
        nn.ReLU(),
        AdderConv2d(16, 16, 3, stride=2, padding=1, groups=4),  # -> BatchNorm: folded with relu=0
        nn.BatchNorm2d(16),
        AdderConv2d(16, 8, 1, bias=True),  # no BatchNorm after it: alpha = -x_scale, beta = bias - excess
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    with torch.no_grad():
        model.train()
        for _ in range(5):
            model(torch.randn(16, 3, 12, 12))
    return model.eval()


def test_export_folds_batchnorm_and_relu_and_runs_in_ort(tmp_path):
    model = _model()
    calibration = [torch.randn(8, 3, 12, 12) for _ in range(3)]
    quantized = quantize(model, calibration, "minmax")
    path = export_onnx(quantized, tmp_path / "m_int8.onnx", torch.randn(2, 3, 12, 12))
    proto = onnx.load(path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizedAdderConv") == 3 and "BatchNormalization" not in ops and "AdderConv" not in ops
    assert ops.count("Relu") == 1  # the stem's ReLU stays; the two after BatchNorms are folded
    relus = [helper.get_attribute_value(a) for n in proto.graph.node for a in n.attribute if a.name == "relu"]
    assert relus == [1, 0, 0]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    last = [n for n in proto.graph.node if n.op_type == "QuantizedAdderConv"][-1]
    np.testing.assert_array_equal(inits[last.input[2]], quantized[7].alpha.numpy())
    np.testing.assert_array_equal(inits[last.input[3]], quantized[7].beta.numpy())
    assert inits[last.input[1]].dtype == np.uint8
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["adder_precision"] == "int8" and '"minmax"' in metadata["quantization"]
    x = torch.randn(5, 3, 12, 12)
    got = make_session(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        simulated = quantized(x).numpy()
    np.testing.assert_allclose(got, simulated, rtol=1e-4, atol=1e-4 * np.abs(simulated).max())
    reference = ReferenceEvaluator(proto, new_ops=NEW_OPS).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_fusion_keeps_integer_sums_of_each_layer(tmp_path):
    # One adder layer + BatchNorm exported: ORT's Y is alpha' * S + beta' with alpha' = g * (-x_scale), so
    # (Y - beta') / alpha' recovers the PyTorch simulation's integers.
    layer = AdderConv2d(6, 10, 3, padding=1)
    bn = nn.BatchNorm2d(10).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 5)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
    model = nn.Sequential(layer, bn).eval()
    quantized = quantize(model, [torch.randn(4, 6, 7, 7)], "minmax")
    path = export_onnx(quantized, tmp_path / "one.onnx", torch.randn(1, 6, 7, 7))
    proto = onnx.load(path)
    (node,) = proto.graph.node
    inits = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    alpha, beta = inits[node.input[2]], inits[node.input[3]]
    x = torch.randn(2, 6, 7, 7)
    y = make_session(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0].astype(np.float64)
    s = np.rint((y - beta[None, :, None, None]) / alpha[None, :, None, None])
    np.testing.assert_array_equal(s, quantized[0].integer_sums(x).numpy())


def test_fuse_batchnorm_skips_a_quantized_node_that_already_has_relu():
    w = RNG.integers(0, 256, size=(4, 3, 1, 1), dtype=np.uint8)
    model = quantized_node_model((1, 3, 4, 4), w, np.ones(4), np.zeros(4), x_scale=0.1, relu=1)
    graph = model.graph
    graph.node[0].output[0] = "S"
    graph.node.append(helper.make_node("BatchNormalization", ["S", "g", "b", "m", "v"], ["Y"]))
    for name in "gbmv":
        graph.initializer.append(onnx.numpy_helper.from_array(np.ones(4, np.float32), name))
    assert fuse_batchnorm(model) == 0


def test_portable_int8_is_refused(tmp_path):
    quantized = quantize(_model(), [torch.randn(4, 3, 12, 12)], "minmax")
    with pytest.raises(ValueError, match="no portable form"):
        export_onnx(quantized, tmp_path / "p.onnx", torch.randn(1, 3, 12, 12), portable=True)
