"""ONNX export of adder models: the ``adderconvert::adder_conv2d`` op becomes ``com.adderconvert::AdderConv``.

With ``fuse_bn`` (the default) every ``AdderConv -> BatchNormalization [-> Relu]`` chain whose
BatchNorm feeds nothing else is folded into one ``FusedAdderConv`` node: BatchNorm's scale cannot be
folded into adder weights, so the kernel applies it in its FP32 epilogue. An adder layer of several bases exports
as one ``AdderConv`` of all its bases' filters and the grouped 1x1 ``Conv`` that adds them up
(:func:`combine_bases_by_conv`).

With ``portable`` every ``AdderConv`` is written with standard ONNX ops instead (:func:`make_portable`),
for runtimes that cannot load the custom-op library. Model metadata (input size, normalisation, class
names, layout) goes into ``metadata_props`` as JSON values (:func:`input_metadata`, :func:`read_metadata`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxscript
import torch
from onnx import helper, numpy_helper
from torch.onnx import symbolic_helper
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from adderconvert.deploy.dense import (
    DETECTION_OUTPUTS,
    IMAGES,
    LOGITS,
    RAW_BOXES,
    RAW_SCORES,
    DetectionHeads,
    RCNNDetections,
    SegmentationLogits,
    append_detection_postprocess,
    model_task,
)
from adderconvert.deploy.ops import (
    ADDER_CONV_SCHEMA,
    DOMAIN,
    OPSET_VERSION,
    QUANTIZED_ADDER_CONV_SCHEMA,
    register_schemas,
)
from adderconvert.nn import AdderConv2d
from adderconvert.nn.modules import combining_conv, interleaved_bases
from adderconvert.nn.quantized import QuantizedAdderConv2d

__all__ = [
    "combine_bases_by_conv",
    "dynamic_hw_sizes",
    "export_onnx",
    "fuse_batchnorm",
    "input_metadata",
    "make_portable",
    "read_metadata",
]

INPUT_NAME = "input"
OUTPUT_NAME = "output"
# Names of the input's dynamic dimensions.
_DIM_NAMES = ("batch", None, "height", "width")
# metadata_props written by every export; user metadata may not override them.
_RESERVED_METADATA = (
    "adderconvert_version",
    "torch_version",
    "adder_form",
    "adder_precision",
    "quantization",
    "dynamic_hw",
    "min_image_size",
    "postprocess",
)
# The portable form materialises |patches - weights| for a chunk of output channels at a time, at most this
# many elements per image.
PORTABLE_CHUNK_ELEMENTS = 1 << 22
# The portable form warns when one layer's patch tensor exceeds this many bytes per image.
PORTABLE_WARN_BYTES = 32 << 20


def _translation_table() -> dict:
    adder_conv = onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, OPSET_VERSION), "AdderConv", ADDER_CONV_SCHEMA)

    def translate(x, weight, bias=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
        inputs = [x, weight] if bias is None else [x, weight, bias]
        return adder_conv(
            *inputs, strides=list(stride), pads=list(padding), dilations=list(dilation), group=int(groups)
        )

    quantized = onnxscript.values.Op(
        onnxscript.values.Opset(DOMAIN, OPSET_VERSION), "QuantizedAdderConv", QUANTIZED_ADDER_CONV_SCHEMA
    )

    def translate_quantized(x, weight, alpha, beta, stride, padding, dilation, groups, x_scale, x_zero_point, relu):
        return quantized(
            x,
            weight,
            alpha,
            beta,
            strides=list(stride),
            pads=list(padding),
            dilations=list(dilation),
            group=int(groups),
            x_scale=float(x_scale),
            x_zero_point=int(x_zero_point),
            relu=int(relu),
        )

    return {
        torch.ops.adderconvert.adder_conv2d.default: translate,
        torch.ops.adderconvert.quantized_adder_conv2d.default: translate_quantized,
    }


def _adder_symbolic(g, x, weight, bias, stride, padding, dilation, groups):
    """``adderconvert::adder_conv2d`` for the TorchScript exporter: ``AdderConv``, as :func:`_translation_table`."""
    inputs = [x, weight] if symbolic_helper._is_none(bias) else [x, weight, bias]
    value = symbolic_helper._get_const
    return g.op(
        f"{DOMAIN}::AdderConv",
        *inputs,
        strides_i=value(stride, "is", "stride"),
        pads_i=value(padding, "is", "padding"),
        dilations_i=value(dilation, "is", "dilation"),
        group_i=value(groups, "i", "groups"),
    ).setType(x.type().with_sizes(None))


def _quantized_symbolic(g, x, weight, alpha, beta, stride, padding, dilation, groups, x_scale, x_zero_point, relu):
    """``adderconvert::quantized_adder_conv2d`` for the TorchScript exporter: ``QuantizedAdderConv``."""
    value = symbolic_helper._get_const
    return g.op(
        f"{DOMAIN}::QuantizedAdderConv",
        x,
        weight,
        alpha,
        beta,
        strides_i=value(stride, "is", "stride"),
        pads_i=value(padding, "is", "padding"),
        dilations_i=value(dilation, "is", "dilation"),
        group_i=value(groups, "i", "groups"),
        x_scale_f=value(x_scale, "f", "x_scale"),
        x_zero_point_i=value(x_zero_point, "i", "x_zero_point"),
        relu_i=int(value(relu, "b", "relu")),
    ).setType(x.type().with_sizes(None))


# The TorchScript exporter's symbolics of the adder ops, by op.
_SYMBOLICS = {
    "adderconvert::adder_conv2d": _adder_symbolic,
    "adderconvert::quantized_adder_conv2d": _quantized_symbolic,
}


@contextlib.contextmanager
def _adder_symbolics(opset: int) -> Iterator[None]:
    """:data:`_SYMBOLICS` registered with the TorchScript exporter at ``opset`` for one export, and unregistered
    after it: the exporter's registry is global."""
    for name, symbolic in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


def _torchscript_export(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], opset: int) -> onnx.ModelProto:
    """``module`` (an :class:`RCNNDetections`) through the TorchScript exporter, with the adder ops registered:
    torchvision's R-CNNs trace with ONNX ops there (``torch.export`` cannot take their post-processing). The graph
    takes the example's batch size."""
    adders = any(isinstance(m, (AdderConv2d, QuantizedAdderConv2d)) for m in module.modules())
    buffer = io.BytesIO()
    with _adder_symbolics(opset), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and the trace's warnings on its loops
        torch.onnx.export(
            module,
            inputs,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[IMAGES],
            output_names=list(DETECTION_OUTPUTS),
            custom_opsets={DOMAIN: OPSET_VERSION} if adders else None,
        )
    return onnx.load_from_string(buffer.getvalue())


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs of ``node``'s attributes (an If's branches, a Loop's body)."""
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]


def _remove_identities(graph: onnx.GraphProto) -> None:
    """Drop ``graph``'s Identity nodes, in place, their readers (in subgraphs too) reading their input instead: the
    TorchScript exporter shares equal initializers through them, and those of BatchNorms that
    :func:`fuse_batchnorm` folded feed nothing. One whose output is the graph's or a subgraph's output stays."""

    def outputs(g: onnx.GraphProto) -> set[str]:
        return {o.name for o in g.output} | {n for node in g.node for sub in _subgraphs(node) for n in outputs(sub)}

    kept_names = outputs(graph)
    source: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.output[0] not in kept_names:
            source[node.output[0]] = source.get(node.input[0], node.input[0])
        else:
            kept.append(node)

    def rewire(nodes) -> None:
        for node in nodes:
            node.input[:] = [source.get(name, name) for name in node.input]
            for sub in _subgraphs(node):
                rewire(sub.node)

    rewire(kept)
    del graph.node[:]
    graph.node.extend(kept)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _single_base(layer: AdderConv2d | QuantizedAdderConv2d, order: torch.Tensor) -> torch.nn.Module:
    """The adder layer of one base over ``layer``'s stacked filters taken in ``order``, without its bias."""
    if isinstance(layer, QuantizedAdderConv2d):
        return QuantizedAdderConv2d(
            layer.weight[order],
            layer.alpha[order],
            layer.beta[order],
            stride=layer.stride,
            pads=layer.pads,
            dilation=layer.dilation,
            groups=layer.groups,
            x_scale=layer.x_scale,
            x_zero_point=layer.x_zero_point,
        )
    single = AdderConv2d(
        layer.in_channels,
        layer.bases * layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        single.weight.copy_(layer.weight[order])
    return single


def combine_bases_by_conv(model: torch.nn.Module) -> torch.nn.Module:
    """``model``, or a copy of it whose adder layers of several bases are each an adder layer of one base over
    their filters in :func:`~adderconvert.nn.modules.interleaved_bases` order followed by the grouped 1x1 conv that
    adds the bases up (:func:`~adderconvert.nn.modules.combining_conv`), in the layer's train or eval mode: the same
    function, exported as one ``Conv`` (into which a following BatchNorm folds) where the traced
    :func:`~adderconvert.nn.modules.combine_bases` is some twenty slicing and elementwise nodes per layer.
    Torch's random state is left as it was."""
    names = [
        n
        for n, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, (AdderConv2d, QuantizedAdderConv2d)) and m.bases > 1
    ]
    if not names:
        return model
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # the new layers' own initialisation is overwritten
        for name in names:
            layer = model.get_submodule(name)
            order = interleaved_bases(layer.groups, layer.bases, layer.out_channels).to(layer.weight.device)
            shift = layer.base_shift.detach()
            if isinstance(layer, AdderConv2d) and layer.bias is not None:
                shift = shift + layer.bias.detach()
            combined = torch.nn.Sequential(_single_base(layer, order), combining_conv(layer.base_scale.detach(), shift))
            combined.train(layer.training)
            if not name:  # the model is the layer
                return combined
            model.set_submodule(name, combined)
    return model


def fuse_batchnorm(model: onnx.ModelProto) -> int:
    """Fold ``AdderConv -> BatchNormalization [-> Relu]`` into ``FusedAdderConv``, and
    ``QuantizedAdderConv -> BatchNormalization [-> Relu]`` into the ``QuantizedAdderConv``'s ``alpha``, ``beta``
    and ``relu``, in place.

    Only chains whose intermediate outputs have a single consumer, are not graph outputs and whose
    BatchNorm parameters (and ``alpha``, ``beta``) are initializers (or Identity nodes of them) are folded. Returns
    the number of folded chains.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:  # the TorchScript exporter shares equal initializers through Identity nodes
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    graph_outputs = {o.name for o in graph.output}
    users = _consumers(graph)
    folded, removed = 0, set()
    new_inits = []
    for node in list(graph.node):
        quantized = node.op_type == "QuantizedAdderConv"
        if node.op_type not in ("AdderConv", "QuantizedAdderConv") or node.domain != DOMAIN:
            continue
        next_nodes = users.get(node.output[0], [])
        if len(next_nodes) != 1 or node.output[0] in graph_outputs:
            continue
        bn = next_nodes[0]
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.output) != 1:
            continue
        if not all(name in inits for name in bn.input[1:5]):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if quantized and (attrs.get("relu", 0) or not all(name in inits for name in node.input[2:4])):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
        if quantized:  # scale * (alpha * S + beta) + shift
            alpha, offset = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in node.input[2:4])
            scale, shift = scale * alpha, scale * offset + shift
        elif len(node.input) > 2 and node.input[2]:
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
            node.op_type if quantized else "FusedAdderConv",
            [node.input[0], node.input[1], scale_name, shift_name],
            [last.output[0]],
            name=f"{prefix}_fused",
            domain=DOMAIN,
        )
        fused.attribute.extend([a for a in node.attribute if a.name != "relu"])
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


def _name_dynamic_dims(model: onnx.ModelProto) -> None:
    """Call the exporter's symbols for the input's dynamic dims "batch", "height", "width" everywhere."""
    renames = {
        dim.dim_param: name
        for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, _DIM_NAMES)
        if dim.dim_param and name
    }
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def input_metadata(
    *,
    image_size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: Sequence[str] | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Metadata describing the model's input for :func:`export_onnx` (``None`` values are left out).

    ``image_size`` is stored as [height, width]; ``mean``/``std`` are the per-channel normalisation applied
    to [0, 1] pixels; ``layout`` is always ``"NCHW"``.
    """
    if isinstance(image_size, int):
        image_size = [image_size, image_size]
    values = {
        "image_size": list(image_size) if image_size is not None else None,
        "mean": [float(v) for v in mean] if mean is not None else None,
        "std": [float(v) for v in std] if std is not None else None,
        "classes": list(classes) if classes is not None else None,
        "dataset": dataset,
        "layout": "NCHW",
    }
    return {k: v for k, v in values.items() if v is not None}


def read_metadata(model: str | os.PathLike | onnx.ModelProto) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file or model, JSON values decoded (other values as strings)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    metadata = {}
    for prop in proto.metadata_props:
        try:
            metadata[prop.key] = json.loads(prop.value)
        except ValueError:
            metadata[prop.key] = prop.value
    return metadata


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _static_shapes(model: onnx.ModelProto, input_shape: Sequence[int]) -> dict[str, list[int]]:
    """Shapes of the graph's values when its input has ``input_shape`` (by ONNX shape inference)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for dim, size in zip(fixed.graph.input[0].type.tensor_type.shape.dim, input_shape):
        dim.Clear()
        dim.dim_value = size
    del fixed.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)  # sizes computed from Shape (an FPN)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes


def make_portable(
    model: onnx.ModelProto,
    input_shape: Sequence[int],
    *,
    chunk_elements: int = PORTABLE_CHUNK_ELEMENTS,
    warn_bytes: int = PORTABLE_WARN_BYTES,
) -> int:
    """Rewrite every ``com.adderconvert::AdderConv`` with standard ONNX ops, in place; return how many.

    Each layer becomes: ``Conv`` with one-hot kernels (``group`` = input channels) that gathers the
    zero-padded receptive fields exactly into a patch tensor P (N, C*kh*kw, Ho, Wo); then, for chunks of
    output channels (at most ``chunk_elements`` per image), ``Sub`` (P - W), ``Abs`` and ``ReduceSum``;
    ``Concat``, ``Neg``, a ``Reshape`` back to (N, O, Ho, Wo) and ``Add`` for a bias. ``input_shape`` (the
    export's example shape) sizes the chunks; the graph itself keeps its dynamic dims. Warns when a
    layer's patch tensor exceeds ``warn_bytes`` per image. ``FusedAdderConv`` nodes are not rewritten
    (export without ``fuse_bn``).
    """
    register_schemas()  # shape inference sizes the chunks
    graph = model.graph
    if any(n.op_type == "FusedAdderConv" and n.domain == DOMAIN for n in graph.node):
        raise ValueError("make_portable rewrites AdderConv only: export with fuse_bn=False")
    shapes = _static_shapes(model, input_shape)
    inits = {t.name: t for t in graph.initializer}
    new_nodes, new_inits, rewritten, large = [], [], 0, []
    for node in graph.node:
        if node.op_type != "AdderConv" or node.domain != DOMAIN:
            new_nodes.append(node)
            continue
        if node.input[1] not in inits:
            raise ValueError(f"AdderConv {node.name!r} has non-constant weights; the portable form needs them constant")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        group = int(attrs.get("group", 1))
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        out_channels, group_channels, kh, kw = weight.shape
        channels, taps = group_channels * group, kh * kw
        out_shape = shapes.get(node.output[0])
        if out_shape is None:
            raise ValueError(f"could not infer the output shape of AdderConv {node.name!r}")
        positions = out_shape[2] * out_shape[3]
        patch_bytes = 4 * channels * taps * positions
        if patch_bytes > warn_bytes:
            large.append(f"{node.name or node.output[0]} ({patch_bytes / 2**20:.0f} MiB)")
        prefix = f"{node.name or node.output[0]}_portable"
        one_hot = np.zeros((channels * taps, 1, kh, kw), np.float32)
        one_hot.reshape(channels, taps, taps)[:, np.arange(taps), np.arange(taps)] = 1
        new_inits.append(numpy_helper.from_array(one_hot, f"{prefix}_one_hot"))
        conv_attrs = {k: attrs[k] for k in ("strides", "pads", "dilations") if k in attrs}
        new_nodes.append(
            helper.make_node(
                "Conv",
                [node.input[0], f"{prefix}_one_hot"],
                [f"{prefix}_patches"],
                name=f"{prefix}_gather",
                group=channels,
                kernel_shape=[kh, kw],
                **conv_attrs,
            )
        )
        per_group = out_channels // group
        span = group_channels * taps
        new_inits.append(numpy_helper.from_array(np.array([0, group, 1, span, -1], np.int64), f"{prefix}_patch_shape"))
        new_nodes.append(
            helper.make_node("Reshape", [f"{prefix}_patches", f"{prefix}_patch_shape"], [f"{prefix}_grouped"])
        )
        # (group, out per group, Cg*kh*kw) weights, broadcast against (N, group, 1, Cg*kh*kw, L) patches.
        grouped = weight.reshape(group, per_group, span)
        step = max(1, min(per_group, chunk_elements // max(1, group * span * positions)))
        sums = []
        new_inits.append(numpy_helper.from_array(np.array([3], np.int64), f"{prefix}_axis"))
        for start in range(0, per_group, step):
            tag = f"{prefix}_{start}"
            chunk = grouped[:, start : start + step, :, None][None]
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray(chunk), f"{tag}_w"))
            new_nodes += [
                helper.make_node("Sub", [f"{prefix}_grouped", f"{tag}_w"], [f"{tag}_diff"]),
                helper.make_node("Abs", [f"{tag}_diff"], [f"{tag}_abs"]),
                helper.make_node("ReduceSum", [f"{tag}_abs", f"{prefix}_axis"], [f"{tag}_sum"], keepdims=0),
            ]
            sums.append(f"{tag}_sum")
        if len(sums) > 1:
            new_nodes.append(helper.make_node("Concat", sums, [f"{prefix}_sum"], axis=2))
        else:
            new_nodes.append(helper.make_node("Identity", sums, [f"{prefix}_sum"]))
        new_nodes += [
            helper.make_node("Neg", [f"{prefix}_sum"], [f"{prefix}_flat"]),
            helper.make_node("Shape", [f"{prefix}_patches"], [f"{prefix}_batch"], start=0, end=1),
            helper.make_node("Shape", [f"{prefix}_patches"], [f"{prefix}_hw"], start=2, end=4),
            helper.make_node(
                "Concat", [f"{prefix}_batch", f"{prefix}_channels", f"{prefix}_hw"], [f"{prefix}_out_shape"], axis=0
            ),
        ]
        new_inits.append(numpy_helper.from_array(np.array([out_channels], np.int64), f"{prefix}_channels"))
        has_bias = len(node.input) > 2 and node.input[2]
        reshaped = f"{prefix}_nobias" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("Reshape", [f"{prefix}_flat", f"{prefix}_out_shape"], [reshaped]))
        if has_bias:
            bias_shape = f"{prefix}_bias_shape"
            new_inits.append(numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), bias_shape))
            new_nodes += [
                helper.make_node("Reshape", [node.input[2], bias_shape], [f"{prefix}_bias"]),
                helper.make_node("Add", [reshaped, f"{prefix}_bias"], [node.output[0]]),
            ]
        rewritten += 1
    if large:
        warnings.warn(
            f"portable ONNX: the patch tensors of {len(large)} layer(s) exceed {warn_bytes / 2**20:.0f} MiB per "
            f"image ({', '.join(large[:3])}{' ...' if len(large) > 3 else ''}); memory grows with the batch size. "
            "The custom-op form (portable=False) needs none of it.",
            stacklevel=2,
        )
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    _drop_unused_initializers(graph)
    kept = [o for o in model.opset_import if o.domain != DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return rewritten


def _output_shape(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """The output shape of ``model`` on ``x`` without its batch dim, or ``None`` where it cannot take it."""
    try:
        with torch.no_grad():
            out = model(x)
    except Exception:  # a map that shrinks to nothing, a Linear of another size, a pooling window too large
        return None
    return tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None


def _same_kind(got: tuple[int, ...] | None, expected: tuple[int, ...]) -> bool:
    """Outputs of another input size fit the example's: the same logits, or maps of the same channels (a
    fully convolutional model's maps follow H and W)."""
    if got is None or len(got) != len(expected):
        return False
    return got == expected if len(expected) < 2 else got[0] == expected[0]


def dynamic_hw_sizes(model: torch.nn.Module, example: torch.Tensor) -> int | None:
    """Check that ``model`` (in eval mode) takes other heights and widths than ``example``'s, as
    ``dynamic_hw`` promises, and return the smallest square size it takes (``None`` for a non-square
    example). A model with a layer of fixed size (a Linear on a flattened map, an average pool with a
    fixed window) fails at twice the size or gives outputs of another kind (logits of another length):
    ``ValueError`` says so."""
    _, channels, height, width = example.shape
    probe = example[:1]
    expected = _output_shape(model, probe)
    twice = _output_shape(model, probe.new_zeros(1, channels, 2 * height, 2 * width))
    if not _same_kind(twice, expected):
        got = "fails" if twice is None else f"gives outputs of shape {list(twice)}, not {list(expected)}"
        raise ValueError(
            f"the model cannot take dynamic H and W: at {2 * height}x{2 * width} it {got} (a layer of fixed size, "
            f"such as an average pool with a fixed window or a Linear on the flattened map); export it at its "
            f"{height}x{width} input size (without --dynamic-hw)"
        )
    if height != width:
        return None
    low, high = 1, height  # the smallest size that works, assuming every larger one does
    while low < high:
        middle = (low + high) // 2
        if _same_kind(_output_shape(model, probe.new_zeros(1, channels, middle, middle)), expected):
            high = middle
        else:
            low = middle + 1
    return high


def _check_dynamic_output(proto: onnx.ModelProto) -> None:
    """The exported graph's outputs may follow H and W in their spatial dims only: logits, or the channels
    of a map, of a size that depends on them are a model of one input size."""
    for value in proto.graph.output:
        dims = list(value.type.tensor_type.shape.dim)
        if len(dims) >= 2 and dims[1].dim_param:
            shape = ", ".join(d.dim_param or str(d.dim_value) for d in dims)
            raise ValueError(
                f"the model cannot take dynamic H and W: the size of its output {value.name!r} depends on them "
                f"([{shape}]; a layer of fixed size, such as an average pool with a fixed window); export it at "
                "its input size (without --dynamic-hw)"
            )


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    dynamic_batch: bool = True,
    dynamic_hw: bool = False,
    opset: int = 18,
    fuse_bn: bool = True,
    portable: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model`` (in eval mode, on CPU) to one self-contained ONNX file and return its path.

    A classifier's graph maps ``input`` to ``output``. torchvision's segmentation and detection models export as
    :mod:`adderconvert.deploy.dense` says: ``images`` to ``logits`` (the model's ``"out"``), or ``images``
    ``(N, 3, S, S)`` to ``boxes``, ``scores``, ``labels`` and ``image_index``, post-processing included
    (``example_inputs`` may be a detector's list of images, of the size ``S`` its transform keeps). The two-stage
    R-CNNs go through the TorchScript exporter, for the example's batch size only, and have no portable form.

    Adder layers become ``com.adderconvert::AdderConv`` (or ``FusedAdderConv`` with ``fuse_bn``); run the
    file with :func:`adderconvert.deploy.runtime.make_session`. With ``portable`` they become standard ONNX ops
    (see :func:`make_portable`; BatchNorm stays ``BatchNormalization``, ``fuse_bn`` is ignored), which any
    ONNX runtime runs without the library, more slowly and with more memory. ``dynamic_batch`` and
    ``dynamic_hw`` make the batch and the spatial size dynamic dims ("batch", "height", "width"); a model
    that takes one size only is refused (:func:`dynamic_hw_sizes`, and an output whose size depends on H
    and W), and the smallest size it takes is written as ``min_image_size``, beside ``dynamic_hw``.
    ``metadata`` (e.g. :func:`input_metadata`) goes into ``metadata_props`` (strings as they are, other
    values as JSON) beside ``adderconvert_version``, ``torch_version``, ``adder_form`` (``custom_op`` or
    ``portable``) and ``adder_precision`` (``int8`` when the model holds QuantizedAdderConv2d layers, from
    :func:`adderconvert.quantize`, with their calibration as ``quantization``; else ``fp32``). The file passes
    ``onnx.checker`` with ``full_check``. ``task`` (``classification``, ``segmentation`` or ``detection``) is
    written too, and for a detector ``postprocess``: its score threshold, NMS and top-k settings.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, (torch.Tensor, list, tuple)):
        found = type(example_inputs).__name__
        raise TypeError(f"example_inputs must be a torch.Tensor batch (N, C, H, W), got {found} (torch.from_numpy?)")
    task = model_task(model)
    if task == "detection" and isinstance(example_inputs, (list, tuple)) and len(example_inputs) > 1:
        if all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in example_inputs):
            example_inputs = torch.stack(list(example_inputs))  # a detector's list of images, one size
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if len(inputs) != 1 or not isinstance(inputs[0], torch.Tensor):
        raise ValueError(f"export_onnx expects one example input tensor, got {len(inputs)} inputs")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {path} is a folder: give the ONNX file to write, e.g. {path / 'model.onnx'}")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot write {path}: {blocking} is a file, not a folder")
    register_schemas()
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(t.dtype == torch.float64 for t in (*inputs, *model.parameters(), *model.buffers())):
        warnings.warn("the adder ONNX ops are float32: exporting a float32 copy of the float64 model", stacklevel=2)
        model, inputs = copy.deepcopy(model).float(), tuple(t.float() for t in inputs)
    quantized = any(isinstance(m, QuantizedAdderConv2d) for m in model.modules())
    if quantized and portable:
        raise ValueError("INT8 adder layers (QuantizedAdderConv) have no portable form: export without portable")
    clash = sorted(set(metadata or {}) & set(_RESERVED_METADATA))
    if clash:
        raise ValueError(f"metadata keys {clash} are written by export_onnx itself")
    if (metadata or {}).get("task", task) != task:
        raise ValueError(f"metadata says task {metadata['task']!r}, but the model is a {task} model")
    if task == "detection" and dynamic_hw:
        raise ValueError("a detector exports at one image size (its anchors are constants of it): no dynamic_hw")
    if portable and isinstance(model, GeneralizedRCNN):
        raise ValueError(
            "the portable form of a two-stage R-CNN is not supported (its traced graph has no static shapes to size "
            "the adder layers' chunks by): export it with the custom ops"
        )
    was_training = model.training
    model.eval()
    try:
        exported = combine_bases_by_conv(model)
        module, input_name, output_names, heads, rcnn = exported, INPUT_NAME, [OUTPUT_NAME], None, None
        if task == "segmentation":
            module, input_name, output_names = SegmentationLogits(exported).eval(), IMAGES, [LOGITS]
        elif isinstance(model, GeneralizedRCNN):
            rcnn = RCNNDetections(exported, tuple(inputs[0].shape[-2:])).eval()
        elif task == "detection":
            heads = DetectionHeads(exported, tuple(inputs[0].shape[-2:])).eval()
            module, input_name, output_names = heads, IMAGES, [RAW_BOXES, RAW_SCORES]
        min_size = dynamic_hw_sizes(module, inputs[0]) if dynamic_hw else None
        dims = {0: torch.export.Dim.DYNAMIC} if dynamic_batch else {}
        if dynamic_hw:
            dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
        if rcnn is not None:
            proto = _torchscript_export(rcnn, inputs, opset)
        else:
            proto = torch.onnx.export(
                module,
                inputs,
                dynamo=True,
                opset_version=opset,
                input_names=[input_name],
                output_names=output_names,
                dynamic_shapes=(dims,) if dims else None,
                custom_translation_table=_translation_table(),
                report=False,
                verbose=False,
            ).model_proto
    finally:
        model.train(was_training)
    _name_dynamic_dims(proto)
    if dynamic_hw:
        _check_dynamic_output(proto)
    if portable:
        make_portable(proto, list(inputs[0].shape))
    else:
        if fuse_bn:
            fuse_batchnorm(proto)
        if rcnn is not None:
            _remove_identities(proto.graph)
        if not any(o.domain == DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    if heads is not None:
        append_detection_postprocess(proto, heads)
    del proto.metadata_props[:]
    props = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    props.update(
        adderconvert_version=version("adderconvert"),
        torch_version=torch.__version__,
        adder_form="portable" if portable else "custom_op",
        dynamic_hw=json.dumps(dynamic_hw),
        adder_precision="int8" if quantized else "fp32",
        task=task,
    )
    if heads is not None or rcnn is not None:
        props["postprocess"] = json.dumps((heads or rcnn).postprocess_settings())
    if quantized and getattr(model, "quantization", None):
        props["quantization"] = json.dumps(model.quantization)
    if min_size is not None:
        props["min_image_size"] = json.dumps(min_size)  # the smallest H = W it takes
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path
