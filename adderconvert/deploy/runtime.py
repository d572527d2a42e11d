"""Running exported adder models with ONNX Runtime and the adderconvert custom-op library."""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Sequence
from pathlib import Path

from adderconvert._libs import ORT_LIBRARY, find_library
from adderconvert.nn._kernels import ort_build_info

__all__ = ["available_providers", "build_info", "get_library_path", "make_session"]

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def get_library_path() -> str:
    """Path of the ONNX Runtime custom-op library, for ``SessionOptions.register_custom_ops_library``."""
    return str(find_library(ORT_LIBRARY))


@functools.cache
def build_info() -> dict[str, str]:
    """How the library was built: ``ort_api``, ``cuda`` (``"1"``/``"0"``), ``cuda_archs``, and the instruction
    sets in use, ``cpu_isa`` (FP32 kernel) and ``cpu_quantized_isa`` (INT8 kernel)."""
    description, cpu_isa, cpu_quantized_isa = ort_build_info()
    info = dict(item.split("=", 1) for item in description.split())
    info["cpu_isa"] = cpu_isa
    info["cpu_quantized_isa"] = cpu_quantized_isa
    return info


def _gpu_present() -> bool:
    """True when the CUDA driver reports at least one device (independent of PyTorch)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def available_providers() -> list[str]:
    """Providers that can run adder models here.

    CUDA comes first only when onnxruntime-gpu, the CUDA build of the kernel and a GPU are all present.
    """
    import onnxruntime as ort  # optional dependency (onnxruntime or onnxruntime-gpu): imported when used

    providers = [CPU_PROVIDER]
    if CUDA_PROVIDER in ort.get_available_providers() and build_info().get("cuda") == "1" and _gpu_present():
        providers.insert(0, CUDA_PROVIDER)
    return providers


def make_session(
    path: str | os.PathLike,
    providers: Sequence[str | tuple[str, dict]] | None = None,
    **session_options,
):
    """Create an ``onnxruntime.InferenceSession`` for an exported adder model.

    Registers the custom-op library and sets each keyword on ``SessionOptions`` (for example
    ``intra_op_num_threads=1``). ``providers=None`` picks CUDA when it is really usable, else CPU.
    """
    import onnxruntime as ort  # optional dependency (onnxruntime or onnxruntime-gpu): imported when used

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    for name, value in session_options.items():
        if not hasattr(options, name):
            raise TypeError(f"onnxruntime.SessionOptions has no attribute {name!r}")
        setattr(options, name, value)
    options.register_custom_ops_library(get_library_path())
    if providers is None:
        providers = available_providers()
    names = [p[0] if isinstance(p, tuple) else p for p in providers]
    missing = [p for p in names if p not in ort.get_available_providers()]
    if missing:
        raise ValueError(
            f"provider(s) {missing} not available in this onnxruntime (available: "
            f"{ort.get_available_providers()}); for CUDA install onnxruntime-gpu instead of onnxruntime"
        )
    if CUDA_PROVIDER in names and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* pip packages this way (a no-op if absent).
        ort.preload_dlls()
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
