"""ONNX Runtime CPU latency: AdderConv vs ORT's own Conv on ResNet-50 layer shapes (1 thread and all
threads), and whole-model adder vs CNN ResNet-50, side by side in one run.

Usage: python benchmarks/ort_cpu.py [--batch 4] [--repeats 10] [--skip-model]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.onnx_ops import single_node_model  # noqa: E402
from adderconvert.runtime import CPU_PROVIDER, build_info, make_session  # noqa: E402

# (name, channels in, channels out, kernel, size): ResNet-50's 3x3 convs per stage and a 1x1 reduction.
LAYERS = [
    ("stage1 3x3", 64, 64, 3, 56),
    ("stage2 3x3", 128, 128, 3, 28),
    ("stage3 3x3", 256, 256, 3, 14),
    ("stage4 3x3", 512, 512, 3, 7),
    ("stage1 1x1 256->64", 256, 64, 1, 56),
]


def conv_model(x_shape, w: np.ndarray, pad: int) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["X", "W"], ["Y"], pads=[pad] * 4)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def latency_ms(path: Path, feeds: dict, threads: int, repeats: int) -> float:
    session = make_session(path, providers=[CPU_PROVIDER], intra_op_num_threads=threads, inter_op_num_threads=1)
    for _ in range(2):
        session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def layer_table(batch: int, repeats: int, tmp: Path) -> None:
    cores = os.cpu_count() or 1
    print(f"Per layer, batch {batch}, FP32 (median of {repeats}); ratio = AdderConv / Conv\n")
    print(
        f"| layer | Conv 1T ms | AdderConv 1T ms | ratio 1T | Conv {cores}T ms | AdderConv {cores}T ms | "
        f"ratio {cores}T | AdderConv 1T G MAC/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name, cin, cout, k, size in LAYERS:
        pad = k // 2
        x = rng.normal(size=(batch, cin, size, size)).astype(np.float32)
        w = rng.normal(size=(cout, cin, k, k)).astype(np.float32)
        paths = {"conv": tmp / "conv.onnx", "adder": tmp / "adder.onnx"}
        onnx.save(conv_model(x.shape, w, pad), str(paths["conv"]))
        onnx.save(single_node_model(x.shape, w, pads=[pad] * 4), str(paths["adder"]))
        t = {(kind, th): latency_ms(p, {"X": x}, th, repeats) for kind, p in paths.items() for th in (1, cores)}
        macs = batch * cout * size * size * cin * k * k
        print(
            f"| {name} {cin}ch@{size} | {t['conv', 1]:.2f} | {t['adder', 1]:.2f} | "
            f"{t['adder', 1] / t['conv', 1]:.2f}x | {t['conv', cores]:.2f} | {t['adder', cores]:.2f} | "
            f"{t['adder', cores] / t['conv', cores]:.2f}x | {macs / t['adder', 1] / 1e6:.1f} |",
            flush=True,
        )


def model_table(batch: int, repeats: int, tmp: Path) -> None:
    import torch
    import torchvision

    from adderconvert.conversion import convert
    from adderconvert.export import export_onnx

    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    cnn = torchvision.models.resnet50().eval()
    adder = convert(torchvision.models.resnet50(), x[:2]).eval()
    cores = os.cpu_count() or 1
    print(f"\nWhole model, ResNet-50, batch {batch}, 224x224, FP32, {cores} threads\n")
    print("| model | ms | ratio |")
    print("|---|---:|---:|")
    ms = {}
    for name, model in (("CNN", cnn), ("AdderNet (BN fused)", adder)):
        path = export_onnx(model, tmp / f"{name[:3]}.onnx", x[:1])
        ms[name] = latency_ms(path, {"input": x.numpy()}, cores, repeats)
        print(f"| {name} | {ms[name]:.0f} | {ms[name] / ms['CNN']:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, AdderConv CPU kernel ISA {build_info()['cpu_isa']}\n")
    with tempfile.TemporaryDirectory() as tmp:
        layer_table(args.batch, args.repeats, Path(tmp))
        if not args.skip_model:
            model_table(args.batch, max(3, args.repeats // 3), Path(tmp))


if __name__ == "__main__":
    main()
