"""``adderconvert doctor``: versions, build configuration and a one-node check of each op (FP32 AdderConv, INT8
QuantizedAdderConv) per provider."""

from __future__ import annotations

import platform
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from adderconvert.deploy.ops import (
    adder_conv_reference,
    quantized_adder_conv_reference,
    quantized_node_model,
    single_node_model,
)
from adderconvert.deploy.runtime import available_providers, build_info, get_library_path, kernel_path, make_session
from adderconvert.nn import _kernels

__all__ = ["run_doctor"]


def run_doctor() -> int:
    """Print the report; return 0 when every available provider matches the NumPy reference (2 when
    ADDERCONVERT_CPU_ISA names no instruction set of the build)."""
    print(f"adderconvert {version('adderconvert')}, Python {platform.python_version()}")
    print(
        f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__} (providers: {', '.join(ort.get_available_providers())})"
    )
    print(f"custom-op library: {get_library_path()}")
    try:
        path = kernel_path()
    except ValueError as e:  # a value of ADDERCONVERT_CPU_ISA that names no instruction set: no op can load
        print(f"Error: {e}", file=sys.stderr)
        return 2
    for key, value in build_info().items():
        print(f"  {key}: {value}")
    print(f"CPU kernel path: {path}")
    print(f"PyTorch CPU kernel ISA: {_kernels.cpu_isa()}")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 9, 9)).astype(np.float32)
    w = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    q = rng.integers(0, 256, size=(6, 4, 3, 3)).astype(np.uint8)
    ones, zeros = np.ones(6, np.float32), np.zeros(6, np.float32)
    checks = [
        (
            "AdderConv",
            single_node_model(("N", 4, 9, 9), w, pads=[1, 1, 1, 1]),
            adder_conv_reference(x, w, pads=(1,) * 4),
        ),
        (
            "QuantizedAdderConv (INT8)",
            quantized_node_model(("N", 4, 9, 9), q, ones, zeros, x_scale=0.02, x_zero_point=128, pads=[1, 1, 1, 1]),
            quantized_adder_conv_reference(x, q, 0.02, 128, pads=(1,) * 4),
        ),
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for op, model, expected in checks:
            path = Path(tmp) / "one_node.onnx"
            onnx.save(model, str(path))
            for provider in available_providers():
                try:
                    got = make_session(path, providers=[provider]).run(None, {"X": x})[0]
                    err = float(np.abs(got - expected).max() / np.abs(expected).max())
                    ok = err < 1e-5
                    print(f"{op}, {provider}: {'ok' if ok else 'MISMATCH'} (max error {err:.1e} of max |y|)")
                except Exception as e:  # report and go on to the next provider
                    ok = False
                    print(f"{op}, {provider}: FAILED ({type(e).__name__}: {e})")
                failures += not ok
    return 1 if failures else 0
