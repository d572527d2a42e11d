"""Locating the compiled libraries that `pip install` builds from custom_ops/ into adderconvert/_lib (the
ONNX Runtime library lives in the runtime package, adderconvert_ort)."""

from __future__ import annotations

from pathlib import Path

from adderconvert_ort import find_library as _find_library

CPU_LIBRARY = "libadderconvert_cpu.so"
CUDA_LIBRARY = "libadderconvert_cuda.so"


def find_library(name: str) -> Path:
    """Return the path of a library built into ``adderconvert/_lib``."""
    return _find_library("adderconvert", name)
