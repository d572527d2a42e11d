"""GPU benchmarks, side by side in one run on one GPU:

1. Training step of an adder ResNet-20 (batch 256, 32x32) and forward+backward of ResNet-50 layer shapes:
   ours (CUDA kernels) vs the official-style layer, time and peak memory.
2. ONNX Runtime CUDA EP latency, adder ResNet-50 vs CNN ResNet-50 (FP32, batch 32, 224x224), and
   per-layer achieved adder MACs/s as a fraction of the GPU's FP32 ALU peak (two ALU ops per adder MAC).

Usage: python benchmarks/gpu.py [--skip-ort]    (part 2 needs onnxruntime-gpu)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.nn import AdderConv2d  # noqa: E402
from benchmarks.official import OfficialAdder2d  # noqa: E402
from benchmarks.resnet20 import resnet20  # noqa: E402

R50_LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]  # 3x3, stride 1, padding 1, c -> c


def cuda_time_ms(fn, repeats: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def measure(step, repeats: int) -> tuple[float, float]:
    """Median ms and peak extra GPU memory (MiB) of ``step``."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms = cuda_time_ms(step, repeats=repeats)
    return ms, (torch.cuda.max_memory_allocated() - base) / 2**20


def _resnet20_step(factory, x: torch.Tensor, labels: torch.Tensor):
    torch.manual_seed(0)
    model = resnet20(factory).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        loss = nn.functional.cross_entropy(model(x), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _layer_step(layer_class, channels: int, size: int):
    x = torch.randn(8, channels, size, size, device="cuda", requires_grad=True)
    layer = layer_class(channels, channels, 3, padding=1).cuda()
    grad = torch.randn(8, channels, size, size, device="cuda")

    def step():
        x.grad = None
        layer.weight.grad = None
        layer(x).backward(grad)

    return step


def training_table() -> None:
    print("| workload | official ms | ours ms | speed-up | official peak MiB | ours peak MiB | memory ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    x = torch.randn(256, 3, 32, 32, device="cuda")
    labels = torch.randint(0, 10, (256,), device="cuda")
    rows = []
    for factory, repeats in ((OfficialAdder2d, 5), (AdderConv2d, 20)):
        rows.append(measure(_resnet20_step(factory, x, labels), repeats=repeats))
        torch.cuda.empty_cache()
    _row("ResNet-20 train step, batch 256", rows)
    for channels, size in R50_LAYERS:
        rows = []
        for layer_class, repeats in ((OfficialAdder2d, 5), (AdderConv2d, 20)):
            rows.append(measure(_layer_step(layer_class, channels, size), repeats=repeats))
            torch.cuda.empty_cache()
        _row(f"ResNet-50 {channels}ch@{size}, batch 8, fwd+bwd", rows)


def _row(name, rows) -> None:
    (o_ms, o_mb), (m_ms, m_mb) = rows
    print(
        f"| {name} | {o_ms:.1f} | {m_ms:.2f} | {o_ms / m_ms:.1f}x | {o_mb:.0f} | {m_mb:.0f} | "
        f"1/{o_mb / max(m_mb, 1e-3):.0f} |",
        flush=True,
    )


def fp32_lane_peak() -> float:
    """FP32 lane-ops/s: SMs x 128 lanes x boost clock (1.98 GHz on H100/H200 SXM)."""
    return torch.cuda.get_device_properties(0).multi_processor_count * 128 * 1.98e9


def ort_table() -> None:
    import onnxruntime as ort
    import torchvision

    from adderconvert.conversion import convert
    from adderconvert.export import export_onnx
    from adderconvert.onnx_ops import single_node_model
    from adderconvert.runtime import CUDA_PROVIDER, make_session

    def latency(session, feeds: dict[str, np.ndarray], output: str, repeats: int = 20) -> float:
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        binding.bind_output(output, "cuda")
        import time

        for _ in range(3):
            session.run_with_iobinding(binding)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            session.run_with_iobinding(binding)
            times.append((time.perf_counter() - t) * 1e3)
        return float(np.median(times))

    tmp = Path(tempfile.mkdtemp())
    x = torch.randn(32, 3, 224, 224)
    cnn = torchvision.models.resnet50().eval()
    adder = torchvision.models.resnet50()
    convert(adder, x[:4])
    adder.eval()
    feeds = {"input": x.numpy()}
    paths = {"CNN": export_onnx(cnn, tmp / "cnn.onnx", x[:2]), "adder": export_onnx(adder, tmp / "adder.onnx", x[:2])}
    fp32 = [(CUDA_PROVIDER, {"use_tf32": "0"})]  # ORT enables TF32 for cuDNN/cuBLAS by default
    ms = {k: latency(make_session(p, providers=fp32), feeds, "output") for k, p in paths.items()}
    print(
        f"\nORT CUDA EP, ResNet-50, FP32, batch 32, 224x224: CNN {ms['CNN']:.1f} ms, adder {ms['adder']:.1f} ms, "
        f"ratio {ms['adder'] / ms['CNN']:.2f}x\n"
    )
    peak = fp32_lane_peak() / 2
    print(f"Per layer (batch 32, 3x3, stride 1, padding 1), adder-MAC peak {peak / 1e12:.1f} T/s:\n")
    print("| layer | ms | G adder-MACs/s | fraction of peak |")
    print("|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for channels, size in R50_LAYERS:
        w = rng.normal(size=(channels, channels, 3, 3)).astype(np.float32)
        path = tmp / f"layer{channels}.onnx"
        import onnx

        onnx.save(single_node_model((32, channels, size, size), w, pads=[1, 1, 1, 1]), str(path))
        xs = rng.normal(size=(32, channels, size, size)).astype(np.float32)
        t = latency(make_session(path, providers=fp32), {"X": xs}, "Y")
        macs = 32 * channels * size * size * channels * 9
        print(f"| {channels}ch@{size} | {t:.2f} | {macs / t / 1e6:.0f} | {macs / (t / 1e3) / peak:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-ort", action="store_true", help="only the PyTorch training benchmarks")
    parser.add_argument("--skip-train", action="store_true", help="only the ONNX Runtime benchmarks")
    args = parser.parse_args()
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    if not args.skip_train:
        training_table()
    if not args.skip_ort:
        ort_table()


if __name__ == "__main__":
    main()
