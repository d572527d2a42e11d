"""Portable ONNX (standard ops only) vs the custom AdderConv op in ONNX Runtime CPU: parity, latency and
peak memory, side by side in one run. Each session runs in its own child process (peak RSS is its own);
the portable model runs in plain onnxruntime with no custom-op library registered.

Usage: python benchmarks/portable.py [--batches 1 8] [--repeats 10] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._measure import REPO, run_child, time_call  # noqa: E402

OFFICIAL = REPO / "tests" / "data" / "ResNet20-AdderNet.pth"


def _session(path: str, form: str, threads: int):
    import onnxruntime as ort

    from adderconvert.deploy.runtime import CPU_PROVIDER, make_session

    if form == "custom":
        return make_session(path, providers=[CPU_PROVIDER], intra_op_num_threads=threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(path, sess_options=options, providers=[CPU_PROVIDER])


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def child(path: str, form: str, shape: list[int], threads: int, repeats: int) -> None:
    import adderconvert.deploy.runtime  # noqa: F401  (imported, with onnxruntime, before the baseline)

    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the current RSS
    session = _session(path, form, threads)
    feed = {"input": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    ms = time_call(lambda: session.run(None, feed), repeats, warmup=2)
    print(json.dumps({"ms": ms, "peak_mib": _status_mib("VmHWM") - before}))


def _models(tmp: Path) -> dict[str, tuple[Path, Path, object]]:
    """name -> (custom-op file, portable file, PyTorch model); all take 32 px inputs."""
    import torch

    from adderconvert.architectures.cnn import build_model
    from adderconvert.architectures.official import load
    from adderconvert.conversion import swap_layers
    from adderconvert.deploy.export import export_onnx

    torch.manual_seed(0)
    resnet18 = build_model("resnet18", 10)
    x = torch.randn(16, 3, 32, 32)
    swap_layers(resnet18, x)
    # BatchNorm statistics of real adder outputs (the defaults would zero every activation after a ReLU).
    for module in resnet18.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        resnet18.train()(x)
    models = {"official ResNet-20 (CIFAR, 32px)": load(OFFICIAL), "ResNet-18 adder (32px)": resnet18.eval()}
    files = {}
    for index, (name, model) in enumerate(models.items()):
        custom = export_onnx(model, tmp / f"{index}_custom.onnx", x[:2])
        portable = export_onnx(model, tmp / f"{index}_portable.onnx", x[:2], portable=True)
        files[name] = (custom, portable, model)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, form, shape, threads, repeats = args.child
        child(path, form, json.loads(shape), int(threads), int(repeats))
        return

    print(f"ONNX Runtime CPU, FP32, {args.threads or 'default'} threads, median of {args.repeats}")
    print(
        "| model | batch | custom op ms | portable ms | time ratio | custom op MiB | portable MiB "
        "| portable vs custom | custom vs float64 | portable vs float64 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    import copy

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        for name, (custom, portable, model) in _models(Path(tmp)).items():
            for batch in args.batches:
                shape = [batch, 3, 32, 32]
                x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
                y_custom = _session(str(custom), "custom", args.threads).run(None, {"input": x})[0]
                y_portable = _session(str(portable), "portable", args.threads).run(None, {"input": x})[0]
                with torch.no_grad():
                    y64 = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
                scale = np.abs(y64).max()
                errors = [
                    np.abs(a - b).max() / scale for a, b in ((y_portable, y_custom), (y_custom, y64), (y_portable, y64))
                ]
                runs = {
                    form: run_child(
                        Path(__file__), [str(path), form, json.dumps(shape), str(args.threads), str(args.repeats)]
                    )
                    for form, path in (("custom", custom), ("portable", portable))
                }
                c, p = runs["custom"], runs["portable"]
                print(
                    f"| {name} | {batch} | {c['ms']:.2f} | {p['ms']:.2f} | {p['ms'] / c['ms']:.2f}x "
                    f"| {c['peak_mib']:.0f} | {p['peak_mib']:.0f} | " + " | ".join(f"{e:.1e}" for e in errors) + " |"
                )
    print(
        "errors: max |difference| / max |float64 PyTorch output|; MiB: peak RSS growth of the process from session "
        "creation on; the ResNet-18 is untrained (its features are often all zero, so its logits can be the "
        "classifier's bias and its errors say little)"
    )


if __name__ == "__main__":
    main()
