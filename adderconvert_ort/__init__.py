"""adderconvert-ort: run exported adder models with ONNX Runtime, without PyTorch.

The ``com.adderconvert`` custom-op library (AdderConv, FusedAdderConv, QuantizedAdderConv) and what a
deployment needs around it: :func:`get_library_path`, :func:`make_session`, :func:`model_metadata`,
:func:`build_info`, :func:`kernel_path`, and :func:`run_dense` for exported segmentation and detection models. It
needs numpy and one of ``onnxruntime`` or ``onnxruntime-gpu`` (never both: they share one install folder), chosen by
the extra of the wheel that ``make runtime-wheel`` writes:
``pip install 'adderconvert_ort-VERSION-py3-none-manylinux_2_34_x86_64.whl[onnxruntime]'``.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adderconvert_ort._version import __version__

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "DETECTION_OUTPUTS",
    "LIBRARY",
    "__version__",
    "available_providers",
    "build_info",
    "find_library",
    "get_library_path",
    "kernel_path",
    "make_session",
    "model_metadata",
    "run_dense",
]

LIBRARY = "libadderconvert_ort.so"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# The outputs of an exported detector (adderconvert.deploy.dense), per detection of the batch.
DETECTION_OUTPUTS = ("boxes", "scores", "labels", "image_index")
# Caps the CPU kernels' instruction set (one of this build's: e.g. avx512ifma, avx512, avx2, generic on x86-64).
ISA_VARIABLE = "ADDERCONVERT_CPU_ISA"
# The library's C entry points besides RegisterCustomOps: function -> (restype, argtypes).
C_API = {
    "AdderConvertBuildInfo": (ctypes.c_char_p, []),  # const char* AdderConvertBuildInfo()
    "AdderConvertCpuIsa": (ctypes.c_char_p, []),  # const char* AdderConvertCpuIsa()
    "AdderConvertQuantizedCpuIsa": (ctypes.c_char_p, []),  # const char* AdderConvertQuantizedCpuIsa()
}


def find_library(package: str, name: str) -> Path:
    """The path of library ``name`` that the build installed into ``<package>/_lib``.

    Editable installs keep the Python sources in the checkout while the built libraries land in
    site-packages, so both places are searched.
    """
    candidates = [Path(__file__).parents[1] / package / "_lib" / name]
    for scheme_path in {sysconfig.get_paths()["platlib"], sysconfig.get_paths()["purelib"]}:
        candidates.append(Path(scheme_path) / package / "_lib" / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{name} was not found; the native part is built by `pip install` (adderconvert: run `make` or "
        f"`pip install -e .`; adderconvert-ort: `make runtime-wheel`). Searched:\n  {searched}"
    )


def get_library_path() -> str:
    """Path of the custom-op library, for ``SessionOptions.register_custom_ops_library``."""
    return str(find_library("adderconvert_ort", LIBRARY))


@functools.cache
def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(get_library_path())
    for function, (restype, argtypes) in C_API.items():
        getattr(lib, function).restype = restype
        getattr(lib, function).argtypes = argtypes
    return lib


@functools.cache
def build_info() -> dict[str, str]:
    """How the library was built and what it runs here: ``ort_api``, ``cuda`` (``"1"``/``"0"``),
    ``cuda_archs``, and the instruction sets its CPU kernels dispatch to on this machine, ``cpu_isa`` (FP32)
    and ``cpu_quantized_isa`` (INT8); ``ADDERCONVERT_CPU_ISA`` caps them."""
    lib = _library()
    info = dict(item.split("=", 1) for item in lib.AdderConvertBuildInfo().decode().split())
    info["cpu_isa"] = lib.AdderConvertCpuIsa().decode()
    info["cpu_quantized_isa"] = lib.AdderConvertQuantizedCpuIsa().decode()
    return info


def kernel_path() -> str:
    """The instruction set the CPU kernels (FP32 and INT8) run on this machine, and why: the widest of this
    build's that the CPU runs, or the one ``ADDERCONVERT_CPU_ISA`` caps it to (chosen once per process).
    INT8's is named when it differs (``avx512ifma`` has INT8 kernels only). Raises ValueError, with the library's
    message, where ``ADDERCONVERT_CPU_ISA`` names no instruction set of this build."""
    info = build_info()
    isa = info["cpu_isa"]
    cap = os.environ.get(ISA_VARIABLE, "")
    if " " in isa:  # the library's message for a value of ISA_VARIABLE that names no instruction set
        raise ValueError(isa)
    if info["cpu_quantized_isa"] != isa:
        isa = f"{isa}, INT8 {info['cpu_quantized_isa']}"
    if cap:
        return f"{isa} ({ISA_VARIABLE}={cap} caps it)"
    return f"{isa} (the widest instruction set of this build that this CPU runs; {ISA_VARIABLE} caps it)"


def _onnxruntime():
    """The onnxruntime module, or an ImportError that says which package to install."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "ONNX Runtime is not installed: pip install onnxruntime for CPUs, or onnxruntime-gpu for CUDA (never "
            "both: they share one install folder); the wheel's extras adderconvert-ort[onnxruntime] and "
            "[onnxruntime-gpu] install the same"
        ) from error
    return onnxruntime


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
    ort = _onnxruntime()
    providers = [CPU_PROVIDER]
    if CUDA_PROVIDER in ort.get_available_providers() and build_info().get("cuda") == "1" and _gpu_present():
        providers.insert(0, CUDA_PROVIDER)
    return providers


def make_session(
    path: str | os.PathLike,
    providers: Sequence[str | tuple[str, dict]] | None = None,
    **session_options,
):
    """Create an ``onnxruntime.InferenceSession`` for an exported adder model (any form: custom op, fused,
    INT8 or portable).

    Registers the custom-op library and sets each keyword on ``SessionOptions`` (for example
    ``intra_op_num_threads=1``). ``providers=None`` picks CUDA when it is really usable, else CPU.
    """
    ort = _onnxruntime()
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an ONNX model")
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    for name, value in session_options.items():
        if not hasattr(options, name) or callable(getattr(options, name)):
            raise TypeError(f"onnxruntime.SessionOptions has no attribute {name!r}")
        setattr(options, name, value)
    options.register_custom_ops_library(get_library_path())
    if providers is None:
        providers = available_providers()
    elif isinstance(providers, str):  # one provider's name, not a list of its letters
        providers = [providers]
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


def model_metadata(session) -> dict:
    """An exported model's metadata (``image_size``, ``mean``, ``std``, ``classes``, ``dataset``,
    ``adder_form``, ...), JSON values decoded (adderconvert's export writes lists as JSON)."""
    metadata = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        try:
            metadata[key] = json.loads(value)
        except ValueError:
            metadata[key] = value
    return metadata


def run_dense(session, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | list[dict[str, np.ndarray]]:
    """Run an exported segmentation or detection model (``session`` from :func:`make_session`) on one batch of
    ``images`` (``(N, 3, H, W)`` float32, normalised as for the PyTorch model, or a sequence of ``(3, H, W)``
    images of one size) and return, as numpy arrays, what the PyTorch model returns in eval mode:

    - segmentation (output ``logits``): the logits ``(N, C, H, W)``, the model's ``"out"``;
    - detection (outputs :data:`DETECTION_OUTPUTS`): one dict per image with ``boxes`` ``(n, 4)`` float32
      ``x1, y1, x2, y2``, ``scores`` ``(n,)`` and ``labels`` ``(n,)`` int64, highest score first.

    A graph of one batch size (a two-stage R-CNN's) runs ``images`` in pieces of that size, the last one padded with
    zero images. A session of another model (a classifier) is a ``ValueError``."""
    batch = np.ascontiguousarray(np.stack(images) if isinstance(images, (list, tuple)) else images, np.float32)
    names = [output.name for output in session.get_outputs()]
    name = session.get_inputs()[0].name
    if names == ["logits"]:
        return session.run(None, {name: batch})[0]
    if sorted(names) != sorted(DETECTION_OUTPUTS):
        raise ValueError(f"not a segmentation or detection model exported by adderconvert: its outputs are {names}")
    size = session.get_inputs()[0].shape[0]
    step = max(1, size if isinstance(size, int) else len(batch))
    detections: list[dict[str, Any]] = []
    for start in range(0, len(batch), step):
        piece = batch[start : start + step]
        if len(piece) < step:  # a graph of one batch size
            piece = np.concatenate([piece, np.zeros((step - len(piece), *piece.shape[1:]), piece.dtype)])
        found = dict(zip(names, session.run(None, {name: piece})))
        image_index = found.pop("image_index")
        count = min(step, len(batch) - start)
        detections += [{key: value[image_index == i] for key, value in found.items()} for i in range(count)]
    return detections
