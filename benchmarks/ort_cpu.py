"""ONNX Runtime CPU latency: AdderConv vs ORT's own Conv on ResNet-50 layer shapes (1 thread and all
threads), whole-model adder vs CNN ResNet-50, and batch-1 latency of whole models (ResNet-18 at 28x28,
ResNet-50 at 224x224, 1 and all threads), and MobileNetV3-Small by its adder layers' bases (1, 2, 4) beside its
CNN, side by side in one run.

``--baseline-library PATH`` also times the adder models of the batch-1 and bases tables with another build of the
custom-op library (for example one built from an older revision into its own folder), run for run
beside this checkout's build, so a change to the kernel is measured under the same load.

``--no-spin`` stops ORT's idle intra-op threads from spin-waiting in the batch-1 table: on a machine
shared with other work a spinning thread takes a core from the one that computes.

Usage: python benchmarks/ort_cpu.py [--batch 4] [--repeats 10] [--skip-model] [--skip-layers]
                                    [--batch1-repeats 30] [--baseline-library PATH] [--no-spin]
                                    [--skip-bases | --bases-only]
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

from adderconvert.deploy.ops import single_node_model  # noqa: E402
from adderconvert.deploy.runtime import CPU_PROVIDER, build_info, get_library_path, make_session  # noqa: E402
from benchmarks._measure import interleaved_latency_ms, ort_cpu_session  # noqa: E402

# The bases of the table by bases: one, two (segmentation, detection, grouped convs) and four (the small mobile
# networks' default).
BASES = (1, 2, 4)
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

    from adderconvert.conversion import swap_layers
    from adderconvert.deploy.export import export_onnx

    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224)
    cnn = torchvision.models.resnet50().eval()
    adder = swap_layers(torchvision.models.resnet50(), x[:2]).eval()
    cores = os.cpu_count() or 1
    print(f"\nWhole model, ResNet-50, batch {batch}, 224x224, FP32, {cores} threads\n")
    print("| model | ms | ratio |")
    print("|---|---:|---:|")
    ms = {}
    for name, model in (("CNN", cnn), ("AdderNet (BN fused)", adder)):
        path = export_onnx(model, tmp / f"{name[:3]}.onnx", x[:1])
        ms[name] = latency_ms(path, {"input": x.numpy()}, cores, repeats)
        print(f"| {name} | {ms[name]:.0f} | {ms[name] / ms['CNN']:.2f}x |", flush=True)


def batch1_table(repeats: int, tmp: Path, baseline_library: str | None, spin: bool) -> None:
    import torch
    import torchvision

    from adderconvert.conversion import swap_layers
    from adderconvert.deploy.export import export_onnx

    cores = os.cpu_count() or 1
    thread_counts = sorted({1, cores})
    baseline = " | AdderNet baseline lib ms" if baseline_library else ""
    spinning = "" if spin else ", idle threads not spinning"
    print(f"\nWhole model, batch 1, FP32 (median of {repeats}, runs interleaved{spinning}); ratio = AdderNet / CNN\n")
    print(f"| model | input | threads | CNN ms | AdderNet ms | ratio{baseline} |")
    print("|---|---|---:|---:|---:|---:|" + ("---:|" if baseline_library else ""))
    torch.manual_seed(0)
    for name, build, size, classes in (
        ("ResNet-18", torchvision.models.resnet18, 28, 10),
        ("ResNet-50", torchvision.models.resnet50, 224, 1000),
    ):
        x = torch.randn(2, 3, size, size)
        paths = {
            "cnn": export_onnx(build(num_classes=classes).eval(), tmp / f"{name}_cnn.onnx", x[:1]),
            "adder": export_onnx(swap_layers(build(num_classes=classes), x).eval(), tmp / f"{name}_adder.onnx", x[:1]),
        }
        for threads in thread_counts:
            sessions = {
                "cnn": ort_cpu_session(paths["cnn"], None, threads, spin),
                "adder": ort_cpu_session(paths["adder"], get_library_path(), threads, spin),
            }
            if baseline_library:
                sessions["baseline"] = ort_cpu_session(paths["adder"], baseline_library, threads, spin)
            ms = interleaved_latency_ms(sessions, {"input": x[:1].numpy()}, repeats)
            extra = f" | {ms['baseline']:.2f}" if baseline_library else ""
            print(
                f"| {name} | {size}x{size} | {threads} | {ms['cnn']:.2f} | {ms['adder']:.2f} | "
                f"{ms['adder'] / ms['cnn']:.1f}x{extra} |",
                flush=True,
            )


def bases_table(repeats: int, tmp: Path, spin: bool, baseline_library: str | None) -> None:
    """What the bases of an adder layer cost at inference: MobileNetV3-Small at 224x224 converted by
    ``adderconvert.convert`` (its default plan) with 1, 2 and 4 bases, beside its CNN, batch 1, one thread (and
    each adder model with ``baseline_library`` too, where given)."""
    import torch
    import torchvision

    from adderconvert import convert
    from adderconvert.deploy.export import export_onnx

    torch.manual_seed(0)
    x = torch.randn(32, 3, 224, 224)
    cnn = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    paths = {"CNN": export_onnx(cnn, tmp / "bases_cnn.onnx", x[:1])}
    for bases in BASES:
        adder = convert(cnn, x, bases=bases).eval()
        paths[bases] = export_onnx(adder, tmp / f"bases_{bases}.onnx", x[:1])
    sessions = {k: ort_cpu_session(p, None if k == "CNN" else get_library_path(), 1, spin) for k, p in paths.items()}
    if baseline_library:
        sessions.update({(b, "baseline"): ort_cpu_session(paths[b], baseline_library, 1, spin) for b in BASES})
    ms = interleaved_latency_ms(sessions, {"input": x[:1].numpy()}, repeats)
    baseline = " | baseline lib ms | ratio" if baseline_library else ""
    print(f"\nMobileNetV3-Small, 224x224, batch 1, 1 thread, FP32 (median of {repeats}, runs interleaved)\n")
    print(f"| model | ms | ratio to the CNN{baseline} |")
    print("|---|---:|---:|" + ("---:|---:|" if baseline_library else ""))
    print(f"| CNN | {ms['CNN']:.2f} | 1.00x" + (" | | |" if baseline_library else " |"))
    for b in BASES:
        extra = f" | {ms[b, 'baseline']:.2f} | {ms[b, 'baseline'] / ms['CNN']:.2f}x" if baseline_library else ""
        print(f"| adder, {b} base{'s' * (b > 1)} | {ms[b]:.2f} | {ms[b] / ms['CNN']:.2f}x{extra} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-layers", action="store_true")
    parser.add_argument("--batch1-repeats", type=int, default=30)
    parser.add_argument("--baseline-library", type=Path, help="another build of libadderconvert_ort.so to compare")
    parser.add_argument("--no-spin", action="store_true", help="batch-1 table: idle ORT threads sleep, not spin")
    parser.add_argument("--skip-bases", action="store_true", help="no table of MobileNetV3-Small by bases")
    parser.add_argument("--bases-only", action="store_true", help="only the table of MobileNetV3-Small by bases")
    args = parser.parse_args()
    if args.baseline_library is not None and not args.baseline_library.is_file():
        parser.error(f"--baseline-library: no such file: {args.baseline_library}")
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, AdderConv CPU kernel ISA {build_info()['cpu_isa']}\n")
    baseline = str(args.baseline_library) if args.baseline_library else None
    with tempfile.TemporaryDirectory() as tmp:
        if args.bases_only:
            bases_table(args.batch1_repeats, Path(tmp), not args.no_spin, baseline)
            return
        if not args.skip_layers:
            layer_table(args.batch, args.repeats, Path(tmp))
        if not args.skip_model:
            model_table(args.batch, max(3, args.repeats // 3), Path(tmp))
        batch1_table(args.batch1_repeats, Path(tmp), baseline, spin=not args.no_spin)
        if not args.skip_bases:
            bases_table(args.batch1_repeats, Path(tmp), not args.no_spin, baseline)


if __name__ == "__main__":
    main()
