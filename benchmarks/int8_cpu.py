"""INT8 AdderNet on the CPU, side by side in one run: per layer (ResNet-50 3x3 and 1x1 shapes, batch 1 and 4),
whole models (ResNet-18 at 28x28, ResNet-50 at 224x224, batch 1) at 1 and 2 threads, and accuracy of short
fine-tuned models (FP32 adder against INT8 adder ONNX, both calibration methods, top-1 agreement).

Per layer, each row times, runs interleaved (one run of each in turn, median of ``--repeats``):

* INT8 AdderConv: ``com.adderconvert::QuantizedAdderConv`` (float X quantised in the kernel, float Y);
* FP32 AdderConv: ``com.adderconvert::FusedAdderConv``;
* ORT FP32 Conv;
* ORT INT8 Conv: the Conv quantised by ``onnxruntime.quantization.quantize_static`` (QUInt8 activations, QInt8
  weights, MinMax calibration) in QDQ format and in QOperator (QLinearConv) format; the faster is the row's
  INT8 Conv (both are in the JSON);
* the kernel's quantise step alone: the same QuantizedAdderConv (same X, kernel, pads, group) with 8 output
  channels and a stride that leaves one output pixel, so that it quantises the whole padded input image as the
  layer does and computes next to nothing; less the cost of an empty call (8 channels of one pixel), it is the
  part of the op that chaining uint8 activations between layers would save. QuantizeLinear of X in ORT is timed
  too (JSON only).

Whole models: the CNN (FP32, and INT8 by ``quantize_static`` after ``quant_pre_process``, QDQ and QOperator) and
the AdderNet (FP32 FusedAdderConv, INT8 QuantizedAdderConv calibrated on random batches; speed does not depend
on the weights), stem and classifier multiplicative as ``adderconvert MODEL`` converts them. For the INT8
AdderNet, the quantise steps of all its QuantizedAdderConv nodes are timed one by one as above (input shapes
from a run of the model), in all and for the nodes whose input is another QuantizedAdderConv's output, the ones
that could take uint8 from it.

Times are medians of interleaved runs; the best (minimum) run of each is in the JSON and its ratio in the tables,
since on a shared machine other processes' time slices land on long runs more than on short ones. The load
average is recorded before and after.

Accuracy (``--accuracy CKPT ...``): each adder checkpoint exported FP32 and INT8 (every calibration method of
``adderconvert.quantization.METHODS`` on ``--calibration-batches`` batches of 64 training images, with the seconds
each quantisation took) and evaluated on the whole test split.

Results go to ``--out`` (``docs/results/int8_cpu``) as ``.json`` and ``.md``; the CPU (lscpu model name and the
instruction sets that matter here) heads the table.

Usage: python benchmarks/int8_cpu.py [--repeats 20] [--model-repeats 10] [--no-spin] [--skip-layers]
                                     [--skip-models] [--accuracy CKPT ...] [--calibration-batches 16] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.deploy.ops import quantized_node_model, single_node_model  # noqa: E402
from adderconvert.deploy.runtime import build_info, get_library_path  # noqa: E402
from benchmarks._measure import interleaved_latency_samples_ms, ort_cpu_session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
THREADS = (1, 2)
BATCHES = (1, 4)
# (name, channels in, channels out, kernel, size): ResNet-50's 3x3 convs per stage and 1x1 convs of its bottlenecks.
LAYERS = [
    ("stage1 3x3", 64, 64, 3, 56),
    ("stage2 3x3", 128, 128, 3, 28),
    ("stage3 3x3", 256, 256, 3, 14),
    ("stage4 3x3", 512, 512, 3, 7),
    ("stage1 1x1 256->64", 256, 64, 1, 56),
    ("stage1 1x1 64->256", 64, 256, 1, 56),
    ("stage3 1x1 1024->256", 1024, 256, 1, 14),
    ("stage4 1x1 512->2048", 512, 2048, 1, 7),
]
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512ifma", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
IMPLEMENTATIONS = (
    "int8_adder",
    "fp32_adder",
    "fp32_conv",
    "int8_conv_qdq",
    "int8_conv_qop",
    "quantize_step",
    "quantize_x",
)


def cpu_description() -> dict:
    """lscpu's model name and the ISA flags of /proc/cpuinfo that matter for these kernels."""
    name = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = [f for f in ISA_FLAGS if f in flags]
    info = build_info()
    return {
        "model_name": name,
        "isa": isa,
        "cores": os.cpu_count(),
        "kernel_isa": info["cpu_isa"],
        "quantized_kernel_isa": info.get("cpu_quantized_isa", "unknown"),
    }


def _graph_model(node: onnx.NodeProto, x_shape, inits, extra_opsets=()) -> onnx.ModelProto:
    out_type = TensorProto.UINT8 if node.op_type == "QuantizeLinear" else TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        node.op_type,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", out_type, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), *extra_opsets], ir_version=10)


def conv_model(x_shape, w: np.ndarray, pad: int) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], pads=[pad] * 4)
    bias = np.zeros(w.shape[0], np.float32)
    return _graph_model(node, x_shape, [numpy_helper.from_array(w, "W"), numpy_helper.from_array(bias, "B")])


def quantize_linear_model(x_shape, scale: float, zero_point: int) -> onnx.ModelProto:
    node = helper.make_node("QuantizeLinear", ["X", "s", "z"], ["Y"])
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), "s"),
        numpy_helper.from_array(np.array(zero_point, np.uint8), "z"),
    ]
    return _graph_model(node, x_shape, inits)


def quantize_step_model(
    x_shape, w_shape, *, x_scale: float, x_zero_point: int, pads, group: int = 1, dilations=(1, 1)
) -> onnx.ModelProto:
    """A QuantizedAdderConv that quantises the same padded image as a layer of input ``x_shape`` and weights
    ``w_shape`` (same kernel, pads, group, dilations) but computes one output pixel of 8 channels per group (one
    for depthwise layers, which keep their layout): the kernel's quantise step and its fixed per-call cost."""
    _, height, width = x_shape[1:]
    out_per_group = 1 if w_shape[0] == group else 8
    w = np.zeros((group * out_per_group, *w_shape[1:]), np.uint8)
    strides = [height + pads[0] + pads[2], width + pads[1] + pads[3]]
    ones, zeros = np.ones(w.shape[0], np.float32), np.zeros(w.shape[0], np.float32)
    return quantized_node_model(
        x_shape,
        w,
        ones,
        zeros,
        x_scale=x_scale,
        x_zero_point=x_zero_point,
        pads=list(pads),
        strides=strides,
        group=group,
        dilations=list(dilations),
    )


def call_cost_ms(threads: int, spin: bool, repeats: int, tmp: Path) -> float:
    """Median ms of a QuantizedAdderConv call with next to no work (8 channels of one pixel in and out): the
    per-call cost that a quantise step's time includes but that chaining uint8 activations would not save."""
    onnx.save(
        quantize_step_model((1, 8, 1, 1), (8, 8, 1, 1), x_scale=1.0, x_zero_point=0, pads=[0] * 4), tmp / "c.onnx"
    )
    session = ort_cpu_session(tmp / "c.onnx", get_library_path(), threads, spin)
    return latency({"call": session}, {"X": np.ones((1, 8, 1, 1), np.float32)}, repeats)[0]["call"]


def latency(sessions: dict, feeds: dict, repeats: int, cpu: dict | None = None) -> tuple[dict, dict]:
    """Median and minimum ms of each session, runs interleaved; ``cpu`` (a dict) gets the median CPU ms of this
    process per run (at 1 thread, the run's own time less any time the core spent on other processes)."""
    cpu_samples: dict[str, list[float]] = {}
    samples = interleaved_latency_samples_ms(sessions, feeds, repeats, cpu_samples)
    if cpu is not None:
        cpu.update({k: float(np.median(v)) for k, v in cpu_samples.items()})
    return ({k: float(np.median(v)) for k, v in samples.items()}, {k: float(np.min(v)) for k, v in samples.items()})


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self):  # some versions call it
        pass


def ort_int8(fp32_path: Path, out_path: Path, feeds: list[dict], fmt: str, preprocess: bool = False) -> Path:
    """``fp32_path`` quantised by onnxruntime.quantization (QUInt8 activations, QInt8 weights, MinMax)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = fp32_path
    if preprocess:
        source = out_path.with_name(out_path.stem + "_pre.onnx")
        quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=True)
    quantize_static(
        str(source),
        str(out_path),
        _Reader(feeds),
        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out_path


def layer_rows(repeats: int, spin: bool, tmp: Path) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    call_ms = {threads: call_cost_ms(threads, spin, 5 * repeats, tmp) for threads in THREADS}
    for name, cin, cout, k, size in LAYERS:
        pad = k // 2
        w = (rng.normal(size=(cout, cin, k, k)) * 0.05).astype(np.float32)
        qw = rng.integers(0, 256, size=w.shape, dtype=np.uint8)
        alpha = (rng.normal(size=cout) * 1e-3).astype(np.float32)
        beta = rng.normal(size=cout).astype(np.float32)
        for batch in BATCHES:
            x_shape = (batch, cin, size, size)
            # Post-ReLU-like inputs: the grid [0, 4) with zero point 0.
            x = np.maximum(rng.normal(size=x_shape), 0).astype(np.float32)
            paths = {
                "int8_adder": tmp / "int8_adder.onnx",
                "fp32_adder": tmp / "fp32_adder.onnx",
                "fp32_conv": tmp / "fp32_conv.onnx",
                "quantize_x": tmp / "quantize_x.onnx",
            }
            onnx.save(
                quantized_node_model(x_shape, qw, alpha, beta, x_scale=4 / 255, x_zero_point=0, relu=1, pads=[pad] * 4),
                paths["int8_adder"],
            )
            onnx.save(
                single_node_model(x_shape, w, scale=alpha, shift=beta, relu=1, pads=[pad] * 4), paths["fp32_adder"]
            )
            onnx.save(conv_model(x_shape, w, pad), paths["fp32_conv"])
            onnx.save(quantize_linear_model(x_shape, 4 / 255, 0), paths["quantize_x"])
            paths["quantize_step"] = tmp / "quantize_step.onnx"
            onnx.save(
                quantize_step_model(x_shape, qw.shape, x_scale=4 / 255, x_zero_point=0, pads=[pad] * 4),
                paths["quantize_step"],
            )
            calibration = [{"X": np.maximum(rng.normal(size=x_shape), 0).astype(np.float32)} for _ in range(2)]
            for fmt in ("qdq", "qop"):
                paths[f"int8_conv_{fmt}"] = ort_int8(
                    paths["fp32_conv"], tmp / f"int8_conv_{fmt}.onnx", calibration, fmt
                )
            macs = batch * cout * size * size * cin * k * k
            for threads in THREADS:
                sessions = {
                    impl: ort_cpu_session(paths[impl], get_library_path(), threads, spin) for impl in IMPLEMENTATIONS
                }
                cpu_ms: dict = {}
                ms, min_ms = latency(sessions, {"X": x}, repeats, cpu_ms)
                best = "int8_conv_qdq" if ms["int8_conv_qdq"] <= ms["int8_conv_qop"] else "int8_conv_qop"
                row = {
                    "layer": name,
                    "cin": cin,
                    "cout": cout,
                    "kernel": k,
                    "size": size,
                    "batch": batch,
                    "threads": threads,
                    "macs": macs,
                    "ms": ms,
                    "min_ms": min_ms,
                    "cpu_ms": cpu_ms,
                    "int8_conv_best": best,
                    "int8_adder_vs_fp32_conv": ms["int8_adder"] / ms["fp32_conv"],
                    "int8_adder_vs_fp32_conv_min": min_ms["int8_adder"] / min_ms["fp32_conv"],
                    "int8_adder_vs_fp32_conv_cpu": cpu_ms["int8_adder"] / cpu_ms["fp32_conv"],
                    "int8_adder_vs_int8_conv": ms["int8_adder"] / ms[best],
                    "int8_adder_vs_fp32_adder": ms["int8_adder"] / ms["fp32_adder"],
                    "call_ms": call_ms[threads],
                    "quantize_share": max(ms["quantize_step"] - call_ms[threads], 0.0) / ms["int8_adder"],
                    "ort_quantize_linear_share": ms["quantize_x"] / ms["int8_adder"],
                    "int8_adder_gops": macs / ms["int8_adder"] / 1e6,
                }
                rows.append(row)
                times = ", ".join(f"{k} {v:.3f}" for k, v in ms.items())
                print(f"{name} b{batch} {threads}T: {times} ms", flush=True)
    return rows


MODELS = {"ResNet-18": ("resnet18", 28, 10), "ResNet-50": ("resnet50", 224, 1000)}


def quantize_steps(path: Path, feeds: dict, threads: int, spin: bool, repeats: int, tmp: Path) -> dict:
    """The quantise steps of every QuantizedAdderConv node of the model at ``path`` (:func:`quantize_step_model`
    on the node's input shape, from a run of the model on ``feeds``, less :func:`call_cost_ms`), summed: median ms
    over all nodes, and over the nodes whose input is the output of another QuantizedAdderConv (those could take
    uint8 from it)."""
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type == "QuantizedAdderConv"]
    producer = {out: n.op_type for n in model.graph.node for out in n.output}
    shapes = {i.name: i for i in model.graph.initializer}
    probe = onnx.load(str(path))
    outputs = [o.name for o in probe.graph.output]
    for n in nodes:
        if n.input[0] not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(n.input[0], TensorProto.FLOAT, None))
            outputs.append(n.input[0])
    onnx.save(probe, tmp / "probe.onnx")
    values = ort_cpu_session(tmp / "probe.onnx", get_library_path(), threads, spin).run(outputs, feeds)
    x_shapes = {name: v.shape for name, v in zip(outputs, values, strict=True)}
    call = call_cost_ms(threads, spin, 5 * repeats, tmp)
    total = chainable = 0.0
    chainable_nodes = 0
    for i, n in enumerate(nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        x_shape = x_shapes[n.input[0]]
        step = quantize_step_model(
            x_shape,
            tuple(shapes[n.input[1]].dims),
            x_scale=attrs["x_scale"],
            x_zero_point=attrs.get("x_zero_point", 0),
            pads=attrs.get("pads", [0, 0, 0, 0]),
            group=attrs.get("group", 1),
            dilations=attrs.get("dilations", [1, 1]),
        )
        onnx.save(step, tmp / f"step{i}.onnx")
        session = ort_cpu_session(tmp / f"step{i}.onnx", get_library_path(), threads, spin)
        x = np.maximum(np.random.default_rng(i).normal(size=x_shape), 0).astype(np.float32)
        ms = max(latency({"step": session}, {"X": x}, repeats)[0]["step"] - call, 0.0)
        total += ms
        if producer.get(n.input[0]) == "QuantizedAdderConv":
            chainable += ms
            chainable_nodes += 1
    return {
        "nodes": len(nodes),
        "call_ms": call,
        "ms": total,
        "chainable_nodes": chainable_nodes,
        "chainable_ms": chainable,
    }


def model_rows(repeats: int, spin: bool, tmp: Path, names=tuple(MODELS)) -> list[dict]:
    import torch
    import torchvision

    from adderconvert.conversion import swap_layers
    from adderconvert.deploy.export import export_onnx
    from adderconvert.quantization import quantize

    torch.manual_seed(0)
    rows = []
    for name in names:
        arch, size, classes = MODELS[name]
        build = getattr(torchvision.models, arch)
        x = torch.randn(2, 3, size, size)
        cnn = build(num_classes=classes).eval()
        adder = swap_layers(build(num_classes=classes), x).eval()
        calibration = [torch.randn(2, 3, size, size) for _ in range(2)]
        paths = {
            "cnn_fp32": export_onnx(cnn, tmp / f"{name}_cnn.onnx", x[:1]),
            "adder_fp32": export_onnx(adder, tmp / f"{name}_adder.onnx", x[:1]),
            "adder_int8": export_onnx(quantize(adder, calibration, "minmax"), tmp / f"{name}_adder_int8.onnx", x[:1]),
        }
        feeds = [{"input": c.numpy()[:1]} for c in calibration]
        for fmt in ("qdq", "qop"):
            paths[f"cnn_int8_{fmt}"] = ort_int8(
                paths["cnn_fp32"], tmp / f"{name}_cnn_int8_{fmt}.onnx", feeds, fmt, True
            )
        for threads in THREADS:
            sessions = {
                label: ort_cpu_session(path, get_library_path(), threads, spin) for label, path in paths.items()
            }
            cpu_ms: dict = {}
            ms, min_ms = latency(sessions, {"input": x[:1].numpy()}, repeats, cpu_ms)
            best = "cnn_int8_qdq" if ms["cnn_int8_qdq"] <= ms["cnn_int8_qop"] else "cnn_int8_qop"
            steps = quantize_steps(paths["adder_int8"], {"input": x[:1].numpy()}, threads, spin, 2 * repeats, tmp)
            row = {
                "model": name,
                "input": size,
                "batch": 1,
                "threads": threads,
                "ms": ms,
                "min_ms": min_ms,
                "cpu_ms": cpu_ms,
                "adder_int8_vs_cnn_fp32_cpu": cpu_ms["adder_int8"] / cpu_ms["cnn_fp32"],
                "quantize_steps": steps,
                "quantize_share": steps["ms"] / ms["adder_int8"],
                "chainable_quantize_share": steps["chainable_ms"] / ms["adder_int8"],
                "cnn_int8_best": best,
                "adder_int8_vs_cnn_fp32_min": min_ms["adder_int8"] / min_ms["cnn_fp32"],
                "adder_int8_vs_cnn_fp32": ms["adder_int8"] / ms["cnn_fp32"],
                "adder_int8_vs_cnn_int8": ms["adder_int8"] / ms[best],
                "adder_int8_vs_adder_fp32": ms["adder_int8"] / ms["adder_fp32"],
            }
            rows.append(row)
            print(f"{name} {threads}T: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items()) + " ms", flush=True)
    return rows


def accuracy_rows(checkpoints: list[Path], calibration_batches: int, tmp: Path) -> list[dict]:
    from adderconvert.app.int8 import calibration_batches as draw
    from adderconvert.app.int8 import compare_onnx, export_int8
    from adderconvert.app.saved_models import deployment_metadata
    from adderconvert.checkpoint import load, read_meta
    from adderconvert.data import load_dataset
    from adderconvert.deploy.export import export_onnx
    from adderconvert.quantization import METHODS

    rows = []
    for checkpoint in checkpoints:
        meta = read_meta(checkpoint)
        model = load(checkpoint).eval()
        splits = load_dataset(meta.dataset, None, meta.image_size)
        metadata = deployment_metadata(meta)
        stem = f"{meta.model_name}_{len(rows)}"
        fp32 = export_onnx(
            model, tmp / f"{stem}_fp32.onnx", splits.test[0][0][None].repeat(2, 1, 1, 1), metadata=metadata
        )
        batches = draw(splits.train, calibration_batches)
        row = {"checkpoint": str(checkpoint), "model": meta.model_name, "dataset": meta.dataset, "images": None}
        row["fp32_top1"] = compare_onnx(fp32, None, splits.test)["int8_top1"]
        for method in METHODS:
            start = time.perf_counter()
            path = export_int8(model, tmp / f"{stem}_int8_{method}.onnx", batches, metadata, method)
            row[f"int8_{method}_export_s"] = time.perf_counter() - start
            result = compare_onnx(path, fp32, splits.test)
            row[f"int8_{method}_top1"] = result["int8_top1"]
            row[f"int8_{method}_agreement"] = result["int8_agreement"]
            row["images"] = result["int8_images"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _cpu_ratio(row: dict, key: str) -> str:
    """The CPU-time ratio at 1 thread (at 2, CPU time adds up both threads and is no latency)."""
    return f"{row[key]:.2f}x" if row["threads"] == 1 and key in row else "-"


def markdown(result: dict) -> str:
    cpu = result["cpu"]
    timing = (
        f" idle threads {'spin' if result['spin'] else 'sleep (--no-spin)'}; runs interleaved, median of "
        f"{result['repeats']} (layers) / {result['model_repeats']} (models)."
        if result["layers"] or result["models"]
        else ""  # accuracy only: nothing timed
    )
    lines = [
        f"CPU: {cpu['model_name']} ({cpu['cores']} cores; {', '.join(cpu['isa'])}); adder kernels in use: "
        f"INT8 {cpu['quantized_kernel_isa']}, FP32 {cpu['kernel_isa']}; onnxruntime {result['onnxruntime']};"
        f"{timing} Command: `{result['command']}`",
        "",
    ]
    if result.get("load_before") is not None:
        before = ", ".join(f"{v:.2f}" for v in result["load_before"])
        after = ", ".join(f"{v:.2f}" for v in result.get("load_after") or ())
        lines += [f"Load average (1, 5, 15 min) before: {before}; after: {after or 'n/a'}.", ""]
    if result["layers"]:
        lines += [
            "Per layer (ms, medians). INT8 conv = ORT quantize_static (QUInt8 x QInt8), the faster of QDQ and "
            "QLinearConv; (best) = the ratio of the best runs; CPU time = the ratio of the median CPU times of the "
            "process per run at 1 thread (time spent on other processes left out); quantise step = the kernel's "
            "own quantisation of X (the op on one output pixel, less the cost of an empty call), as a share of the "
            "INT8 AdderConv.",
            "",
            "| layer | batch | threads | INT8 AdderConv | FP32 AdderConv | ORT FP32 Conv | ORT INT8 Conv | "
            "INT8 adder / FP32 Conv (best) | same, CPU time | INT8 adder / INT8 Conv | INT8 adder / FP32 adder | "
            "quantise step | INT8 adder G op/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["layers"]:
            ms = r["ms"]
            best = "QDQ" if r["int8_conv_best"].endswith("qdq") else "QLinearConv"
            lines.append(
                f"| {r['layer']} {r['cin']}ch@{r['size']} | {r['batch']} | {r['threads']} | {ms['int8_adder']:.3f} | "
                f"{ms['fp32_adder']:.3f} | {ms['fp32_conv']:.3f} | {ms[r['int8_conv_best']]:.3f} ({best}) | "
                f"{r['int8_adder_vs_fp32_conv']:.2f}x ({r['int8_adder_vs_fp32_conv_min']:.2f}x) | "
                f"{_cpu_ratio(r, 'int8_adder_vs_fp32_conv_cpu')} | {r['int8_adder_vs_int8_conv']:.2f}x | "
                f"{r['int8_adder_vs_fp32_adder']:.2f}x | {100 * r['quantize_share']:.0f}% | "
                f"{r['int8_adder_gops']:.0f} |"
            )
        lines.append("")
    if result["models"]:
        lines += [
            "Whole models, batch 1 (ms, medians). CNN INT8 = ORT quant_pre_process + quantize_static, the faster of "
            "QDQ and QLinearConv; quantise steps = the kernel's quantise steps of all QuantizedAdderConv nodes, "
            "timed one by one, as a share of the INT8 AdderNet (all nodes / the nodes whose input is another "
            "QuantizedAdderConv's output).",
            "",
            "| model | input | threads | CNN FP32 | CNN INT8 | AdderNet FP32 | AdderNet INT8 | "
            "INT8 adder / FP32 CNN (best) | same, CPU time | INT8 adder / INT8 CNN | INT8 adder / FP32 adder | "
            "quantise steps |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in result["models"]:
            ms = r["ms"]
            best = "QDQ" if r["cnn_int8_best"].endswith("qdq") else "QLinearConv"
            lines.append(
                f"| {r['model']} | {r['input']}x{r['input']} | {r['threads']} | {ms['cnn_fp32']:.2f} | "
                f"{ms[r['cnn_int8_best']]:.2f} ({best}) | {ms['adder_fp32']:.2f} | {ms['adder_int8']:.2f} | "
                f"{r['adder_int8_vs_cnn_fp32']:.2f}x ({r['adder_int8_vs_cnn_fp32_min']:.2f}x) | "
                f"{_cpu_ratio(r, 'adder_int8_vs_cnn_fp32_cpu')} | {r['adder_int8_vs_cnn_int8']:.2f}x | "
                f"{r['adder_int8_vs_adder_fp32']:.2f}x | "
                f"{100 * r['quantize_share']:.0f}% / {100 * r['chainable_quantize_share']:.0f}% "
                f"({r['quantize_steps']['nodes']} / {r['quantize_steps']['chainable_nodes']} nodes) |"
            )
        lines.append("")
    if result["accuracy"]:
        first = result["accuracy"][0]
        methods = [k[len("int8_") : -len("_top1")] for k in first if k.startswith("int8_") and k.endswith("_top1")]
        lines += [
            f"Accuracy (ONNX Runtime, whole test split; INT8 calibrated on {result['calibration_batches']} batches of "
            "64 training images). Agreement = images where INT8 and FP32 adder ONNX predict the same class.",
            "",
            "| model | data set | FP32 adder top-1 | "
            + " | ".join(f"INT8 {m} top-1 (gap) | agreement" for m in methods)
            + " |",
            "|---|---|---:|" + "---:|---:|" * len(methods),
        ]
        for r in result["accuracy"]:
            cells = [
                f"{r[f'int8_{m}_top1']:.2f}% ({r[f'int8_{m}_top1'] - r['fp32_top1']:+.2f}) | "
                f"{r[f'int8_{m}_agreement']:.2f}%"
                for m in methods
            ]
            lines.append(f"| {r['model']} | {r['dataset']} | {r['fp32_top1']:.2f}% | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="runs per layer and implementation")
    parser.add_argument("--model-repeats", type=int, default=10, help="runs per whole model")
    parser.add_argument("--no-spin", action="store_true", help="idle ORT threads sleep, not spin")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS), help="whole models to time")
    parser.add_argument("--accuracy", nargs="*", type=Path, default=[], help="adder checkpoints to evaluate")
    parser.add_argument("--calibration-batches", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "docs/results/int8_cpu")
    args = parser.parse_args()
    missing = [str(p) for p in args.accuracy if not p.is_file()]
    if missing:
        parser.error(f"--accuracy: no such file(s): {', '.join(missing)}")
    import onnxruntime

    result = {
        "cpu": cpu_description(),
        "onnxruntime": onnxruntime.__version__,
        "spin": not args.no_spin,
        "repeats": args.repeats,
        "model_repeats": args.model_repeats,
        "calibration_batches": args.calibration_batches,
        "command": "python benchmarks/int8_cpu.py " + " ".join(sys.argv[1:]),
        "load_before": list(os.getloadavg()),
        "load_after": None,
        "layers": [],
        "models": [],
        "accuracy": [],
    }
    print(json.dumps(result["cpu"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["load_after"] = list(os.getloadavg())
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(result) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_layers:
            result["layers"] = layer_rows(args.repeats, not args.no_spin, Path(tmp))
            save()
        if not args.skip_models:
            result["models"] = model_rows(args.model_repeats, not args.no_spin, Path(tmp), args.models)
            save()
        if args.accuracy:
            result["accuracy"] = accuracy_rows(args.accuracy, args.calibration_batches, Path(tmp))
            save()
    print(markdown(result))


if __name__ == "__main__":
    main()
