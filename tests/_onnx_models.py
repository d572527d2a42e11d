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
