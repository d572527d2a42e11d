"""ONNX export of adder models: the ``adderconvert::adder_conv2d`` op becomes ``com.adderconvert::AdderConv``.

With ``fuse_bn`` (the default) every ``AdderConv -> BatchNormalization [-> Relu]`` chain whose
BatchNorm feeds nothing else is folded into one ``FusedAdderConv`` node: BatchNorm's scale cannot be
folded into adder weights, so the kernel applies it in its FP32 epilogue.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxscript
import torch
from onnx import helper, numpy_helper

import adderconvert
from adderconvert.onnx_ops import (
    ADDER_CONV_SCHEMA,
    DOMAIN,
    OPSET_VERSION,
    register_schemas,
)

__all__ = ["export_onnx", "fuse_batchnorm"]

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def _translation_table() -> dict:
    adder_conv = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, OPSET_VERSION), "AdderConv", ADDER_CONV_SCHEMA)

    def translate(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
        inputs = [x, weight] if bias is None else [x, weight, bias]
        return adder_conv(
            *inputs, strides=list(stride), pads=list(padding), dilations=list(dilation), group=int(groups)
        )

    return {torch.ops.adderconvert.adder_conv2d.default: translate}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def fuse_batchnorm(model: onnx.ModelProto) -> int:
    """Fold ``AdderConv -> BatchNormalization [-> Relu]`` into ``FusedAdderConv`` in place.

    Only chains whose intermediate outputs have a single consumer, are not graph outputs and whose
    BatchNorm parameters are initializers are folded. Returns the number of folded chains.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    users = _consumers(graph)
    folded, removed = 0, set()
    new_inits = []
    for node in list(graph.node):
        if node.op_type != "AdderConv" or node.domain != DOMAIN:
            continue
        next_nodes = users.get(node.output[0], [])
        if len(next_nodes) != 1 or node.output[0] in graph_outputs:
            continue
        bn = next_nodes[0]
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.output) != 1:
            continue
        if not all(name in inits for name in bn.input[1:5]):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits:
                continue
            shift = shift + scale * numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        last, relu = bn, 0
        bn_users = users.get(bn.output[0], [])
        if len(bn_users) == 1 and bn_users[0].op_type == "Relu" and bn.output[0] not in graph_outputs:
            last, relu = bn_users[0], 1
            removed.add(id(last))
        prefix = node.name or node.output[0]
        scale_name, shift_name = f"{prefix}_fused_scale", f"{prefix}_fused_shift"
        new_inits += [
            numpy_helper.from_array(scale.astype(np.float32), scale_name),
            numpy_helper.from_array(shift.astype(np.float32), shift_name),
        ]
        fused = helper.make_node(
            "FusedAdderConv",
            [node.input[0], node.input[1], scale_name, shift_name],
            [last.output[0]],
            name=f"{prefix}_fused",
            domain=DOMAIN,
        )
        fused.attribute.extend([a for a in node.attribute])
        fused.attribute.append(helper.make_attribute("relu", relu))
        node.CopyFrom(fused)
        removed.add(id(bn))
        folded += 1
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    _drop_unused_initializers(graph)
    return folded


def _name_batch_dim(model: onnx.ModelProto) -> None:
    """Call the exporter's symbol for the batch size "batch" everywhere it appears."""
    symbol = model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if not symbol:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = "batch"


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    dynamic_batch: bool = True,
    opset: int = 18,
    fuse_bn: bool = True,
) -> Path:
    """Export ``model`` (in eval mode, on CPU) to one self-contained ONNX file and return its path.

    Adder layers become ``com.adderconvert::AdderConv`` (or ``FusedAdderConv`` with ``fuse_bn``). The
    file passes ``onnx.checker`` with ``full_check`` and records the adderconvert version in its metadata.
    Run it with :func:`adderconvert.runtime.make_session`.
    """
    register_schemas()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if len(inputs) != 1:
        raise ValueError(f"export_onnx expects one example input tensor, got {len(inputs)}")
    was_training = model.training
    model.eval()
    try:
        dynamic_shapes = ({0: torch.export.Dim.DYNAMIC},) if dynamic_batch else None
        program = torch.onnx.export(
            model,
            inputs,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=_translation_table(),
            report=False,
            verbose=False,
        )
    finally:
        model.train(was_training)
    proto = program.model_proto
    if dynamic_batch:
        _name_batch_dim(proto)
    if fuse_bn:
        fuse_batchnorm(proto)
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(
        proto, {"adderconvert_version": adderconvert.__version__, "torch_version": torch.__version__}
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path
