"""Small ONNX models with one AdderConv/FusedAdderConv node, for kernel tests."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adderconvert.onnx_ops import DOMAIN, OPSET_VERSION


def one_node(x_shape, w, *, bias=None, scale=None, shift=None, relu=0, **attrs) -> onnx.ModelProto:
    """A model computing AdderConv (or FusedAdderConv when scale/shift are given) of input X with fixed W."""
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
        "one_node",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, OPSET_VERSION)], ir_version=10
    )


# Geometries shared by the CPU and CUDA kernel tests.
CASES = [
    dict(x=(2, 4, 9, 9), w=(6, 4, 3, 3), strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1),
    dict(x=(3, 6, 11, 8), w=(9, 2, 2, 3), strides=[2, 1], pads=[0, 2, 1, 0], dilations=[2, 1], group=3),
    dict(x=(1, 8, 7, 7), w=(8, 1, 3, 3), strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=8),
    dict(x=(2, 64, 14, 14), w=(130, 64, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=1),
    dict(x=(1, 3, 5, 5), w=(5, 3, 5, 5), strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1),
]
FORMS = ["plain", "bias", "fused", "fused_relu"]


def case_model(case: dict, form: str, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    """A one-node model of `case` in `form` (trained-like weights of std 6, BN-like epilogues) and its input."""
    x = rng.normal(size=case["x"]).astype(np.float32)
    w = (rng.normal(size=case["w"]) * 6).astype(np.float32)
    attrs = {k: case[k] for k in ("strides", "pads", "dilations", "group")}
    m = case["w"][0]
    extra = {}
    if form == "bias":
        extra = dict(bias=rng.normal(size=m))
    elif form.startswith("fused"):
        extra = dict(scale=rng.uniform(0.05, 0.5, m), shift=rng.normal(size=m) * 50, relu=int(form == "fused_relu"))
    return one_node(case["x"], w, **extra, **attrs), x
