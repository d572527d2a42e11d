"""Running exported adder models with ONNX Runtime: the runtime package ``adderconvert_ort`` (the
adderconvert-ort wheel, which deployments install without PyTorch) owns it; this module names it here."""

from __future__ import annotations

from adderconvert_ort import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    available_providers,
    build_info,
    get_library_path,
    kernel_path,
    make_session,
    model_metadata,
)

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "available_providers",
    "build_info",
    "get_library_path",
    "kernel_path",
    "make_session",
    "model_metadata",
]
