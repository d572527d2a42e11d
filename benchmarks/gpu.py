"""GPU benchmarks of issue 11, side by side in one run on one GPU (FP32; TF32 off unless a row says on):

1. ONNX Runtime CUDA EP latency, adder ResNet-50 vs CNN ResNet-50 (224x224), batch 1 and 32, with TF32 off
   (`use_tf32=0`) and on (ORT's default, which only the CNN parts use).
2. Training step (forward, backward, SGD with momentum), adder vs CNN: ResNet-50 at batch 64, 224x224, and
   ResNet-20 at batch 256, 32x32; time and peak GPU memory. `--official` adds the official-style adder
   layer's ResNet-20 step.
3. Per layer, ResNet-50's 3x3 stride-1 layers on the CUDA EP at batch 32: achieved adder MACs/s as a
   fraction of the adder peak (FP32 lanes x SMs x max SM clock / 2: an adder MAC is two FP32 ALU ops).

Usage: python benchmarks/gpu.py [--parts ort,train,layers] [--repeats 20] [--official] [--json FILE]
(parts ort and layers need onnxruntime-gpu; see docs/gpu.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adderconvert.conversion import swap_layers  # noqa: E402
from adderconvert.nn import AdderConv2d  # noqa: E402
from benchmarks.official import OfficialAdder2d  # noqa: E402
from benchmarks.resnet20 import resnet20  # noqa: E402

PARTS = ("ort", "train", "layers")
R50_LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]  # 3x3, stride 1, padding 1, c -> c
# FP32 lanes per SM where it is not 128 (compute capability 7.x and 8.0).
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64}


def cuda_time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median GPU time of ``fn`` in milliseconds (CUDA events around each call)."""
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


def measure(step: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median ms and peak GPU memory above what was allocated before (MiB) of ``step``."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ms = cuda_time_ms(step, repeats)
    return ms, (torch.cuda.max_memory_allocated() - base) / 2**20


def adder_peak_macs() -> tuple[float, str]:
    """Adder MACs/s at the GPU's FP32 ALU peak and how the clock was found."""
    props = torch.cuda.get_device_properties(0)
    lanes = FP32_LANES.get((props.major, props.minor), 128)
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        clock_hz, source = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM) * 1e6, "NVML max SM clock"
    except Exception:  # noqa: BLE001 - NVML absent or refused: fall back to the H100/H200 SXM boost clock
        clock_hz, source = 1.98e9, "assumed 1.98 GHz (NVML unavailable)"
    peak = props.multi_processor_count * lanes * clock_hz / 2
    return peak, f"{props.multi_processor_count} SMs x {lanes} FP32 lanes x {clock_hz / 1e9:.2f} GHz ({source}) / 2"


# --- 1. ONNX Runtime CUDA EP ---------------------------------------------------------------------------


def ort_latency_ms(session, feeds: dict[str, np.ndarray], output: str, repeats: int) -> float:
    """Median wall time of one run with inputs and output bound on the GPU (Run ends synchronised)."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    binding.bind_output(output, "cuda")
    for _ in range(3):
        session.run_with_iobinding(binding)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def cuda_session(path: Path, tf32: bool):
    """An ORT session on the CUDA EP; stops when ORT fell back to the CPU (e.g. CUDA libraries missing)."""
    from adderconvert.deploy.runtime import CUDA_PROVIDER, build_info, make_session

    session = make_session(path, providers=[(CUDA_PROVIDER, {"use_tf32": "1" if tf32 else "0"})])
    if session.get_providers()[0] != CUDA_PROVIDER or build_info().get("cuda") != "1":
        raise SystemExit(f"{path.name}: not on the CUDA EP (providers {session.get_providers()}, {build_info()})")
    return session


def ort_table(tmp: Path, repeats: int, results: dict) -> None:
    import torchvision

    from adderconvert.deploy.export import export_onnx

    torch.manual_seed(0)
    x = torch.randn(32, 3, 224, 224)
    cnn = torchvision.models.resnet50().eval()
    adder = swap_layers(torchvision.models.resnet50(), x[:4]).eval()
    paths = {"adder": export_onnx(adder, tmp / "adder.onnx", x[:2]), "CNN": export_onnx(cnn, tmp / "cnn.onnx", x[:2])}
    print("## ORT CUDA EP, ResNet-50, 224x224\n")
    print("| batch | TF32 | adder ms | CNN ms | adder / CNN |")
    print("|---:|---|---:|---:|---:|")
    for tf32 in (False, True):
        sessions = {name: cuda_session(path, tf32) for name, path in paths.items()}
        for batch in (1, 32):
            feeds = {"input": x[:batch].numpy()}
            ms = {name: ort_latency_ms(s, feeds, "output", repeats) for name, s in sessions.items()}
            ratio = ms["adder"] / ms["CNN"]
            print(f"| {batch} | {'on' if tf32 else 'off'} | {ms['adder']:.2f} | {ms['CNN']:.2f} | {ratio:.2f}x |")
            results["ort"].append(dict(batch=batch, tf32=tf32, adder_ms=ms["adder"], cnn_ms=ms["CNN"], ratio=ratio))
        del sessions
    print(flush=True)


# --- 2. Training steps ---------------------------------------------------------------------------------


def train_step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One step of cross-entropy, backward and SGD with momentum on ``model`` (moved to the GPU)."""
    model = model.cuda().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_table(repeats: int, official: bool, results: dict) -> None:
    import torchvision

    torch.manual_seed(0)
    workloads = []
    x50 = torch.randn(64, 3, 224, 224)
    cnn50 = torchvision.models.resnet50(num_classes=1000)
    workloads.append(
        ("ResNet-50, batch 64, 224 px", x50, 1000, swap_layers(copy.deepcopy(cnn50), x50[:4]), cnn50, None)
    )
    x20 = torch.randn(256, 3, 32, 32)
    official20 = resnet20(OfficialAdder2d) if official else None
    workloads.append(("ResNet-20, batch 256, 32 px", x20, 10, resnet20(AdderConv2d), resnet20(nn.Conv2d), official20))
    print("## Training step (cross-entropy, backward, SGD momentum), FP32, TF32 off\n")
    print("| workload | adder ms | CNN ms | adder / CNN | adder peak MiB | CNN peak MiB | official-style ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, x, classes, adder, cnn, official_model in workloads:
        x, labels = x.cuda(), torch.randint(0, classes, (x.shape[0],), device="cuda")
        rows = {}
        for key, model, reps in (("adder", adder, repeats), ("CNN", cnn, repeats), ("official", official_model, 3)):
            if model is None:
                continue
            rows[key] = measure(train_step(model, x, labels), reps)
            model.cpu()
            torch.cuda.empty_cache()
        (a_ms, a_mb), (c_ms, c_mb) = rows["adder"], rows["CNN"]
        official_ms = f"{rows['official'][0]:.1f}" if "official" in rows else "-"
        print(f"| {name} | {a_ms:.1f} | {c_ms:.1f} | {a_ms / c_ms:.2f}x | {a_mb:.0f} | {c_mb:.0f} | {official_ms} |")
        results["train"].append(
            dict(workload=name, adder_ms=a_ms, cnn_ms=c_ms, ratio=a_ms / c_ms, adder_mib=a_mb, cnn_mib=c_mb)
            | ({"official_ms": rows["official"][0]} if "official" in rows else {})
        )
    print(flush=True)


# --- 3. Per-layer fraction of the adder peak ------------------------------------------------------------


def layer_table(tmp: Path, repeats: int, results: dict) -> None:
    import onnx

    from adderconvert.deploy.ops import single_node_model

    peak, how = adder_peak_macs()
    print(
        f"## ORT CUDA EP per layer, batch 32, 3x3, stride 1, padding 1\n\nAdder peak {peak / 1e12:.2f} T MAC/s: {how}\n"
    )
    print("| layer | ms | G adder MACs/s | fraction of peak |")
    print("|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for channels, size in R50_LAYERS:
        w = rng.normal(size=(channels, channels, 3, 3)).astype(np.float32)
        path = tmp / f"layer{channels}.onnx"
        onnx.save(single_node_model((32, channels, size, size), w, pads=[1, 1, 1, 1]), str(path))
        x = rng.normal(size=(32, channels, size, size)).astype(np.float32)
        ms = ort_latency_ms(cuda_session(path, tf32=False), {"X": x}, "Y", repeats)
        macs = 32 * channels * size * size * channels * 9
        fraction = macs / (ms / 1e3) / peak
        print(f"| {channels}ch@{size} | {ms:.3f} | {macs / ms / 1e6:.0f} | {fraction:.2f} |")
        results["layers"].append(dict(channels=channels, size=size, ms=ms, fraction_of_peak=fraction))
    print(flush=True)


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts must be a comma-separated subset of {','.join(PARTS)}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=parse_parts, default=list(PARTS), help="comma-separated: ort,train,layers")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per row (median)")
    parser.add_argument("--official", action="store_true", help="also time the official-style ResNet-20 step")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not torch.cuda.is_available():
        parser.exit(2, "benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)\n")
    if {"ort", "layers"} & set(args.parts):
        import onnxruntime as ort

        from adderconvert.deploy.runtime import CUDA_PROVIDER

        if CUDA_PROVIDER not in ort.get_available_providers():
            parser.exit(2, "parts ort and layers need onnxruntime-gpu (see docs/gpu.md); use --parts train\n")
    # FP32 everywhere: PyTorch lets cuDNN use TF32 by default.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, median of {args.repeats}\n")
    results: dict = {"gpu": torch.cuda.get_device_name(0), "ort": [], "train": [], "layers": []}
    with tempfile.TemporaryDirectory() as tmp:
        if "ort" in args.parts:
            ort_table(Path(tmp), args.repeats, results)
        if "train" in args.parts:
            train_table(args.repeats, args.official, results)
        if "layers" in args.parts:
            layer_table(Path(tmp), args.repeats, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
